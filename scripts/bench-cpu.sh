#!/usr/bin/env bash
# Single-stream CPU speed: tokenfab against llama.cpp's llama-bench, and optionally against a
# second tokenfab binary (A/B), all interleaved in one run on the same threads.
#
#   scripts/bench-cpu.sh [ROUNDS] [THREADS]      (defaults: 3 rounds, 2 threads)
#
# Each round runs, back to back: llama-bench (pp512 and tg128, one repetition each), then for
# each tokenfab binary `generate` of 128 tokens after a 5-token prompt (decode tok/s, the tg128
# equivalent) and `generate` of 1 token after a 512-token prompt (prompt tok/s, the pp512
# equivalent). With a B binary the two alternate which goes first from round to round. For every
# run it records how much CPU other processes used meanwhile (/proc/stat busy time minus the
# run's own CPU time, in % of all cores), since on 2 shared cores any other process skews the
# result. Prints one row per round, then the medians, of each figure and of the per-round ratios.
#
# Env: TOKENFAB (binary A, default target/release/tokenfab), TOKENFAB_B (binary B; unset: no
# A/B), LLAMA_BENCH (`none` skips llama.cpp), MODEL.
#   A/B of two builds, no llama.cpp:
#     TOKENFAB_B=/path/to/old/tokenfab LLAMA_BENCH=none scripts/bench-cpu.sh 6 2
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
THREADS=${2:-2}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
TOKENFAB=${TOKENFAB:-target/release/tokenfab}
TOKENFAB_B=${TOKENFAB_B:-}
LLAMA_BENCH=${LLAMA_BENCH:-/root/.cache/tokenfab-peers/llama.cpp-0.3.36/build/bin/llama-bench}
[ -x "$TOKENFAB" ] || cargo build --release -p tokenfab
[ -z "$TOKENFAB_B" ] || [ -x "$TOKENFAB_B" ] || { echo "TOKENFAB_B=$TOKENFAB_B is not an executable" >&2; exit 1; }
if [ "$LLAMA_BENCH" != none ] && [ ! -x "$LLAMA_BENCH" ]; then
  echo "llama-bench not found at $LLAMA_BENCH (set LLAMA_BENCH, or LLAMA_BENCH=none)" >&2
  exit 1
fi

export ROUNDS THREADS MODEL TOKENFAB TOKENFAB_B LLAMA_BENCH
python3 - <<'PY'
import json, os, resource, statistics, subprocess

R, T = int(os.environ["ROUNDS"]), os.environ["THREADS"]
MODEL, LB = os.environ["MODEL"], os.environ["LLAMA_BENCH"]
BINS = [("A", os.environ["TOKENFAB"])]
if os.environ["TOKENFAB_B"]:
    BINS.append(("B", os.environ["TOKENFAB_B"]))
HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count()
# 512 tokens with the SmolLM2 tokenizer (the run prints the count it got).
PROMPT512 = " ".join(f"item {i} is w{i*7%1000}." for i in range(52)) + " and" * 19

def busy():
    f = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / HZ, sum(f) / HZ  # busy s (all cores), total s

def run(cmd):
    """Runs cmd; returns (stdout, % of all cores other processes used meanwhile)."""
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, t0 = busy()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    b1, t1 = busy()
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    other = max(0.0, (b1 - b0) - own) / max(t1 - t0, 1e-9) * 100
    return out, other

def tf(binary, prompt, n):
    out, other = run([binary, "generate", "-m", MODEL, "-t", T, "--prompt", prompt, "--max-tokens",
                      str(n), "--temperature", "0", "--ignore-eos", "--json", "--device", "cpu"])
    return json.loads(out.strip().splitlines()[-1]), other

rows = []
print(f"model {MODEL}, {T} threads, {R} rounds; " +
      ", ".join(f"{k} = {b}" for k, b in BINS) +
      f"; 'other' = CPU % of all {NCPU} cores used by other processes during that run")
for r in range(R):
    row = {}
    if LB != "none":
        out, lo = run([LB, "-m", MODEL, "-t", T, "-p", "512", "-n", "128", "-r", "1", "-o", "json"])
        lb = {("pp" if x["n_prompt"] else "tg"): x["avg_ts"] for x in json.loads(out)}
        row.update({"llama pp": (lb["pp"], lo), "llama tg": (lb["tg"], lo)})
    for k, b in (BINS if r % 2 == 0 else BINS[::-1]):
        d, to = tf(b, "The capital of France is", 128)
        p, po = tf(b, PROMPT512, 1)
        row[f"{k} pp"] = (p["prompt_tokens_per_s"], po)
        row[f"{k} tg"] = (d["tokens_per_s"], to)
        row["ptok"] = p["prompt_tokens"]
    rows.append(row)
    cells = [f"{name} {v:7.1f} ({o:.0f}%)" for name, (v, o) in sorted(
        ((n, x) for n, x in row.items() if n != "ptok"), key=lambda kv: kv[0][-2:])]
    print(f"round {r+1}: " + " | ".join(cells))

def ratios(a, b):
    return [x[a][0] / x[b][0] for x in rows if a in x and b in x]

print("medians:")
for phase in ("pp", "tg"):
    names = [n for n in rows[0] if n.endswith(phase)]
    line = [f"{n} {statistics.median(x[n][0] for x in rows):.1f}" for n in names]
    if len(BINS) == 2:
        rs = ratios(f"A {phase}", f"B {phase}")
        line.append(f"A/B {statistics.median(rs):.3f} (per round: {', '.join(f'{v:.3f}' for v in rs)})")
    if LB != "none":
        line.append(f"A/llama {statistics.median(ratios(f'A {phase}', f'llama {phase}')):.2f}")
    print(f"  {phase}: " + " | ".join(line))
print(f"(tokenfab's pp prompt was {rows[0]['ptok']} tokens)")
PY
