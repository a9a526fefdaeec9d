#!/usr/bin/env bash
# GPU check for a lent H200 (issue 6). Run from the repo root with the release binary built
# elsewhere and carried along (target/release/tokenfab); nothing is downloaded. Writes logs and
# JSON into the folder given as $1. Budget: under 8 minutes including start-up.
#   (1) GPU vs CPU on --dummy-weights smollm2-135m, one seed: first-step logits relative error
#       (< 1e-2; from the dumped log-probabilities, centred, which equal the centred logits) and
#       32 greedy tokens on 8 prompts, for bf16 and the quantized dummy dtypes;
#   (2) device ceilings: copy bandwidth and bf16 GEMM rate (tokenfab gpu-probe --probe);
#   (3) tokenfab serve --device cuda --dummy-weights llama3-8b, tokenfab bench at concurrency
#       1, 64, 256 (128 in, 128 out, --ignore-eos).
set -uo pipefail
OUT="${1:?usage: scripts/gpu-check.sh OUTPUT_DIR}"
mkdir -p "$OUT"
BIN="${TOKENFAB_BIN:-target/release/tokenfab}"
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(elapsed)s] $*" | tee -a "$OUT/check.log"; }

# cuBLAS/NVRTC from torch's nvidia-* wheels, if the loader does not know them (tokenfab also
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
chmod +x "$BIN" 2>/dev/null || true
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$BIN" --version; } > "$OUT/env.txt" 2>&1
log "env: $(tr '\n' ' ' < "$OUT/env.txt")"

# (2) first: it also says whether the device opens and the kernels compile.
log "gpu-probe"
timeout 120 "$BIN" gpu-probe --probe > "$OUT/probe.json" 2> "$OUT/probe.log"
log "probe rc=$? $(cat "$OUT/probe.json")"

# (1) correctness: CPU vs GPU, same dummy model and seed.
PROMPTS=("The capital of France is" "Once upon a time" "def fibonacci(n):" "1, 2, 3, 4,"
         "GPUs are fast because" "<|im_start|>user
Hi<|im_end|>" "Zebra quartz jumps" "In 1492, ")
: > "$OUT/compare.jsonl"
for DT in bf16 q8_0 q4_0 q4_k q6_k; do
  for i in "${!PROMPTS[@]}"; do
    for DEV in cpu cuda; do
      timeout 120 "$BIN" generate --dummy-weights smollm2-135m --dummy-seed 1 --dummy-dtype "$DT" \
        --device "$DEV" -p "${PROMPTS[$i]}" -n 32 --temperature 0 --ignore-eos --json \
        --dump-logprobs "$OUT/logits-$DT-$i-$DEV.f32" 2>> "$OUT/generate-$DEV.log" | tail -n 1 > "$OUT/gen-$DT-$i-$DEV.json"
    done
    python3 - "$OUT" "$DT" "$i" >> "$OUT/compare.jsonl" <<'PY'
import json, sys, struct, math
out, dt, i = sys.argv[1], sys.argv[2], sys.argv[3]
def load(dev):
    try:
        with open(f"{out}/logits-{dt}-{i}-{dev}.f32", "rb") as f:
            b = f.read()
        v = list(struct.unpack(f"<{len(b)//4}f", b))
        # log-softmax = logits - logsumexp: centred, both are the centred logits.
        m = sum(v) / len(v)
        return [x - m for x in v]
    except OSError:
        return None
def toks(dev):
    try:
        return json.load(open(f"{out}/gen-{dt}-{i}-{dev}.json"))["tokens"]
    except Exception:
        return None
c, g = load("cpu"), load("cuda")
rel = None
if c and g and len(c) == len(g):
    num = math.sqrt(sum((a - b) ** 2 for a, b in zip(c, g)))
    den = math.sqrt(sum(a * a for a in c)) or 1.0
    rel = num / den
tc, tg = toks("cpu"), toks("cuda")
first = None
if tc and tg:
    first = next((k for k, (a, b) in enumerate(zip(tc, tg)) if a != b), None)
print(json.dumps({"dtype": dt, "prompt": int(i), "logits_rel_err": rel,
                  "tokens_equal": tc is not None and tc == tg, "first_diff": first,
                  "cpu_tokens": tc, "gpu_tokens": tg}))
PY
  done
  log "compare $DT: $(grep "\"dtype\": \"$DT\"" "$OUT/compare.jsonl" | python3 -c '
import json,sys
r=[json.loads(l) for l in sys.stdin]
e=[x["logits_rel_err"] for x in r if x["logits_rel_err"] is not None]
print(f"max_rel_err={max(e) if e else None} tokens_equal={sum(x[\"tokens_equal\"] for x in r)}/{len(r)}")')"
  if [ "$(elapsed)" -gt 200 ]; then log "compare: stopping early to keep the time budget"; break; fi
done
rm -f "$OUT"/logits-*.f32

# (3) throughput at scale: llama3-8b dummy weights on the GPU.
PORT=8123
log "serve llama3-8b"
"$BIN" serve --device cuda --dummy-weights llama3-8b --dummy-dtype bf16 --port "$PORT" \
  --max-num-seqs 256 --max-num-batched-tokens 2048 --gpu-memory-utilization 0.9 \
  > "$OUT/serve.log" 2>&1 &
SERVE=$!
for _ in $(seq 1 240); do
  curl -sf "http://127.0.0.1:$PORT/ready" > /dev/null 2>&1 && break
  kill -0 "$SERVE" 2>/dev/null || break
  sleep 1
done
if curl -sf "http://127.0.0.1:$PORT/ready" > /dev/null 2>&1; then
  log "server ready"
  for C in 1 64 256; do
    LEFT=$(( 460 - $(elapsed) ))
    if [ "$LEFT" -lt 20 ]; then log "bench c=$C skipped: out of time"; continue; fi
    N=$(( C < 16 ? 16 : C * 2 ))
    timeout "$LEFT" "$BIN" bench --url "http://127.0.0.1:$PORT" --concurrency "$C" \
      --num-prompts "$N" --input-len 128 --output-len 128 --ignore-eos --warmup 4 --quiet \
      --json "$OUT/bench-c$C.json" > "$OUT/bench-c$C.txt" 2> "$OUT/bench-c$C.log"
    log "bench c=$C rc=$? $(tail -n 5 "$OUT/bench-c$C.txt" | tr '\n' ' ')"
  done
else
  log "server did not become ready; see serve.log"
fi
kill "$SERVE" 2>/dev/null
wait "$SERVE" 2>/dev/null
log "done in $(elapsed)s"
