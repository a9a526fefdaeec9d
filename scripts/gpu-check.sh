#!/usr/bin/env bash
# GPU check for a lent GPU (issue 16), one script under 8 minutes. Nothing is downloaded or built
# there: build here and carry along
#   target/release/tokenfab                         cargo build --release -p tokenfab (then
#                                                   strip --strip-debug it: 85 MB with debug info)
#   the backend's, models' and engine's test binaries   scripts/gpu-check.sh --build-tests (here)
# then on the GPU machine: scripts/gpu-check.sh OUTPUT_DIR. Writes logs and JSON into OUTPUT_DIR.
#   (0) environment, library versions, every kernel compiled for the device's own sm;
#   (1) each device op against the CPU's on the same inputs (bf16 and FP8 tolerances): the
#       backend's cuda::device_tests and cuda::fp8 (the FP8 product against its CPU reference,
#       activation codes and dummy weights bit for bit against their twins), then the CUDA
#       executor against the CPU forward pass on every architecture's tiny model, FP8 weights
#       and FP8 KV against the CPU and FP8 KV against bf16 KV (models' cuda::tests), and dummy
#       models made on the device against their host twins (engine's dummy::device_tests);
#       (1b) the step path's kernels (tiled prefill attention, bf16 and FP8 K/V; grammar masks;
#       sampling; the async input feed), the executor's mixed prefill/decode steps (prefill
#       chunks on the tiles, decode rows on paged_attention) against the CPU, device sampling
#       and fed decode steps, one line each;
#   (2) the whole model by teacher forcing: the CPU's greedy continuations of 8 prompts
#       (--dummy-weights smollm2-135m, bf16) scored on both devices: the largest difference of
#       a forced token's log-probability (< 0.1 passes) and top-1 agreement per position; the
#       prompts are scored as multi-row prefill chunks, so the CUDA side's attention runs on
#       prefill_attention's tiles (its log says so; no such line fails the check);
#   (3) ceilings (copy bandwidth, bf16 GEMM) and throughput, 128 in / 128 out: llama3-8b bf16
#       and FP8 dummy weights at 1, 64, 256 and 1024 streams (bf16 at 64 again without async
#       scheduling, time allowing); llama3-70b FP8 (weights made on the
#       device, FP8 KV) at 64, 256 and 512 streams and the capacity search for users held at
#       >= 10 tok/s each (`--slo tpot=100`).
set -uo pipefail
TESTS_DIR="target/gpu-tests"
if [[ "${1:-}" == "--build-tests" ]]; then
  mkdir -p "$TESTS_DIR"
  CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}" cargo test --release -p tokenfab-backend -p tokenfab-models \
    -p tokenfab-engine --lib --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        name = m["target"]["name"].replace("-", "_")
        shutil.copy(m["executable"], sys.argv[1] + "/" + name)
        print(sys.argv[1] + "/" + name)
