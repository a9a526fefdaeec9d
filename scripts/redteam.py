#!/usr/bin/env python3
"""Issue 13's red-team measurements against `tokenfab serve` on 127.0.0.1 (real model by default):

  unbounded   n 16 x echo x logprobs 20 over a ~1,600-token prompt: status, seconds, bytes
  tokenize    32 concurrent 5 MB /tokenize bodies: statuses, peak RSS growth, and the latency of
              a normal request sent meanwhile
  fairness    a large call (n 16 x ~1,600-token prompt, echo: no prefix cache) then a small
              request: the small one's latency against the large one's

Prints one JSON object. Timings need a quiet machine; statuses and RSS do not.
Standard library only.

  scripts/redteam.py [--bin target/release/tokenfab] [--server-args "--model ..."] [--only tokenize]
"""
import argparse, json, os, re, shlex, subprocess, sys, threading, time, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="target/release/tokenfab")
ap.add_argument("--server-args", default="--model models/SmolLM2-135M-Instruct.Q4_1.gguf --kv-cache-memory 1GiB")
ap.add_argument("--only", action="append", choices=["unbounded", "tokenize", "fairness"])
a = ap.parse_args()

proc = subprocess.Popen([a.bin, "serve", "--port", "0", *shlex.split(a.server_args)],
                        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                        env={**os.environ, "RUST_LOG": "warn"})
addr = None
for line in proc.stderr:
    m = re.search(r"listening on http://(\S+)", line)
    if m:
        addr = m.group(1)
        break
if not addr:
    sys.exit("the server printed no address")
threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
base = f"http://{addr}"


def rss_mib():
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{proc.pid}/status").read()).group(1)) / 1024


def post(path, body, timeout=900):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json"})
    t = time.time()
    try:
        r = urllib.request.urlopen(req, timeout=timeout)
        out = r.read()
        code = r.status
    except urllib.error.HTTPError as e:
        out, code = e.read(), e.code
    return code, round(time.time() - t, 3), out


for _ in range(600):
    try:
        if urllib.request.urlopen(base + "/ready", timeout=5).status == 200:
            break
    except Exception:
        time.sleep(0.1)

PROMPT = "The quick brown fox jumps over the lazy dog. " * 160
out = {"server_args": a.server_args}
want = set(a.only or ["unbounded", "tokenize", "fairness"])

if "unbounded" in want:
    code, secs, body = post("/v1/completions", {"prompt": PROMPT, "n": 16, "echo": True, "logprobs": 20,
                                                "max_tokens": 16})
    out["unbounded"] = {"status": code, "seconds": secs, "bytes": len(body),
                        "message": json.loads(body).get("error", {}).get("message") if code != 200 else None}

if "tokenize" in want:
    big = json.dumps({"prompt": ("hello world " * 450_000)[:5_000_000]}).encode()
    r0, peak, stop, res = rss_mib(), [rss_mib()], [], []

    def sample():
        while not stop:
            peak.append(rss_mib())
            time.sleep(0.05)

    st = threading.Thread(target=sample)
    st.start()
    ths = [threading.Thread(target=lambda: res.append(post("/tokenize", big))) for _ in range(32)]
    t0 = time.time()
    for th in ths:
        th.start()
    time.sleep(0.5)
    normal = post("/v1/completions", {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0})
    for th in ths:
        th.join()
    stop.append(1)
    st.join()
    out["tokenize_flood"] = {"statuses": sorted({c for c, _, _ in res}), "seconds": round(time.time() - t0, 1),
                             "rss_mib_before": round(r0), "rss_mib_peak": round(max(peak)),
                             "normal_request": {"status": normal[0], "seconds": normal[1]}}

if "fairness" in want:
    res = {}

    def large():
        # echo + logprobs: every choice computes its whole prompt (no prefix cache), 25,600
        # prefill tokens in all, within the work budget.
        res["large"] = post("/v1/completions", {"prompt": PROMPT, "n": 16, "max_tokens": 16, "echo": True,
                                                "logprobs": 0, "temperature": 0, "ignore_eos": True})[:2]

    th = threading.Thread(target=large)
    th.start()
    time.sleep(1.0)
    res["small"] = post("/v1/completions", {"prompt": "Hello", "max_tokens": 8, "temperature": 0})[:2]
    th.join()
    out["fairness"] = {"large_n16_status_seconds": res["large"], "small_status_seconds": res["small"]}

proc.terminate()
try:
    out["exit_code"] = proc.wait(timeout=60)
except subprocess.TimeoutExpired:
    proc.kill()
    out["exit_code"] = "killed"
print(json.dumps(out, indent=1))
