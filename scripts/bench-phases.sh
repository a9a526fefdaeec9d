#!/usr/bin/env bash
# Where a step goes: `tokenfab bench --profile` against `tokenfab serve` at 1 and 64 streams
# (64-token cold prompts, 64 tokens out, ignore_eos), printing, per load, the client's figures and
# the server's phase table (wall and CPU ms per step, shares; CPU = CPU time of the threads doing
# each phase, so shares hold under contention). With TOKENFAB_B, a second build (before/after)
# runs the same workload interleaved A B, B A, ... (`--compare`); a build without phase metrics gets
# the client's figures only. Each server that has `serve --profile-forward` also times the phases
# inside its forward passes (per layer: norms, products, attention, summed over layers), printed
# under each phase table; FORWARD_PHASES=0 turns that off (it costs a few clock
# reads per phase and layer, which an A/B run against a build without the flag charges to A).
#
#   scripts/bench-phases.sh OUT_DIR [CONCURRENCY=1,64] [PROMPTS_PER_LOAD=64]
#
# Env: TOKENFAB (A, default target/release/tokenfab), TOKENFAB_B (B, optional), MODEL,
#      THREADS (default: all cores), SERVE_ARGS (extra `serve` flags for both servers).
# Prints how much CPU other processes used during the run: trust the figures when it is ~0.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: $0 OUT_DIR [CONCURRENCY] [PROMPTS]}
conc=${2:-1,64}
prompts=${3:-64}
tf=${TOKENFAB:-$root/target/release/tokenfab}
tfb=${TOKENFAB_B:-}
model=${MODEL:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}
threads=${THREADS:-$(nproc)}
read -r -a extra <<<"${SERVE_ARGS:-}"
mkdir -p "$out"
[[ -x $tf ]] || (cd "$root" && cargo build --release -p tokenfab)
pa=${PORT_A:-18121}; pb=${PORT_B:-18122}
# `--profile-forward` for a build that has it (an older base binary does not).
fwd() { [[ ${FORWARD_PHASES:-1} != 0 ]] && "$1" serve --help 2>/dev/null | grep -q -- --profile-forward &&
  echo --profile-forward || true; }
serve() { local f; f=$(fwd "$1"); exec "$1" serve --model "$model" --host 127.0.0.1 --port "$2" \
  --threads "$threads" --max-num-seqs 256 ${f:+"$f"} "${extra[@]}"; }
serve "$tf" "$pa" >"$out/serve-a.log" 2>&1 &
pids=($!)
cmp=()
if [[ -n $tfb ]]; then
  serve "$tfb" "$pb" >"$out/serve-b.log" 2>&1 &
  pids+=($!)
  cmp=(--compare "http://127.0.0.1:$pb")
fi
trap 'kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null || true' EXIT
for p in "$pa" ${tfb:+"$pb"}; do
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$p/health" >/dev/null && break; sleep 0.5; done
done
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
mine() { for p in "${pids[@]}"; do cat "/proc/$p/stat"; done 2>/dev/null | awk '{s+=$14+$15} END{print s}'; }
read -r busy0 total0 < <(busy); mine0=$(mine)
"$tf" bench --url "http://127.0.0.1:$pa" "${cmp[@]}" --concurrency "$conc" \
  --num-prompts "$prompts" --input-len 64 --output-len 64 --ignore-eos --warmup 4 \
  --rounds "${ROUNDS:-2}" --seed 1 --profile --quiet --json "$out/phases.json" 2>&1 |
  tee "$out/phases.txt"
read -r busy1 total1 < <(busy); mine1=$(mine)
# Share of all CPU time used by processes other than the servers (the bench client included).
awk -v b="$((busy1 - busy0))" -v t="$((total1 - total0))" -v m="$((mine1 - mine0))" \
  'BEGIN{printf "other processes used %.1f%% of the CPU during the run\n", 100*(b-m)/t}' |
  tee -a "$out/phases.txt"
