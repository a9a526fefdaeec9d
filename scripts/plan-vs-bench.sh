#!/usr/bin/env bash
# The capacity planner against the real server on this machine, in one command:
#   1. `tokenfab plan --device cpu` measures this CPU (memory bandwidth, the kernels' rates on the
#      model's own matrices, paged attention, sampling, one request on the real engine) and saves
#      the device as JSON;
#   2. `tokenfab plan` predicts the bench below from that device, in virtual time;
#   3. `tokenfab serve` runs under `tokenfab bench` with the same workload and engine limits;
#   4. a side-by-side table: output tok/s, TTFT and TPOT medians, users held within the SLO
#      (TTFT <= 2 s and TPOT <= 100 ms, i.e. >= 10 tok/s per user) at each load, and the
#      capacity search's answer, predicted / measured.
# Records how much CPU other processes used during the probe and during the bench (the figures
# mean something only when that is near 0). The server listens on 127.0.0.1, stopped at the end.
#   usage: scripts/plan-vs-bench.sh OUT_DIR [CONCURRENCY=1,8,32,64] [PROMPTS_PER_LOAD=64]
#   NO_CAPACITY=1 skips the capacity search (both sides), CAPACITY_MAX=N caps it (default 128);
#   MODEL=file.gguf another model;
#   THREADS=N threads of the probe and the server (default: all cores).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: $0 OUT_DIR [CONCURRENCY] [PROMPTS]}
conc=${2:-1,8,32,64}
prompts=${3:-64}
threads=${THREADS:-$(nproc)}
mkdir -p "$out"
model=${MODEL:-$("$root/scripts/fetch-model.sh")}
tf=$root/target/release/tokenfab
[[ -x $tf ]] || (cd "$root" && cargo build --release -p tokenfab)
port=${PORT:-18111}
# The same engine limits and workload on both sides.
engine=(--max-num-seqs 256 --max-num-batched-tokens 512 --block-size 16 --kv-cache-memory 1GiB)
work=(--concurrency "$conc" --num-prompts "$prompts" --input-len 64 --output-len 64 --warmup 4
  --seed 1 --slo ttft=2000,tpot=100)
[[ ${NO_CAPACITY:-0} == 1 ]] || work+=(--capacity --capacity-max "${CAPACITY_MAX:-128}")

# measured LABEL CMD...: runs CMD and prints the share of all CPU time that processes other than
# CMD (and the processes in $WATCH) used meanwhile.
measured() {
  python3 - "$@" <<'PY'
import os, resource, subprocess, sys
def stat():
    v = list(map(int, open('/proc/stat').readline().split()[1:8]))
    busy = v[0] + v[1] + v[2] + v[5] + v[6]
    return busy, busy + v[3] + v[4]
def watched():
    s = 0
    for pid in os.environ.get('WATCH', '').split():
        try:
            f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
            s += int(f[11]) + int(f[12])
        except OSError:
            pass
    return s
label, cmd = sys.argv[1], sys.argv[2:]
b0, t0 = stat(); w0 = watched()
code = subprocess.run(cmd).returncode
b1, t1 = stat(); w1 = watched()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
mine = (ru.ru_utime + ru.ru_stime) * os.sysconf('SC_CLK_TCK') + (w1 - w0)
print(f"{label}: other processes used {100 * (b1 - b0 - mine) / max(t1 - t0, 1):.1f}% of the CPU",
      file=sys.stderr)
sys.exit(code)
PY
}

log=$out/plan-vs-bench.txt
: >"$log"
echo "== 1. measuring this CPU (model $model, $threads threads) ==" | tee -a "$log"
measured probe "$tf" plan --device cpu --model "$model" --threads "$threads" \
  --save-device "$out/cpu.json" "${engine[@]}" --num-prompts 1 >"$out/probe.txt" 2>&1 || {
  cat "$out/probe.txt"; exit 1; }
grep -E '^  [a-z]|other processes' "$out/probe.txt" | tee -a "$log"

echo "== 2. the prediction ==" | tee -a "$log"
"$tf" plan --device "$out/cpu.json" --model "$model" "${engine[@]}" "${work[@]}" \
  --json "$out/plan.json" >"$out/plan.txt" 2>&1
echo "see $out/plan.txt" | tee -a "$log"

echo "== 3. the real server under tokenfab bench ==" | tee -a "$log"
"$tf" serve --model "$model" --host 127.0.0.1 --port "$port" --threads "$threads" "${engine[@]}" \
  >"$out/serve.log" 2>&1 &
srv=$!
trap 'kill $srv 2>/dev/null; wait $srv 2>/dev/null || true' EXIT
for _ in $(seq 240); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
WATCH=$srv measured bench "$tf" bench --url "http://127.0.0.1:$port" "${work[@]}" --ignore-eos \
  --quiet --json "$out/bench.json" >"$out/bench.txt" 2>"$out/bench.err" || {
  cat "$out/bench.err"; exit 1; }
grep 'other processes' "$out/bench.err" | tee -a "$log"
kill $srv; wait $srv 2>/dev/null || true
trap - EXIT

echo "== 4. predicted / measured ==" | tee -a "$log"
python3 - "$out/plan.json" "$out/bench.json" <<'PY' | tee -a "$log"
import json, sys
p, m = (json.load(open(f))['targets'][0] for f in sys.argv[1:3])
def held(r):
    g = r.get('goodput') or {}
    return g.get('share', 0.0) * (r.get('concurrency') or 0)
rows = [("load", "out tok/s plan", "bench", "ratio", "TTFT p50 ms", "bench", "TPOT p50 ms", "bench",
         "users held plan", "bench")]
ratios = []
for a, b in zip(p['runs'], m['runs']):
    r = a['output_tokens_per_s'] / b['output_tokens_per_s'] if b['output_tokens_per_s'] else float('nan')
    ratios.append(r)
    rows.append((f"c={a.get('concurrency')}", f"{a['output_tokens_per_s']:.1f}",
                 f"{b['output_tokens_per_s']:.1f}", f"{r:.2f}", f"{a['ttft']['p50']:.0f}",
                 f"{b['ttft']['p50']:.0f}", f"{a['tpot']['p50']:.1f}", f"{b['tpot']['p50']:.1f}",
                 f"{held(a):.0f}", f"{held(b):.0f}"))
w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
for r in rows:
    print("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)))
cp, cm = p.get('capacity'), m.get('capacity')
if cp and cm:
    print(f"capacity (ttft<=2000 ms, tpot<=100 ms, 90% of requests): plan {cp['users']} users at "
          f"{cp['output_tokens_per_s']:.1f} tok/s, bench {cm['users']} users at "
          f"{cm['output_tokens_per_s']:.1f} tok/s")
bad = [r for r in ratios if not 0.8 <= r <= 1.2]
print("output tok/s within 20% at every load" if not bad else f"output tok/s off by more than 20% at {len(bad)} load(s)")
PY
