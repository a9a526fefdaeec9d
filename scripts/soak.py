#!/usr/bin/env python3
"""Bounded soak of `tokenfab serve` on 127.0.0.1: mixed streaming and non-streaming requests,
random disconnects, bad requests, slow readers (a stream read a little at a time), hung readers
(a stream read once, then not for longer than --stream-timeout, then to its end), half-sent
requests (headers never finished) and trickled bodies from a few client threads, while the
server's RSS and open file descriptors are sampled every few seconds.

Fails (exit 1) when RSS or fds grow without bound (the mean of the last third of the samples
against the first third, with a tolerance), when an accepted request ends without a complete
response or an explicit error (a hung reader must find the stream-timeout error, a slow reader
its [DONE]), when any request is stuck (no answer, or a half-sent request's connection not closed,
within its bound), when any response is a 5xx, or when the engine does not return to idle (no
running or waiting requests, KV usage 0) afterwards. Standard library only.

  scripts/soak.py --minutes 10 [--bin target/debug/tokenfab] [--server-args "--dummy-weights tiny"]
"""
import argparse, http.client, json, os, random, re, shlex, socket, subprocess, sys, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("--minutes", type=float, default=10)
ap.add_argument("--bin", default="target/debug/tokenfab")
# A KV pool small enough to be touched in full early: a lazily touched pool would read as growth.
ap.add_argument("--server-args", default="--dummy-weights tiny --threads 1 --kv-cache-memory 16MiB "
                "--stream-timeout 2 --header-read-timeout 2 --body-read-timeout 2")
# Must match the server's --stream-timeout / --header-read-timeout (seconds).
ap.add_argument("--stream-timeout", type=float, default=2)
ap.add_argument("--header-timeout", type=float, default=2)
ap.add_argument("--clients", type=int, default=6)
ap.add_argument("--sample-secs", type=float, default=5)
ap.add_argument("--seed", type=int, default=7)
a = ap.parse_args()

proc = subprocess.Popen([a.bin, "serve", "--port", "0", *shlex.split(a.server_args)],
                        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                        env={**os.environ, "RUST_LOG": "warn"})
addr = None
log_tail = []
for line in proc.stderr:
    log_tail.append(line)
    m = re.search(r"listening on http://(\S+)", line)
    if m:
        addr = m.group(1)
        break
if not addr:
    sys.exit("the server printed no address:\n" + "".join(log_tail))
host, port = addr.rsplit(":", 1)
port = int(port)
threading.Thread(target=lambda: [log_tail.append(l) for l in proc.stderr], daemon=True).start()

counts = {}
problems = []
lock = threading.Lock()

def note(kind, problem=None):
    with lock:
        counts[kind] = counts.get(kind, 0) + 1
        if problem:
            problems.append(f"{kind}: {problem}")

def post(path, body, timeout=120):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    c.request("POST", path, data, {"content-type": "application/json"})
    r = c.getresponse()
    return c, r

def check_status(kind, r):
    if r.status >= 500:
        note(kind, f"status {r.status}: {r.read()[:300]!r}")
        return False
    if r.status == 429:
        note(kind + ":429")  # an explicit refusal
        r.read()
        return False
    return True

def words(rng):
    return " ".join(rng.choice(["the", "quick", "fox", "über", "中文", "😀", "a", "<|im_end|>"]) for _ in range(rng.randint(1, 40)))

def nonstream(rng):
    body = {"prompt": words(rng), "max_tokens": rng.randint(1, 64), "temperature": rng.choice([0, 0.8]),
            "n": rng.choice([1, 1, 2])}
    c, r = post("/v1/completions", body)
    if check_status("nonstream", r):
        v = json.loads(r.read())
        ok = r.status == 200 and len(v.get("choices", [])) == body["n"] and all(ch["finish_reason"] for ch in v["choices"])
        note("nonstream", None if ok else f"{r.status} {v}")
    c.close()

def chat(rng):
    body = {"messages": [{"role": "user", "content": words(rng)}], "max_tokens": rng.randint(1, 48)}
    c, r = post("/v1/chat/completions", body)
    if check_status("chat", r):
        v = json.loads(r.read())
        ok = r.status == 200 and v["choices"][0]["message"]["role"] == "assistant"
        note("chat", None if ok else f"{r.status} {v}")
    c.close()

