#!/usr/bin/env python3
"""Regenerates the reference data in reference/ from llama.cpp (build 0c1e57098, the tree vendored
in llama-cpp-python 0.3.36; ../shared/peers/llama-server.sh builds it), so that the tests can
compare tokenfab with llama.cpp without building llama.cpp. reference/README.md says what each
file holds.

  usage: scripts/llama-reference.py gemma3     Gemma 3 270M (scripts/fetch-gemma3.sh): greedy
                                               continuations with log-probabilities, perplexity
         scripts/llama-reference.py random     the random Qwen3 and Phi-3 files
                                               (scripts/random-models.py): greedy continuations

Env: LLAMA_BIN (the folder of llama-server and llama-perplexity; default: what
../shared/peers/llama-server.sh prints), THREADS (default 2).
"""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(ROOT, "reference")
THREADS = os.environ.get("THREADS", "2")
TEXTS = os.path.join(ROOT, "..", "shared", "reference", "texts")


def llama_bin():
    if "LLAMA_BIN" in os.environ:
        return os.environ["LLAMA_BIN"]
    script = os.path.join(ROOT, "..", "shared", "peers", "llama-server.sh")
    return subprocess.run(["bash", script], check=True, capture_output=True,
                          text=True).stdout.strip()


class Server:
    """llama-server on a free port of 127.0.0.1, stopped on exit."""

    def __init__(self, model, ctx):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = open(os.path.join(ROOT, "target", "llama-server.log"), "w")
        self.proc = subprocess.Popen(
            [os.path.join(llama_bin(), "llama-server"), "-m", model, "--host", "127.0.0.1",
             "--port", str(self.port), "-t", THREADS, "-c", str(ctx), "-np", "1"],
            stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(600):
            try:
                if self.get("/health").get("status") == "ok":
                    return
            except OSError:
                pass
            time.sleep(0.2)
            if self.proc.poll() is not None:
                break
        self.proc.kill()
        sys.exit(f"llama-server did not come up; see {self.log.name}")

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}") as r:
            return json.load(r)

    def post(self, path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.load(r)

    def greedy(self, prompt_tokens, n, ignore_eos=True):
        """n tokens by greedy decoding (EOS ignored, no penalty), and each one's log-probability
        under the full softmax (None where llama-server merged tokens that split a character
        into one entry)."""
        r = self.post("/completion", {
            "prompt": prompt_tokens, "n_predict": n, "temperature": 0, "samplers": ["top_k"],
            "top_k": 1, "repeat_penalty": 1, "ignore_eos": ignore_eos, "cache_prompt": False,
            "n_probs": 1, "return_tokens": True})
        probs, lps, k = r["completion_probabilities"], [], 0
        for t in r["tokens"]:
            if k < len(probs) and probs[k]["id"] == t:
                lps.append(probs[k]["logprob"])
                k += 1
            else:
                lps.append(None)
        return r["tokens"], lps

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.proc.kill()
        self.proc.wait()


def write_jsonl(name, rows):
    os.makedirs(REF, exist_ok=True)
    with open(os.path.join(REF, name), "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote reference/{name} ({len(rows)} rows)", file=sys.stderr)


GEMMA_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Water boils at a temperature of",
    "The three primary colors are",
    "Here is a list of fruits:\n1. Apple\n2.",
    "Le chat est assis sur",
    "In 1969, the first humans landed on",
    "<start_of_turn>user\nWhat is the largest planet in the solar system?<end_of_turn>\n"
    "<start_of_turn>model\n",
    "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n",
    "Emoji test: 🙂 🚀 — naïve café, 東京, ∑ x² =",
    "SELECT name, email FROM users WHERE",
]


def gemma3_model():
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "fetch-gemma3.sh")],
                          check=True, capture_output=True, text=True).stdout.strip()


