#!/usr/bin/env bash
# Single-stream CPU speed of two tokenfab binaries, A and B, alternated round by round on the same
# model and threads: decode (128 tokens after a 5-token prompt, the tg128 equivalent) and prompt
# processing (1 token after a 512-token prompt, the pp512 equivalent). For every run it records
# how much CPU other processes used meanwhile (% of all cores), as scripts/bench-cpu.sh does; runs
# where that is more than a few percent say little. Prints one row per round with the B/A ratios,
# then the medians.
#
#   scripts/ab-cpu.sh A_BINARY B_BINARY [ROUNDS] [THREADS]     (defaults: 5 rounds, 2 threads)
#   e.g. scripts/ab-cpu.sh /work/h14a-base-tokenfab target/release/tokenfab 7
# Env: MODEL (default models/SmolLM2-135M-Instruct.Q4_1.gguf).
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: scripts/ab-cpu.sh A_BINARY B_BINARY [ROUNDS] [THREADS]}
B=${2:?usage: scripts/ab-cpu.sh A_BINARY B_BINARY [ROUNDS] [THREADS]}
ROUNDS=${3:-5}
THREADS=${4:-2}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
export A B ROUNDS THREADS MODEL
python3 - <<'PY'
import json, os, resource, statistics, subprocess

A, B, R, T, MODEL = (os.environ[k] for k in ["A", "B", "ROUNDS", "THREADS", "MODEL"])
R, HZ = int(R), os.sysconf("SC_CLK_TCK")
# 512 tokens with the SmolLM2 tokenizer (the run prints the count it got).
PROMPT512 = " ".join(f"item {i} is w{i*7%1000}." for i in range(52)) + " and" * 19

def busy():
    f = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / HZ, sum(f) / HZ

def run(binary, prompt, n):
    """One generate; returns (its JSON line, % of all cores other processes used meanwhile)."""
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, t0 = busy()
    out = subprocess.run([binary, "generate", "-m", MODEL, "-t", T, "--prompt", prompt,
                          "--max-tokens", str(n), "--temperature", "0", "--ignore-eos", "--json",
                          "--device", "cpu"], capture_output=True, text=True, check=True).stdout
    b1, t1 = busy()
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    other = max(0.0, (b1 - b0) - own) / max(t1 - t0, 1e-9) * 100
    return json.loads(out.strip().splitlines()[-1]), other

print(f"A = {A}\nB = {B}\nmodel {MODEL}, {T} threads, {R} rounds; 'other' = CPU % of all "
      f"{os.cpu_count()} cores used by other processes during that run")
print(f"{'round':>5} | {'A tg128':>8} {'other':>5} {'B tg128':>8} {'other':>5} {'B/A':>5} | "
      f"{'A pp512':>8} {'other':>5} {'B pp512':>8} {'other':>5} {'B/A':>5}")
rows = []
for r in range(R):
    # Alternate which binary goes first, so that drift in the machine's load favours neither.
    order = [A, B] if r % 2 == 0 else [B, A]
    res = {}
    for binary in order:
        d, do = run(binary, "The capital of France is", 128)
        p, po = run(binary, PROMPT512, 1)
        res[binary] = (d["tokens_per_s"], do, p["prompt_tokens_per_s"], po, p["prompt_tokens"])
    a, b = res[A], res[B]
    rows.append(dict(atg=a[0], btg=b[0], app=a[2], bpp=b[2], other=max(a[1], a[3], b[1], b[3])))
    print(f"{r+1:>5} | {a[0]:>8.1f} {a[1]:>4.0f}% {b[0]:>8.1f} {b[1]:>4.0f}% {b[0]/a[0]:>5.3f} | "
          f"{a[2]:>8.1f} {a[3]:>4.0f}% {b[2]:>8.1f} {b[3]:>4.0f}% {b[2]/a[2]:>5.3f}")
med = lambda k: statistics.median(x[k] for x in rows)
ratio = lambda x, y: statistics.median(r[x] / r[y] for r in rows)
print(f"{'med':>5} | {med('atg'):>8.1f} {'':>5} {med('btg'):>8.1f} {'':>5} {ratio('btg','atg'):>5.3f} | "
      f"{med('app'):>8.1f} {'':>5} {med('bpp'):>8.1f} {'':>5} {ratio('bpp','app'):>5.3f}")
print(f"(prompt of {res[A][4]} tokens; worst 'other' of any round: {max(r['other'] for r in rows):.0f}%)")
PY