def read_sse(r, pause=0.0):
    """Reads an SSE body to its end: (saw [DONE], saw a finish_reason, error codes)."""
    done = finish = False
    errors = []
    for line in r:
        line = line.decode().strip()
        if line == "data: [DONE]":
            done = True
        elif line.startswith("data: "):
            ev = json.loads(line[6:])
            if "error" in ev:
                errors.append(ev["error"].get("code"))
            for ch in ev.get("choices", []):
                finish = finish or bool(ch.get("finish_reason"))
        if pause:
            time.sleep(pause)
    return done, finish, errors

def stream(rng):
    body = {"prompt": words(rng), "max_tokens": rng.randint(1, 96), "stream": True,
            "stream_options": {"include_usage": True}}
    c, r = post("/v1/completions", body)
    if check_status("stream", r):
        done, finish, errors = read_sse(r)
        if errors:
            note("stream:error-event")  # explicit
            done = finish = True
        note("stream", None if (done and finish) else "ended without finish_reason and [DONE]")
    c.close()

def disconnect(rng):
    body = json.dumps({"prompt": words(rng), "max_tokens": 200, "ignore_eos": True,
                       "stream": rng.random() < 0.7}).encode()
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    if rng.random() < 0.7:
        s.recv(rng.randint(1, 2048))
    time.sleep(rng.random() * 0.2)
    s.close()
    note("disconnect")

BAD = [b"{", b"[]", b"\xff\xfe", b'{"prompt": 1}', b'{"prompt": "x", "max_tokens": -1}',
       b'{"prompt": "x", "temperature": 9}', b'{"messages": []}', b'{"prompt": "x", "n": 100000}',
       b'{"prompt": [999999999]}', b'{"prompt": "x", "logprobs": 50}', b'{"prompt": "", "max_tokens": 1}']

BAD_TOK = [b"{", b"[]", b"\xff", b'{"prompt": 1}', b'{}', b'{"prompt": "x", "messages": []}']
BAD_DETOK = [b"{", b'{"tokens": [-1]}', b'{"tokens": [99999999]}', b'{"tokens": "x"}']

def bad(rng):
    path = rng.choice(["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"])
    bodies = {"/tokenize": BAD_TOK, "/detokenize": BAD_DETOK}.get(path, BAD)
    c, r = post(path, rng.choice(bodies))
    body = r.read()
    ok = 400 <= r.status < 500 and b'"error"' in body
    note("bad", None if ok else f"{path}: {r.status} {body[:200]!r}")
    c.close()

def slow_reader(rng):
    # Reads a stream a line at a time with pauses: slower than generation, faster than the
    # stream timeout. Must end with [DONE] and every choice finished.
    body = {"prompt": words(rng), "max_tokens": rng.randint(16, 96), "stream": True, "ignore_eos": True}
    c, r = post("/v1/completions", body, timeout=60)
    if r.status != 200 and r.status != 429:
        note("slow_reader", f"status {r.status}: {r.read()[:300]!r}")
    elif check_status("slow_reader", r):
        done, finish, errors = read_sse(r, pause=0.01)
        ok = done and (finish or errors == ["stream_timeout"])
        note("slow_reader", None if ok else f"done={done} finish={finish} errors={errors}")
    c.close()

def hung_reader(rng):
    # Reads the start of a long stream, then nothing for longer than the stream timeout, then
    # the rest: the server must have aborted it and say why (or have finished it, when it all
    # fit in the socket buffers), and end with [DONE].
    # A short prompt: 480 tokens (8 choices: ~650 KB of SSE) must fit the tiny model's context.
    body = {"prompt": "hung " + str(rng.random()), "max_tokens": 480, "n": rng.choice([4, 8]),
            "stream": True, "ignore_eos": True}
    c, r = post("/v1/completions", body, timeout=60)
    if r.status != 200 and r.status != 429:
        note("hung_reader", f"status {r.status}: {r.read()[:300]!r}")
    elif check_status("hung_reader", r):
        r.readline()
        time.sleep(a.stream_timeout * 1.5 + rng.random())
        done, finish, errors = read_sse(r)
        kind = "hung_reader:aborted" if "stream_timeout" in errors else "hung_reader:finished"
        note(kind)
        bad_errors = [e for e in errors if e != "stream_timeout"]
        note("hung_reader", None if (done and not bad_errors) else f"done={done} errors={errors}")
    c.close()

