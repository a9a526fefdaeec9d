#!/usr/bin/env bash
# Structured outputs' cost under load: output tok/s of STREAMS concurrent json_schema streams
# against STREAMS free streams on the same server, phases interleaved (A/B/B/A...), and the
# grammar-mask time per row per step from the server's own metrics.
#
#   scripts/bench-structured.sh [STREAMS] [SECONDS] [ROUNDS]     (defaults: 64, 60, 3)
#
# Each phase keeps STREAMS streaming chat requests in flight (closed loop: a worker sends its
# next request as soon as one ends) for WARMUP + SECONDS; output tok/s is the server's
# `generation_tokens_total` over the SECONDS after the warm-up, so every figure is taken with the
# batch full. JSON requests: a 20-property schema (the one of
# `cargo bench -p tokenfab-structured --bench masks`), which ends the output itself (or at
# `max_tokens` 400). Free requests: the same prompt, `max_tokens` FREE_TOKENS with `ignore_eos`;
# by default ("auto") the mean length of the JSON answers measured so far (each round with an
# even number starts with its JSON phase), so both phases run the same context lengths and the
# ratio is the constraint's cost rather than a difference in attention over longer outputs.
# Every phase prints its mean output tokens per request and the engine's phase times per step.
# Mask figures, per phase, from `tokenfab:structured_mask_seconds` (wall time of one step's
# masks, computed on the pool while the forward runs), `..._wait_seconds` (what the step still
# waited after the forward: the part the overlap did not hide) and `..._rows_total`.
# Also records how much CPU other processes used (/proc/stat), since on shared cores any other
# process skews the result. Pass: the median ratio json/free >= 0.9.
#
# Env: TOKENFAB (default target/release/tokenfab, built if missing), MODEL, PORT (8791),
# WARMUP (10 s), FREE_TOKENS (auto), SERVE_ARGS (extra `serve` flags).
# Needs python3 with `openai`.
set -euo pipefail
cd "$(dirname "$0")/.."
STREAMS=${1:-64}
SECONDS_=${2:-60}
ROUNDS=${3:-3}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
TOKENFAB=${TOKENFAB:-target/release/tokenfab}
PORT=${PORT:-8791}
[ -x "$TOKENFAB" ] || cargo build --release -p tokenfab
log=$(mktemp)
# shellcheck disable=SC2086
"$TOKENFAB" serve --model "$MODEL" --host 127.0.0.1 --port "$PORT" \
  --max-num-seqs "$STREAMS" ${SERVE_ARGS:-} 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 600); do
  grep -q "listening on" "$log" && break
  kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.2
done

export STREAMS SECONDS_ ROUNDS PORT SERVER_PID=$server
python3 - <<'PY'
import asyncio, os, statistics, time, urllib.request

import openai

