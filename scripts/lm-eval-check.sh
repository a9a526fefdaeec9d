#!/usr/bin/env bash
# lm-eval against tokenfab with no tokenizer files: lm-eval 0.4.13's `local-completions` model
# with `tokenizer_backend=remote` (it reads GET /tokenizer_info and tokenizes through /tokenize)
# runs a multiple-choice task of our own (60 questions, written below) against `tokenfab serve`
# on the default model. Then every answer's loglikelihood lm-eval reports is checked against the
# sum of the per-token logprobs the server returns for that answer on its own (a prefill-only
# request: echo, max_tokens 0): they must be equal.
#
#   scripts/lm-eval-check.sh [OUT_DIR]
#
# Env: TOKENFAB (binary, default target/release/tokenfab, built when missing), MODEL (default
# models/SmolLM2-135M-Instruct.Q4_1.gguf), LM_EVAL_VENV (default ~/.cache/tokenfab/lm-eval-0.4.13:
# `lm-eval[api]==0.4.13` is installed there from PyPI when missing; it needs no torch; ~750 MB).
# Exit status 0 when lm-eval ran and every loglikelihood matched. Takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d /tmp/tokenfab-lm-eval.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
TOKENFAB=${TOKENFAB:-target/release/tokenfab}
VENV=${LM_EVAL_VENV:-$HOME/.cache/tokenfab/lm-eval-0.4.13}
[ -f "$MODEL" ] || scripts/fetch-model.sh >/dev/null
[ -x "$TOKENFAB" ] || cargo build --release -p tokenfab
if [ ! -x "$VENV/bin/lm_eval" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "lm-eval[api]==0.4.13"
fi

# The server, on a free port; stopped on exit.
"$TOKENFAB" serve --model "$MODEL" --port 0 --kv-cache-memory 256MiB > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  BASE=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$OUT/serve.log" | head -n 1)
  [ -n "$BASE" ] && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/serve.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$BASE" ] || { echo "the server printed no address" >&2; exit 1; }
MODEL_ID=$(python3 -c "import json,urllib.request as u; print(json.load(u.urlopen('$BASE/v1/models'))['data'][0]['id'])")
echo "server $BASE, model $MODEL_ID, output in $OUT"

# The task: 60 questions, each with 4 answers (20 sums, 20 capitals, 20 opposites).
mkdir -p "$OUT/task"
python3 - "$OUT/task" <<'PY'
import json, sys
out = sys.argv[1]
rows = []
for i in range(20):
    a, b = 3 + i % 7, 2 + (i * 3) % 9
    s = a + b
    rows.append({"question": f"Question: {a} + {b} =\nAnswer:",
                 "choices": [f" {s}", f" {s + 1}", f" {s - 2}", f" {s + 3}"], "answer": 0})
capitals = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Russia", "Moscow"), ("Greece", "Athens"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
            ("Norway", "Oslo"), ("Poland", "Warsaw"), ("Sweden", "Stockholm"),
            ("Finland", "Helsinki"), ("Hungary", "Budapest"), ("Belgium", "Brussels"),
            ("Denmark", "Copenhagen"), ("Kenya", "Nairobi"), ("Peru", "Lima")]
for i, (country, city) in enumerate(capitals):
    others = [c for _, c in capitals if c != city]
    wrong = [others[(i * 3 + k * 5) % len(others)] for k in range(3)]
    choices = [f" {city}"] + [f" {w}" for w in wrong]
    k = i % 4
    choices[0], choices[k] = choices[k], choices[0]
    rows.append({"question": f"Question: What is the capital of {country}?\nAnswer:",
                 "choices": choices, "answer": k})
opposites = [("hot", "cold"), ("up", "down"), ("big", "small"), ("day", "night"),
             ("fast", "slow"), ("open", "closed"), ("early", "late"), ("happy", "sad"),
             ("light", "dark"), ("old", "young"), ("rich", "poor"), ("hard", "soft"),
             ("wet", "dry"), ("full", "empty"), ("loud", "quiet"), ("strong", "weak"),
             ("long", "short"), ("left", "right"), ("win", "lose"), ("push", "pull")]
for i, (w, o) in enumerate(opposites):
    others = [x for _, x in opposites if x != o]
    choices = [f" {o}"] + [f" {others[(i + 7 * k) % len(others)]}" for k in range(1, 4)]
    k = (i + 1) % 4
    choices[0], choices[k] = choices[k], choices[0]
    rows.append({"question": f"Question: What is the opposite of \"{w}\"?\nAnswer:",
                 "choices": choices, "answer": k})
assert len(rows) == 60
with open(f"{out}/mc.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
with open(f"{out}/tokenfab_mc.yaml", "w") as f:
    f.write(f"""task: tokenfab_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {out}/mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""")
PY

# lm-eval itself. Every request is tokenized by the server; nothing is fetched from a hub.
HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1 OPENAI_API_KEY=none "$VENV/bin/lm_eval" \
  --model local-completions \
  --model_args "model=$MODEL_ID,base_url=$BASE/v1/completions,tokenizer_backend=remote,tokenized_requests=True,num_concurrent=1,max_retries=1,timeout=120" \
  --tasks tokenfab_mc --include_path "$OUT/task" \
  --output_path "$OUT/results" --log_samples 2>&1 | tee "$OUT/lm_eval.log" | grep -v "^\s*$" | tail -n 8

# Each answer's loglikelihood, as lm-eval reported it, against the server's own prompt logprobs
# of context + answer (tokenized as lm-eval does: context alone, then the whole).
python3 - "$OUT" "$BASE" <<'PY'
import glob, json, sys, urllib.request
out, base = sys.argv[1], sys.argv[2]
def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))
def tok(text):
    return post("/tokenize", {"prompt": text, "add_special_tokens": False})["tokens"]
files = glob.glob(f"{out}/results/**/samples_tokenfab_mc_*.jsonl", recursive=True)
assert files, "lm-eval wrote no samples"
samples = [json.loads(l) for l in open(sorted(files)[-1])]
checked, worst, bad = 0, 0.0, []
for s in samples:
    args = [s["arguments"][f"gen_args_{i}"] for i in range(len(s["arguments"]))]
    for a, resp in zip(args, s["resps"]):
        context, continuation = a["arg_0"], a["arg_1"]
        ll_lm_eval = float(resp[0][0])
        ctx = tok(context)
        whole = tok(context + continuation)
        v = post("/v1/completions", {"prompt": whole, "max_tokens": 0, "echo": True,
                                     "logprobs": 0, "temperature": 0})
        lps = v["choices"][0]["logprobs"]["token_logprobs"]
        assert len(lps) == len(whole), (len(lps), len(whole))
        assert v["usage"]["completion_tokens"] == 0
        ll_server = sum(lps[len(ctx):])
        diff = abs(ll_lm_eval - ll_server)
        worst = max(worst, diff)
        checked += 1
        if diff > 1e-4:
            bad.append((s["doc_id"], continuation, ll_lm_eval, ll_server))
acc = json.load(open(sorted(glob.glob(f"{out}/results/**/results_*.json", recursive=True))[-1]))
acc = acc["results"]["tokenfab_mc"]["acc,none"]
print(f"lm-eval: {len(samples)} questions, acc {acc:.3f}; {checked} answers checked, "
      f"largest |lm-eval loglikelihood - sum of server logprobs| = {worst:.2e}")
if bad:
    for b in bad[:10]:
        print("MISMATCH doc %s answer %r: lm-eval %.6f, server %.6f" % b)
    sys.exit(1)
print("every answer's loglikelihood equals the sum of the server's per-token logprobs")
PY
