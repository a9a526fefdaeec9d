#!/usr/bin/env bash
# n-gram speculative decoding: same greedy text, and its speed, with and without it.
#
#   scripts/bench-spec.sh OUT_DIR [ROUNDS=3]
#
# 1. Single stream (`tokenfab generate --json`, greedy, MAX_TOKENS tokens), every prompt of
#    scripts/data/spec-prompts.json through the model's chat template: input-grounded chats
#    ("repeat/edit this text", code edits, summaries quoting the input) and chats with nothing to
#    copy. Each round runs each prompt with speculation off and on, alternating which goes first.
#    The generated token ids must be identical (a mismatch is printed and fails the script); it
#    prints decode tok/s off/on per prompt (medians over rounds) and the median ratio per kind.
#    Goals (issue 17): >= 1.5x on grounded prompts, >= 0.95x (<= 5% slower) on the others.
# 2. STREAMS concurrent streams (default 64): two servers, speculation on (A) and off (B),
#    measured by `tokenfab bench --compare --profile` (runs interleaved A B, B A, ...): once on the
#    grounded chats (each prompt made unique so no prefix cache helps), once on synthetic cold
#    prompts of 64 tokens, 64 tokens out. Goal: A's output tok/s not lower than B's.
#
# Env: TOKENFAB (default target/release/tokenfab), MODEL, THREADS (default: all cores),
#      SPEC (the --speculative-config JSON; default vLLM's ngram example), MAX_TOKENS (128),
#      STREAMS (64), PROMPTS (requests per load and round, default 128), PARTS (single,serve).
# Records how much CPU other processes used during each part; trust figures only when it is ~0.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: $0 OUT_DIR [ROUNDS]}
rounds=${2:-3}
mkdir -p "$out"
export TOKENFAB=${TOKENFAB:-$root/target/release/tokenfab}
export MODEL=${MODEL:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}
export THREADS=${THREADS:-$(nproc)}
export SPEC=${SPEC:-'{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}'}
export MAX_TOKENS=${MAX_TOKENS:-128}
streams=${STREAMS:-64}
prompts=${PROMPTS:-128}
parts=${PARTS:-single,serve}
[[ -x $TOKENFAB ]] || (cd "$root" && cargo build --release -p tokenfab)
export PROMPTS_JSON=$root/scripts/data/spec-prompts.json ROUNDS=$rounds OUT=$out

busy() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }

if [[ $parts == *single* ]]; then
python3 - <<'PY' 2>&1 | tee "$out/single.txt"
import json, os, resource, statistics, subprocess, sys

B, MODEL, SPEC = os.environ["TOKENFAB"], os.environ["MODEL"], os.environ["SPEC"]
R, N, T = int(os.environ["ROUNDS"]), os.environ["MAX_TOKENS"], os.environ["THREADS"]
HZ, NCPU = os.sysconf("SC_CLK_TCK"), os.cpu_count()
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
prompts = json.load(open(os.environ["PROMPTS_JSON"]))

def busy():
    f = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / HZ, sum(f) / HZ

def gen(user, spec):
    text = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")
    cmd = [B, "generate", "--model", MODEL, "--threads", T, "-p", text, "-n", N,
           "--temperature", "0", "--json"]
    if spec:
        cmd += ["--speculative-config", SPEC]
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN); b0, t0 = busy()
    res = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    b1, t1 = busy(); c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    other = max(0.0, (b1 - b0) - own) / max(t1 - t0, 1e-9) * 100
    j = json.loads(res.strip().splitlines()[-1])
    return j, other

rows, mismatches, others = [], [], []
for p in prompts:
    off_s, on_s = [], []
    for r in range(R):
        order = [False, True] if r % 2 == 0 else [True, False]
        got = {}
        for spec in order:
            j, other = gen(p["user"], spec)
            got[spec] = j
            others.append(other)
            (on_s if spec else off_s).append(j["tokens_per_s"])
        if got[True]["tokens"] != got[False]["tokens"]:
            mismatches.append(p["name"])
            print(f"MISMATCH {p['name']} round {r}:\n off: {got[False]['text']!r}\n on:  {got[True]['text']!r}")
    off, on = statistics.median(off_s), statistics.median(on_s)
    ratio = statistics.median([b / a for a, b in zip(off_s, on_s)])
    n = len(got[True]["tokens"])
    rows.append((p["kind"], p["name"], n, off, on, ratio))
    print(f"{p['kind']:8} {p['name']:14} {n:4} tokens  off {off:7.1f}  on {on:7.1f} tok/s  on/off {ratio:5.2f}x", flush=True)
for kind, goal in (("grounded", 1.5), ("free", 0.95)):
    rs = [r[5] for r in rows if r[0] == kind]
    if rs:
        print(f"median on/off, {kind}: {statistics.median(rs):.2f}x (goal >= {goal}x)")
print(f"other processes used {statistics.median(others):.1f}% of the CPU (median over runs, max {max(others):.1f}%)")
print("identical greedy tokens on every prompt" if not mismatches else f"MISMATCHES: {sorted(set(mismatches))}")
sys.exit(1 if mismatches else 0)
PY
fi

if [[ $parts == *serve* ]]; then
  pa=${PORT_A:-18111}; pb=${PORT_B:-18112}
  "$TOKENFAB" serve --model "$MODEL" --host 127.0.0.1 --port "$pa" --threads "$THREADS" \
    --max-num-seqs 256 --speculative-config "$SPEC" >"$out/serve-spec.log" 2>&1 &
  a=$!
  "$TOKENFAB" serve --model "$MODEL" --host 127.0.0.1 --port "$pb" --threads "$THREADS" \
    --max-num-seqs 256 >"$out/serve-plain.log" 2>&1 &
  b=$!
  trap 'kill $a $b 2>/dev/null; wait $a $b 2>/dev/null || true' EXIT
  for p in "$pa" "$pb"; do
    for _ in $(seq 120); do curl -sf "http://127.0.0.1:$p/health" >/dev/null && break; sleep 0.5; done
  done
  # The grounded chats, each made unique (a different first line), so prefix caching helps neither.
  python3 - "$PROMPTS_JSON" "$out/grounded.jsonl" "$prompts" "$MAX_TOKENS" <<'PY'
import json, sys
src, dst, n, out_len = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ps = [p["user"] for p in json.load(open(src)) if p["kind"] == "grounded"]
with open(dst, "w") as f:
    for i in range(n * 4):
        f.write(json.dumps({"prompt": f"Request {i}.\n" + ps[i % len(ps)], "output_len": out_len}) + "\n")
PY
  common=(--url "http://127.0.0.1:$pa" --compare "http://127.0.0.1:$pb" --concurrency "$streams"
          --num-prompts "$prompts" --rounds 2 --warmup 4 --seed 1 --profile --quiet)
  read -r busy0 total0 < <(busy)
  "$TOKENFAB" bench "${common[@]}" --endpoint chat --dataset "$out/grounded.jsonl" \
    --json "$out/serve-grounded.json" 2>&1 | tee "$out/serve-grounded.txt"
  "$TOKENFAB" bench "${common[@]}" --input-len 64 --output-len 64 --ignore-eos \
    --json "$out/serve-synthetic.json" 2>&1 | tee "$out/serve-synthetic.txt"
  read -r busy1 total1 < <(busy)
  mine=$(cat /proc/$a/stat /proc/$b/stat 2>/dev/null | awk '{s+=$14+$15} END{print s}')
  echo "server CPU ${mine} ticks; all CPU busy $((busy1 - busy0)) of $((total1 - total0)) ticks (the rest is other processes and the bench client)" | tee -a "$out/serve-synthetic.txt"
fi