# A conversation, rendered as templates/gemma3.jinja renders it (the system message folded into
# the first user turn): what tokenfab's /v1/chat/completions must send the model.
CHAT = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"}]
CHAT_TEXT = ("<bos><start_of_turn>user\nYou are a helpful assistant.\n\n"
             "What is the capital of France?<end_of_turn>\n<start_of_turn>model\n")


def gemma3_chat():
    with Server(gemma3_model(), 4096) as s:
        ids = s.post("/tokenize", {"content": CHAT_TEXT, "add_special": False,
                                   "parse_special": True})["tokens"]
        # Stopping at the end of the turn, as a chat reply does.
        toks, lps = s.greedy(ids, 8, ignore_eos=False)
        text = s.post("/detokenize", {"tokens": toks})["content"]
    with open(os.path.join(REF, "gemma3-270m-chat.json"), "w") as fh:
        json.dump({"messages": CHAT, "prompt": CHAT_TEXT, "prompt_tokens": ids,
                   "greedy_tokens": toks, "greedy_logprobs": lps, "greedy_text": text},
                  fh, indent=1, ensure_ascii=False)
        fh.write("\n")


def gemma3():
    model = gemma3_model()
    # Two prompts longer than the 512-position sliding window, so that windowed layers drop
    # their earliest positions.
    long = [open(os.path.join(TEXTS, f), encoding="utf-8").read()[:n]
            for f, n in [("GPL-2.txt", 3000), ("MPL-2.0.txt", 2600)]]
    rows = []
    with Server(model, 4096) as s:
        for p in GEMMA_PROMPTS + long:
            ids = s.post("/tokenize", {"content": p, "add_special": True,
                                       "parse_special": True})["tokens"]
            toks, lps = s.greedy(ids, 48)
            rows.append({"prompt": p, "prompt_tokens": ids, "greedy_tokens": toks,
                         "greedy_logprobs": lps})
    write_jsonl("gemma3-270m-greedy.jsonl", rows)
    ppl = []
    for f, ctx in [("GPL-2.txt", 512), ("MPL-2.0.txt", 512), ("GPL-2.txt", 1024)]:
        out = subprocess.run(
            [os.path.join(llama_bin(), "llama-perplexity"), "-m", model, "-f",
             os.path.join(TEXTS, f), "-c", str(ctx), "-b", str(ctx), "-t", THREADS],
            check=True, capture_output=True, text=True)
        m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out.stdout + out.stderr)
        chunks = re.search(r"calculating perplexity over (\d+) chunks", out.stdout + out.stderr)
        ppl.append({"file": f, "ctx": ctx, "ppl": float(m.group(1)),
                    "stderr": float(m.group(2)), "chunks": int(chunks.group(1))})
        print(ppl[-1], file=sys.stderr)
    with open(os.path.join(REF, "gemma3-270m-perplexity.json"), "w") as fh:
        json.dump(ppl, fh, indent=1)
        fh.write("\n")
    gemma3_chat()


def random_models():
    paths = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "random-models.py")],
                           check=True, capture_output=True, text=True).stdout.split()
    import hashlib
    sha = {}
    for path in paths:
        name = os.path.basename(path).removeprefix("random-").removesuffix(".gguf")
        with open(path, "rb") as f:
            sha[name] = hashlib.sha256(f.read()).hexdigest()
        # Prompts of random ids below the filler tokens used as BOS/EOS.
        rows = []
        with Server(path, 8192) as s:
            for i in range(8):
                ids = [(i * 997 + j * 7919) % 4000 for j in range(4 + 3 * i)]
                toks, lps = s.greedy(ids, 64)
                rows.append({"prompt_tokens": ids, "greedy_tokens": toks, "greedy_logprobs": lps})
        write_jsonl(f"random-{name}-greedy.jsonl", rows)
    with open(os.path.join(REF, "random-models.json"), "w") as fh:
        json.dump({"sha256": sha}, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    {"gemma3": gemma3, "random": random_models}[sys.argv[1]]()
