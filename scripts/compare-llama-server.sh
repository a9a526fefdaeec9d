#!/usr/bin/env bash
# tokenfab serve against llama.cpp's llama-server on the same model and threads, measured by
# `tokenfab bench --compare` (runs interleaved A B, B A, ...), plus each server's capacity under an SLO.
# Both servers listen on 127.0.0.1 only and are stopped at the end.
#   usage: scripts/compare-llama-server.sh OUT_DIR [CONCURRENCY=1,8,32,64] [PROMPTS_PER_LOAD=64]
#   NO_CAPACITY=1 skips the capacity search. TOKENFAB_SERVE_ARGS adds flags to `tokenfab serve`
#   (e.g. '--speculative-config {"method":"ngram","num_speculative_tokens":5,"prompt_lookup_max":4,"prompt_lookup_min":2}').
# Records how much CPU other processes used during the run (a fair comparison needs them idle).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: $0 OUT_DIR [CONCURRENCY] [PROMPTS]}
conc=${2:-1,8,32,64}
prompts=${3:-64}
threads=${THREADS:-$(nproc)}
mkdir -p "$out"
model=$("$root/scripts/fetch-model.sh")
bin=$("$root/../shared/peers/llama-server.sh")
tf=$root/target/release/tokenfab
[[ -x $tf ]] || (cd "$root" && cargo build --release -p tokenfab)
pa=${PORT_A:-18101}; pb=${PORT_B:-18102}
# shellcheck disable=SC2086
"$tf" serve --model "$model" --host 127.0.0.1 --port "$pa" --threads "$threads" --max-num-seqs 256 \
  ${TOKENFAB_SERVE_ARGS:-} >"$out/tokenfab.log" 2>&1 &
a=$!
"$bin/llama-server" -m "$model" --host 127.0.0.1 --port "$pb" -np 64 -cb -t "$threads" -c 32768 >"$out/llama-server.log" 2>&1 &
b=$!
trap 'kill $a $b 2>/dev/null; wait $a $b 2>/dev/null || true' EXIT
for p in "$pa" "$pb"; do
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$p/health" >/dev/null && break; sleep 0.5; done
done
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
mine() { cat /proc/$a/stat /proc/$b/stat 2>/dev/null | awk '{s+=$14+$15} END{print s}'; }
cap=(--capacity --capacity-max 128)
[[ ${NO_CAPACITY:-0} == 1 ]] && cap=()
read -r busy0 total0 < <(busy); mine0=$(mine)
"$tf" bench --url "http://127.0.0.1:$pa" --compare "http://127.0.0.1:$pb" \
  --concurrency "$conc" --num-prompts "$prompts" --input-len 64 --output-len 64 --ignore-eos \
  --warmup 4 --rounds 2 --seed 1 --slo ttft=2000,tpot=100 "${cap[@]}" \
  --json "$out/compare.json" --plot "$out/compare.svg" 2>&1 | tee "$out/compare.txt"
read -r busy1 total1 < <(busy); mine1=$(mine)
# Share of all CPU time used by processes other than the two servers (the bench client included).
awk -v b="$((busy1 - busy0))" -v t="$((total1 - total0))" -v m="$((mine1 - mine0))" \
  'BEGIN{printf "other processes used %.1f%% of the CPU during the run\n", 100*(b-m)/t}' | tee -a "$out/compare.txt"