def half_sent(rng):
    # Headers never finished: the server must close the connection within its header timeout.
    s = socket.create_connection((host, port), timeout=a.header_timeout + 10)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n")
    t = time.time()
    try:
        while s.recv(4096):
            pass
        took = time.time() - t
        note("half_sent", None if took < a.header_timeout + 5 else f"closed after {took:.1f} s")
    except socket.timeout:
        note("half_sent", "stuck: the connection was never closed")
    s.close()

def trickle_body(rng):
    # A body that stops half-way: 408 within the body timeout.
    s = socket.create_connection((host, port), timeout=a.header_timeout + 10)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              b"content-length: 100\r\n\r\n{\"prompt\":")
    try:
        head = s.recv(4096)
        note("trickle_body", None if head.startswith(b"HTTP/1.1 408") else f"answered {head[:40]!r}")
    except socket.timeout:
        note("trickle_body", "stuck: no answer")
    s.close()

ACTIONS = [(nonstream, 3), (chat, 2), (stream, 3), (disconnect, 1), (bad, 2), (slow_reader, 1),
           (hung_reader, 1), (half_sent, 1), (trickle_body, 1)]
end = time.time() + a.minutes * 60

def client(i):
    rng = random.Random(a.seed * 1000 + i)
    fns = [f for f, w in ACTIONS for _ in range(w)]
    while time.time() < end:
        f = rng.choice(fns)
        try:
            f(rng)
        except Exception as e:  # a dropped connection or a timeout on an accepted request
            note(f.__name__, f"exception {e!r}")

samples = []
def sample():
    try:
        rss = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{proc.pid}/status").read()).group(1)) * 1024
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        samples.append((round(time.time() - t0, 1), rss, fds))
    except FileNotFoundError:
        problems.append("the server exited during the soak")

t0 = time.time()
threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
for t in threads:
    t.start()
while time.time() < end:
    sample()
    time.sleep(a.sample_secs)
for t in threads:
    t.join()
sample()

def metric(name):
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + "{"))

def busy():
    return (metric("tokenfab:num_requests_running"), metric("tokenfab:num_requests_waiting"),
            metric("tokenfab:kv_cache_usage_perc"))

idle_by = time.time() + 30
while time.time() < idle_by and any(busy()):
    time.sleep(0.2)
running, waiting, kv = busy()
if running or waiting or kv:
    problems.append(f"stuck requests after the soak: running={running} waiting={waiting} kv_usage={kv}")
sample()
proc.terminate()
try:
    code = proc.wait(timeout=60)
except subprocess.TimeoutExpired:
    proc.kill(); code = "killed"
if code != 0:
    problems.append(f"exit code {code} after SIGTERM")

third = max(1, len(samples) // 3)
first, last = samples[:third], samples[-third:]
mean = lambda xs: sum(xs) / len(xs)
rss0, rss1 = mean([s[1] for s in first]), mean([s[1] for s in last])
fd0, fd1 = max(s[2] for s in first), max(s[2] for s in last)
if rss1 > rss0 * 1.15 + (16 << 20):
    problems.append(f"RSS grew: {rss0/2**20:.1f} MiB -> {rss1/2**20:.1f} MiB")
if fd1 > fd0 + 16:
    problems.append(f"open fds grew: {fd0} -> {fd1}")
summary = {
    "minutes": a.minutes, "clients": a.clients, "requests": counts,
    "total": sum(counts.values()),
    "rss_mib_first_third": round(rss0 / 2**20, 1), "rss_mib_last_third": round(rss1 / 2**20, 1),
    "rss_mib_max": round(max(s[1] for s in samples) / 2**20, 1),
    "fds_first_third_max": fd0, "fds_last_third_max": fd1, "samples": len(samples),
    "problems": sorted(set(problems))[:20], "num_problems": len(problems),
    "samples_t_rss_mib_fds": [(t, round(r / 2**20, 1), f) for t, r, f in samples[:: max(1, len(samples) // 12)]],
}
print(json.dumps(summary, indent=1))
sys.exit(1 if problems else 0)