' "$TESTS_DIR"
  # Without debug info they are a few MiB each, small enough to carry to the GPU machine.
  strip --strip-debug "$TESTS_DIR"/* 2>/dev/null || true
  exit
fi
OUT="${1:?usage: scripts/gpu-check.sh OUTPUT_DIR | --build-tests}"
mkdir -p "$OUT"
BIN="${TOKENFAB_BIN:-target/release/tokenfab}"
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(elapsed)s] $*" | tee -a "$OUT/check.log"; }

# cuBLAS/NVRTC from Python nvidia-* wheels, if the loader does not know them (tokenfab also
# searches these folders itself; this makes the run independent of that search).
NVLIBS=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="${NVLIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}:/usr/local/cuda/lib64"
export RUST_LOG="${RUST_LOG:-info}"
chmod +x "$BIN" "$TESTS_DIR"/* 2>/dev/null || true
{ nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv; "$BIN" --version; } > "$OUT/env.txt" 2>&1
log "env: $(tr '\n' ' ' < "$OUT/env.txt")"

# (0) versions, and the kernels for this device's architecture.
timeout 60 "$BIN" gpu-probe > "$OUT/probe0.json" 2> "$OUT/probe0.log"
HAVE_GPU=$?
log "probe rc=$HAVE_GPU $(cat "$OUT/probe0.json")"
SM=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .')
timeout 60 "$BIN" gpu-probe --compile-kernels --arch "sm_${SM:-90}" > "$OUT/kernels.txt" 2>&1
log "compile-kernels sm_${SM:-90} rc=$? $(grep -c ' ok$' "$OUT/kernels.txt") ok"

# (1) device ops and the executor against the CPU.
for T in tokenfab_backend:cuda:: tokenfab_models:cuda:: tokenfab_engine:dummy::device_tests; do
  B=${T%%:*} F=${T#*:}
  if [[ -x "$TESTS_DIR/$B" ]]; then
    timeout 120 "$TESTS_DIR/$B" "$F" --test-threads 1 --nocapture > "$OUT/ops-$B.txt" 2>&1
    log "ops $B $F rc=$? $(grep -E '^test result' "$OUT/ops-$B.txt") skipped=$(grep -c '^skipped' "$OUT/ops-$B.txt")"
    grep -E '^(fp8 product|device (bf16|fp8) dummy|llama|qwen2): ' "$OUT/ops-$B.txt" | while read -r L; do log "  $L"; done
  else
    log "ops $B: no test binary in $TESTS_DIR (run scripts/gpu-check.sh --build-tests where cargo is)"
  fi
done

# (1b) the step path (issue 16): tiled prefill attention against the f64 attention reference
# (the CPU's, on the same inputs), grammar masks, sampling and async scheduling's input feed
# against their CPU twins, device sampling through the CUDA executor against the twins on the
# device's own logits, and decode steps fed on the device (graphs included) against host-fed ones. They ran in
# (1) too; each gets its own line here.
for T in "tokenfab_backend cuda::device_tests::prefill_attention_matches_an_f64_reference" \
         "tokenfab_backend cuda::device_tests::mask_rows_matches_its_cpu_twin" \
         "tokenfab_backend cuda::device_tests::sample_rows_matches_its_cpu_twin" \
         "tokenfab_backend cuda::device_tests::feed_tokens_matches_its_cpu_twin" \
         "tokenfab_models cuda::tests::mixed_prefill_and_decode_steps_match_the_cpu_on_a_gpu" \
         "tokenfab_models cuda::tests::device_sampling_matches_the_twins_on_the_devices_logits" \
         "tokenfab_models cuda::tests::fed_steps_match_host_fed_steps_on_a_gpu"; do
  set -- $T
  if [[ -x "$TESTS_DIR/$1" ]]; then
    timeout 60 "$TESTS_DIR/$1" "$2" --exact --test-threads 1 --nocapture > "$OUT/step-${2##*::}.txt" 2>&1
    log "step ${2##*::} rc=$? $(grep -E '^test result' "$OUT/step-${2##*::}.txt") skipped=$(grep -c '^skipped' "$OUT/step-${2##*::}.txt")"
    grep -E ': mixed ' "$OUT/step-${2##*::}.txt" | while read -r L; do log "  $L"; done
  fi
done

# (2) teacher-forced agreement on one dummy model and seed.
MODEL=(--dummy-weights smollm2-135m --dummy-seed 1 --dummy-dtype bf16)
# The dummy tokenizer is byte-level with no merges: a plain-text prompt's ids are its bytes.
PROMPTS=("The capital of France is" "Once upon a time" "def fibonacci(n):" "1, 2, 3, 4,"
         "GPUs are fast because" "Hi! How are you?" "Zebra quartz jumps" "In 1492, ")
: > "$OUT/forced.jsonl"
for P in "${PROMPTS[@]}"; do
  timeout 60 "$BIN" generate "${MODEL[@]}" --device cpu -p "$P" -n 32 --temperature 0 --ignore-eos \
    --json 2>> "$OUT/generate-cpu.log" | tail -n 1 | python3 -c '
import json, sys
j, ids = json.load(sys.stdin), list(sys.argv[1].encode())
assert j["prompt_tokens"] == len(ids), (j["prompt_tokens"], ids)
print(json.dumps({"prompt_tokens": ids, "tokens": j["tokens"]}))' "$P" >> "$OUT/forced.jsonl"
done
for DEV in cpu cuda; do
  timeout 120 "$BIN" score "${MODEL[@]}" --device "$DEV" -i "$OUT/forced.jsonl" -o "$OUT/scored-$DEV.jsonl" \
    2> "$OUT/score-$DEV.log"
  log "score $DEV rc=$?"
done
# The executor says once when a step's prefill chunks first ran on the tiles.
TILED=$(grep -m1 "runs on prefill_attention's tiles" "$OUT/score-cuda.log")
log "prefill tiles in the teacher-forced run: ${TILED:-none (the check fails)}"
python3 - "$OUT" <<'PY' | tee -a "$OUT/check.log"
import json, sys
out = sys.argv[1]
def rows(dev):
    try:
        return [json.loads(l) for l in open(f"{out}/scored-{dev}.jsonl")]
    except OSError:
        return []
c, g = rows("cpu"), rows("cuda")
same = total = 0
worst = 0.0
for a, b in zip(c, g):
    for ta, tb, la, lb in zip(a["top_ids"], b["top_ids"], a["logprobs"], b["logprobs"]):
        total += 1
        same += ta == tb
        worst = max(worst, abs(la - lb))
# Random weights give nearly flat distributions, where bf16 rounding can swap close top-1s: the
# gate is the log-probability of the forced tokens; agreement is reported beside it.
# The CUDA side's prompts ran on the tiled prefill attention (the executor logs it once).
try:
    tiled = "runs on prefill_attention's tiles" in open(f"{out}/score-cuda.log", errors="replace").read()
except OSError:
    tiled = False
ok = total > 0 and len(c) == len(g) and worst < 0.1 and tiled
print(json.dumps({"teacher_forced_positions": total, "top1_agreement": same / total if total else None,
                  "max_logprob_diff": worst, "prefill_tiles": tiled, "pass": ok}))
PY

# (3) ceilings, then throughput at real scale.
if [[ $HAVE_GPU != 0 ]]; then
  log "no usable CUDA device: stopping before the timings (an 8B dummy model would be built on the host)"
  exit 1
fi
log "gpu-probe --probe"
timeout 120 "$BIN" gpu-probe --probe > "$OUT/probe.json" 2> "$OUT/probe.log"
log "probe rc=$? $(cat "$OUT/probe.json")"
PORT=8123
# serve NAME ARGS...: starts a server with ARGS, waits until it is ready.
serve() {
  local name=$1; shift
  "$BIN" serve --device cuda --port "$PORT" --gpu-memory-utilization 0.9 "$@" \
    > "$OUT/serve-$name.log" 2>&1 &
  SERVE=$!
  for _ in $(seq 1 240); do
    curl -sf "http://127.0.0.1:$PORT/ready" > /dev/null 2>&1 && return 0
    kill -0 "$SERVE" 2>/dev/null || return 1
    sleep 1
  done
  return 1
}
stop() { kill "$SERVE" 2>/dev/null; wait "$SERVE" 2>/dev/null; }
# bench NAME UNTIL C...: 128 in / 128 out at each concurrency while time is left before UNTIL s.
bench() {
  local name=$1 until=$2; shift 2
  for C in "$@"; do
    LEFT=$(( until - $(elapsed) ))
    if [ "$LEFT" -lt 20 ]; then log "bench $name c=$C skipped: out of time"; continue; fi
    N=$(( C < 16 ? 16 : C * 2 ))
    timeout "$LEFT" "$BIN" bench --url "http://127.0.0.1:$PORT" --concurrency "$C" \
      --num-prompts "$N" --input-len 128 --output-len 128 --ignore-eos --warmup 4 --quiet \
      --json "$OUT/bench-$name-c$C.json" > "$OUT/bench-$name-c$C.txt" 2> "$OUT/bench-$name-c$C.log"
    log "bench $name c=$C rc=$? $(tail -n 5 "$OUT/bench-$name-c$C.txt" | tr '\n' ' ')"
  done
}
BATCH=(--max-num-seqs 1024 --max-num-batched-tokens 8192)
for W in bf16 fp8; do
  [[ $W == fp8 ]] && UNTIL=300 || UNTIL=200
  log "serve llama3-8b $W"
  # Weights made on the device from the seed: no 16 GB host build before the server starts.
  if serve "8b-$W" --dummy-weights llama3-8b --dummy-dtype "$W" --dummy-on-device "${BATCH[@]}"; then
    log "server ready: $(grep -m1 'cuda:0' "$OUT/serve-8b-$W.log")"
    bench "8b-$W" "$UNTIL" 1 64 256 1024
  else
    log "8b $W server did not become ready; see serve-8b-$W.log"
  fi
  stop
  # Async scheduling (on above) against synchronous steps, at 64 streams when time is left: the
  # same server with --no-async-scheduling (compare with bench-8b-bf16-c64).
  if [[ $W == bf16 ]] && [ "$(elapsed)" -lt 200 ] && serve 8b-bf16-sync --dummy-weights llama3-8b \
    --dummy-dtype bf16 --dummy-on-device --no-async-scheduling "${BATCH[@]}"; then
    bench 8b-bf16-sync 240 64
  fi
  stop
done
log "serve llama3-70b fp8 (weights made on the device), fp8 KV"
if serve 70b-fp8 --dummy-weights llama3-70b --dummy-dtype fp8 --kv-cache-dtype fp8 \
  --max-num-seqs 512 --max-num-batched-tokens 8192; then
  log "server ready: $(grep -m1 'cuda:0' "$OUT/serve-70b-fp8.log")"
  bench 70b-fp8 400 64 256 512
  LEFT=$(( 470 - $(elapsed) ))
  if [ "$LEFT" -ge 30 ]; then
    timeout "$LEFT" "$BIN" bench --url "http://127.0.0.1:$PORT" --capacity --slo tpot=100 \
      --capacity-max 1024 --input-len 128 --output-len 128 --ignore-eos --warmup 4 --quiet \
      --json "$OUT/capacity-70b-fp8.json" > "$OUT/capacity-70b-fp8.txt" 2> "$OUT/capacity-70b-fp8.log"
    log "capacity 70b fp8 (>= 10 tok/s per user) rc=$? $(tail -n 5 "$OUT/capacity-70b-fp8.txt" | tr '\n' ' ')"
  else
    log "capacity 70b fp8 skipped: out of time"
  fi
else
  log "70b fp8 server did not become ready; see serve-70b-fp8.log"
fi
stop
log "done in $(elapsed)s"