N, SECS, R = int(os.environ["STREAMS"]), float(os.environ["SECONDS_"]), int(os.environ["ROUNDS"])
WARMUP = float(os.environ.get("WARMUP", "10"))
FREE_TOKENS = os.environ.get("FREE_TOKENS", "auto")
json_lengths = []  # mean output tokens of each json phase so far
BASE = f"http://127.0.0.1:{os.environ['PORT']}"
PID = int(os.environ["SERVER_PID"])
HZ = os.sysconf("SC_CLK_TCK")

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string", "maxLength": 40},
        "email": {"type": "string", "format": "email"},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "city": {"type": "string", "maxLength": 30},
        "country": {"enum": ["FR", "DE", "US", "JP", "BR"]},
        "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
        "phone": {"type": "string", "pattern": "^\\+[0-9]{6,14}$"},
        "active": {"type": "boolean"},
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "created": {"type": "string", "format": "date"},
        "notes": {"type": ["string", "null"], "maxLength": 80},
        "visits": {"type": "integer", "minimum": 0, "maximum": 100000},
        "address": {"type": "object", "properties": {
            "street": {"type": "string", "maxLength": 40},
            "number": {"type": "integer", "minimum": 1, "maximum": 9999}},
            "required": ["street", "number"], "additionalProperties": False},
        "languages": {"type": "array", "items": {"enum": ["en", "fr", "de", "ja"]},
                      "minItems": 1, "maxItems": 3},
        "verified": {"type": "boolean"},
        "level": {"type": "integer", "minimum": 1, "maximum": 5},
        "team": {"type": "string", "maxLength": 20},
    },
    "required": ["id", "name", "email", "age", "city", "country", "zip", "phone", "active",
                 "score", "tags", "role", "created", "notes", "visits", "address", "languages",
                 "verified", "level", "team"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Make up a customer record for our CRM."}]


def metrics():
    text = urllib.request.urlopen(f"{BASE}/metrics").read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("tokenfab:") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            key = name.split("{")[0]
            if "_bucket" in key:
                continue
            if key.startswith("tokenfab:engine_phase") and 'phase="' in name:
                key += ":" + name.split('phase="')[1].split('"')[0]
            out[key] = out.get(key, 0.0) + float(value)
    return out


def busy():
    f = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / HZ, sum(f) / HZ


def server_cpu():
    st = open(f"/proc/{PID}/stat").read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / HZ


async def phase(kind):
    client = openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key="none", max_retries=0,
                                timeout=600)
    model = (await client.models.list()).data[0].id
    if kind == "json":
        kw = dict(max_tokens=400, temperature=1.0, response_format={
            "type": "json_schema", "json_schema": {"name": "customer", "schema": SCHEMA}})
    else:
        free = round(statistics.mean(json_lengths)) if FREE_TOKENS == "auto" else int(FREE_TOKENS)
        kw = dict(max_tokens=free, temperature=1.0, extra_body={"ignore_eos": True})
    end = time.time() + WARMUP + SECS
    done = [0, 0, 0]  # finished requests, of which cut off by length, their output tokens

    async def worker(i):
        seed = i
        while time.time() < end:
            seed += 1000
            stream = await client.chat.completions.create(
                model=model, messages=MESSAGES, stream=True, seed=seed,
                stream_options={"include_usage": True}, **kw)
            finish = None
            async for chunk in stream:
                for c in chunk.choices:
                    finish = c.finish_reason or finish
                if chunk.usage:
                    done[2] += chunk.usage.completion_tokens
            done[0] += 1
            done[1] += finish == "length"

    async def window():
        await asyncio.sleep(WARMUP)
        m0, b0, c0, t0 = metrics(), busy(), server_cpu(), time.time()
        await asyncio.sleep(SECS)
        m1, b1, c1, t1 = metrics(), busy(), server_cpu(), time.time()
        return m0, m1, b0, b1, c0, c1, t1 - t0

    tasks = [asyncio.create_task(worker(i)) for i in range(N)]
    m0, m1, b0, b1, c0, c1, dt = await window()
    await asyncio.gather(*tasks)
    await client.close()
    d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}
    other = max(0.0, (b1[0] - b0[0]) - (c1 - c0)) / max(b1[1] - b0[1], 1e-9) * 100
    steps = d.get("tokenfab:structured_mask_seconds_count", 0.0)
    rows = d.get("tokenfab:structured_mask_rows_total", 0.0)
    mask = d.get("tokenfab:structured_mask_seconds_sum", 0.0)
    wait = d.get("tokenfab:structured_mask_wait_seconds_sum", 0.0)
    nsteps = max(d.get("tokenfab:engine_steps_total", 0.0), 1.0)
    phases = {k.split(":", 2)[2]: (d[k] / nsteps * 1e3, d.get(k.replace("_seconds_sum", "_cpu_seconds_sum"), 0.0) / nsteps * 1e3)
              for k in d if k.startswith("tokenfab:engine_phase_seconds_sum:")}
    return {
        "tok_s": d["tokenfab:generation_tokens_total"] / dt,
        "tokens_per_request": done[2] / max(done[0], 1),
        "step_ms": dt / nsteps * 1e3,
        "phases": phases,
        "other_cpu_pct": other,
        "requests": done[0],
        "cut_by_length": done[1],
        "mask_ms_per_step": mask / steps * 1e3 if steps else None,
        "mask_us_per_row": mask / rows * 1e6 if rows else None,
        "rows_per_step": rows / steps if steps else None,
        "wait_ms_per_step": wait / steps * 1e3 if steps else None,
        "hidden_pct": (1 - wait / mask) * 100 if mask else None,
    }


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


rows = []
print(f"{N} streams, {SECS:.0f} s per phase after {WARMUP:.0f} s warm-up, {R} rounds")
print("round kind   tok/s  other%  reqs  mask ms/step  mask us/row  rows/step  "
      "wait ms/step  hidden%")
for r in range(R):
    res = {}
    for kind in (("json", "free") if r % 2 == 0 else ("free", "json")):
        p = asyncio.run(phase(kind))
        if kind == "json":
            json_lengths.append(p["tokens_per_request"])
        res[kind] = p
        print(f"{r:5} {kind:5} {p['tok_s']:7.1f} {p['other_cpu_pct']:6.1f} {p['requests']:5} "
              f"{fmt(p['mask_ms_per_step'], '12.2f')} {fmt(p['mask_us_per_row'], '12.1f')} "
              f"{fmt(p['rows_per_step'], '10.1f')} {fmt(p['wait_ms_per_step'], '13.2f')} "
              f"{fmt(p['hidden_pct'], '8.1f')}", flush=True)
        print(f"      {p['tokens_per_request']:.0f} tokens per request, {p['step_ms']:.1f} ms per step; "
              "phase wall/CPU ms per step: " + ", ".join(
                  f"{k} {w:.2f}/{c:.2f}" for k, (w, c) in sorted(p["phases"].items()) if w >= 0.05))
        if kind == "json" and p["cut_by_length"]:
            print(f"      (json: {p['cut_by_length']} of {p['requests']} cut off by max_tokens)")
    rows.append(res)
ratios = [x["json"]["tok_s"] / x["free"]["tok_s"] for x in rows]
med = lambda k: statistics.median(x["json"][k] for x in rows if x["json"][k] is not None)
print(f"median json/free tok/s: {statistics.median(ratios):.3f} (rounds: "
      f"{', '.join(f'{q:.3f}' for q in ratios)})")
print(f"median mask time: {med('mask_ms_per_step'):.2f} ms per step, "
      f"{med('mask_us_per_row'):.1f} us per row (wall, rows in parallel on the pool), "
      f"{med('wait_ms_per_step'):.2f} ms per step not hidden by the forward "
      f"({med('hidden_pct'):.0f}% hidden)")
print("PASS" if statistics.median(ratios) >= 0.9 else "FAIL: below 0.9")
PY
