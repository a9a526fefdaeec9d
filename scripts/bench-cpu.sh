#!/usr/bin/env bash
# Single-stream CPU speed, tokenfab vs llama.cpp's llama-bench, side by side on the same threads.
#
#   scripts/bench-cpu.sh [ROUNDS] [THREADS]      (defaults: 3 rounds, 2 threads)
#
# Each round runs, back to back: llama-bench (pp512 and tg128, one repetition each), tokenfab
# generate of 128 tokens after a 5-token prompt (decode tok/s, the tg128 equivalent) and tokenfab
# generate of 1 token after a 512-token prompt (prompt tok/s, the pp512 equivalent). For every run
# it records how much CPU other processes used meanwhile (/proc/stat busy time minus the run's own
# CPU time, in % of all cores), since on 2 shared cores any other process skews the result.
# Prints one row per round plus the per-round ratios, then the medians. Env: TOKENFAB (binary,
# default target/release/tokenfab), LLAMA_BENCH, MODEL.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
THREADS=${2:-2}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
TOKENFAB=${TOKENFAB:-target/release/tokenfab}
LLAMA_BENCH=${LLAMA_BENCH:-/root/.cache/tokenfab-peers/llama.cpp-0.3.36/build/bin/llama-bench}
[ -x "$TOKENFAB" ] || cargo build --release -p tokenfab
[ -x "$LLAMA_BENCH" ] || { echo "llama-bench not found at $LLAMA_BENCH (set LLAMA_BENCH)" >&2; exit 1; }

export ROUNDS THREADS MODEL TOKENFAB LLAMA_BENCH
python3 - <<'PY'
import json, os, resource, statistics, subprocess

R, T = int(os.environ["ROUNDS"]), os.environ["THREADS"]
MODEL, TF, LB = os.environ["MODEL"], os.environ["TOKENFAB"], os.environ["LLAMA_BENCH"]
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

def tf(prompt, n):
    out, other = run([TF, "generate", "-m", MODEL, "-t", T, "--prompt", prompt, "--max-tokens",
                      str(n), "--temperature", "0", "--ignore-eos", "--json", "--device", "cpu"])
    return json.loads(out.strip().splitlines()[-1]), other

rows = []
print(f"model {MODEL}, {T} threads, {R} rounds; 'other' = CPU % of all {NCPU} cores used by "
      "other processes during that run")
print(f"{'round':>5} | {'llama pp512':>11} {'other':>5} | {'tf pp512':>8} {'other':>5} {'ratio':>5} | "
      f"{'llama tg128':>11} {'other':>5} | {'tf tg128':>8} {'other':>5} {'ratio':>5}")
for r in range(R):
    out, lo = run([LB, "-m", MODEL, "-t", T, "-p", "512", "-n", "128", "-r", "1", "-o", "json"])
    lb = {("pp" if x["n_prompt"] else "tg"): x["avg_ts"] for x in json.loads(out)}
    d, to = tf("The capital of France is", 128)
    p, po = tf(PROMPT512, 1)
    row = dict(lpp=lb["pp"], ltg=lb["tg"], lother=lo, tpp=p["prompt_tokens_per_s"], ppo=po,
               ptok=p["prompt_tokens"], ttg=d["tokens_per_s"], tgo=to)
    rows.append(row)
    print(f"{r+1:>5} | {row['lpp']:>11.1f} {lo:>4.0f}% | {row['tpp']:>8.1f} {po:>4.0f}% "
          f"{row['tpp']/row['lpp']:>5.2f} | {row['ltg']:>11.1f} {lo:>4.0f}% | {row['ttg']:>8.1f} "
          f"{to:>4.0f}% {row['ttg']/row['ltg']:>5.2f}")
med = lambda k: statistics.median(x[k] for x in rows)
mr = lambda a, b: statistics.median(x[a] / x[b] for x in rows)
print(f"{'med':>5} | {med('lpp'):>11.1f} {med('lother'):>4.0f}% | {med('tpp'):>8.1f} {med('ppo'):>4.0f}% "
      f"{mr('tpp','lpp'):>5.2f} | {med('ltg'):>11.1f} {med('lother'):>4.0f}% | {med('ttg'):>8.1f} "
      f"{med('tgo'):>4.0f}% {mr('ttg','ltg'):>5.2f}")
print(f"(tokenfab's pp prompt was {rows[0]['ptok']} tokens; ratio = tokenfab / llama-bench in the same round)")
PY
