#!/usr/bin/env python3
"""Checks tokenfab's KV-cache events against the cache's real behaviour and vLLM's scheme.

Binds a ZMQ SUB socket on 127.0.0.1 (as llm-d's indexer binds), starts `tokenfab serve` with
`--kv-events-config` pointing its PUB socket at it and a small KV pool, then drives requests
over HTTP and checks:
- every payload decodes with vLLM's msgspec types (map- or array-encoded events) and re-encodes
  to the same bytes;
- every BlockStored hash equals an independent Python implementation of vLLM's block hash
  (`hash_block_tokens` over pickle / canonical CBOR / msgspec, SHA-256 or XXH3-128,
  NONE_HASH from PYTHONHASHSEED) computed from the event's token ids and parent;
- a replica of the index built from the events alone predicts every request's prefix-cache hit
  (`usage.prompt_tokens_details.cached_tokens`), through repeats, eviction under pressure and
  preemption;
- sequence numbers have no gaps, and the ROUTER replay socket returns the same batches.

Needs python3 with pyzmq, msgpack, msgspec, cbor2 and xxhash. Exit 0 and a final
`N passed, 0 failed` line when every check holds.
"""

import argparse
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

import cbor2
import msgpack
import msgspec
import xxhash
import zmq

SEED = "0"
BLOCK = 16


# --- vLLM's types (the schema of vllm/distributed/kv_events.py, written out here) ------------

class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


# Fields in vLLM's declaration order; the array encoding (before vllm-project/vllm#42892) ends
# at lora_name.
STORED_FIELDS = [
    ("block_hashes", list[int]),
    ("parent_block_hash", int | None),
    ("token_ids", list[int]),
    ("block_size", int),
    ("lora_id", int | None),
    ("medium", str | None),
    ("lora_name", str | None),
    ("extra_keys", list[tuple[Any, ...] | None] | None, None),
    ("group_idx", int | None, None),
    ("kv_cache_spec_kind", str | None, None),
    ("kv_cache_spec_sliding_window", int | None, None),
]
REMOVED_FIELDS = [("block_hashes", list[int]), ("medium", str | None),
                  ("group_idx", int | None, None)]


def event_types(array_like: bool):
    """BlockStored, BlockRemoved, AllBlocksCleared as msgspec structs tagged by class name."""
    opts = dict(array_like=array_like, omit_defaults=True, gc=False, tag=True)
    stored = STORED_FIELDS[:7] if array_like else STORED_FIELDS
    removed = REMOVED_FIELDS[:2] if array_like else REMOVED_FIELDS
    return (msgspec.defstruct("BlockStored", stored, **opts),
            msgspec.defstruct("BlockRemoved", removed, **opts),
            msgspec.defstruct("AllBlocksCleared", [], **opts))


BlockStored, BlockRemoved, AllBlocksCleared = event_types(False)
ABlockStored, ABlockRemoved, AAllBlocksCleared = event_types(True)


class MapBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


class ArrayBatch(EventBatch):
    events: list[ABlockStored | ABlockRemoved | AAllBlocksCleared]


# --- vLLM's block hash, from kv_cache_utils.hash_block_tokens ---------------------------------

SERIALIZE = {
    "pickle": lambda x: pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL),
    "cbor": lambda x: cbor2.dumps(x, canonical=True),
    "msgpack": lambda x: msgspec.msgpack.encode(x),
}
DIGEST = {"sha256": lambda b: hashlib.sha256(b).digest(), "xxhash": xxhash.xxh3_128_digest}
ALGOS = {
    "sha256": ("sha256", "pickle"),
    "sha256_cbor": ("sha256", "cbor"),
    "sha256_msgpack": ("sha256", "msgpack"),
    "xxhash": ("xxhash", "pickle"),
    "xxhash_cbor": ("xxhash", "cbor"),
    "xxhash_msgpack": ("xxhash", "msgpack"),
}


class VllmHash:
    def __init__(self, algo: str, seed: str):
        d, s = ALGOS[algo]
        self.fn = lambda x: DIGEST[d](SERIALIZE[s](x))
        self.msgpack = s == "msgpack"
        self.none_hash = self.fn(seed)

    def block(self, parent: bytes | None, tokens: list[int]) -> bytes:
        parent = parent or self.none_hash
        toks = list(tokens) if self.msgpack else tuple(tokens)
        return self.fn((parent, toks, None))

    def chain(self, tokens: list[int]) -> list[bytes]:
        out, parent = [], None
        for i in range(len(tokens) // BLOCK):
            parent = self.block(parent, tokens[i * BLOCK:(i + 1) * BLOCK])
            out.append(parent)
        return out


def external(h: bytes) -> int:
    """vLLM's maybe_convert_block_hash: the low 64 bits, big-endian."""
    return int.from_bytes(h, "big") & ((1 << 64) - 1)


# --- the subscriber -----------------------------------------------------------------------------

class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, cond: bool, what: str):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL: {what}", file=sys.stderr)


class Replica:
    """The prefix-cache index as the events describe it: external hash -> full hash."""

    def __init__(self, hasher: VllmHash, checks: Checks, encoding: str, medium: str):
        self.h = hasher
        self.c = checks
        self.encoding = encoding
        self.medium = medium
        self.full: dict[int, bytes] = {}
        self.decoder = msgspec.msgpack.Decoder(MapBatch if encoding == "map" else ArrayBatch)
        self.encoder = msgspec.msgpack.Encoder()
        self.stored = self.removed = 0

    def apply(self, payload: bytes):
        # Untyped, as a generic consumer sees it: a positional [ts, events, rank] envelope;
        # events are {"type": tag, ...} maps or [tag, ...] arrays.
        raw = msgpack.unpackb(payload)
        self.c.check(isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], float),
                     "the batch is [ts, events, data_parallel_rank]")
        for ev in raw[1]:
            tag = ev.get("type") if self.encoding == "map" else ev[0]
            self.c.check(tag in ("BlockStored", "BlockRemoved", "AllBlocksCleared"), f"tag {tag}")
        batch = self.decoder.decode(payload)
        self.c.check(self.encoder.encode(batch) == payload,
                     "payload re-encodes to the same bytes with msgspec")
        self.c.check(batch.data_parallel_rank == 0, "data_parallel_rank is 0")
        for e in batch.events:
            if isinstance(e, (BlockStored, ABlockStored)):
                self.on_stored(e)
            elif isinstance(e, (BlockRemoved, ABlockRemoved)):
                self.c.check(e.medium == self.medium, "BlockRemoved medium")
                for x in e.block_hashes:
                    self.c.check(x in self.full, f"removed hash {x} was stored")
                    self.full.pop(x, None)
                    self.removed += 1
            else:
                self.full.clear()

    def on_stored(self, e):
        self.c.check(e.block_size == BLOCK and e.medium == self.medium, "BlockStored fields")
        self.c.check(len(e.token_ids) == BLOCK * len(e.block_hashes), "token_ids per block")
        if self.encoding == "map":
            self.c.check(e.extra_keys == [None] * len(e.block_hashes) and e.group_idx == 0
                         and e.kv_cache_spec_kind == "full_attention", "map-only fields")
        parent = None
        if e.parent_block_hash is not None:
            parent = self.full.get(e.parent_block_hash)
            self.c.check(parent is not None, "the parent of a stored run is in the index")
        for i, x in enumerate(e.block_hashes):
            full = self.h.block(parent, e.token_ids[i * BLOCK:(i + 1) * BLOCK])
            self.c.check(external(full) == x, f"block hash {x} equals vLLM's {external(full)}")
            self.c.check(x not in self.full, f"hash {x} stored twice without a removal")
            self.full[x] = full
            parent = full
            self.stored += 1

    def predicted_cached_tokens(self, prompt: list[int]) -> int:
        n = 0
        for full in self.h.chain(prompt)[:(len(prompt) - 1) // BLOCK]:
            if external(full) not in self.full:
                break
            n += 1
        return n * BLOCK


class Subscriber:
    """SUB socket bound on 127.0.0.1; keeps every frame and checks the sequence numbers."""

    def __init__(self, ctx: zmq.Context, topic: str):
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt_string(zmq.SUBSCRIBE, topic)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.topic = topic.encode()
        self.batches: dict[int, bytes] = {}
        self.last_seq = -1
        self.replay_endpoint: str | None = None
        self.replayed = 0

    def drain(self, replica: Replica, checks: Checks, quiet_ms: int = 300):
        while self.sock.poll(quiet_ms):
            topic, seq_b, payload = self.sock.recv_multipart()
            checks.check(topic == self.topic, "topic frame")
            checks.check(len(seq_b) == 8, "8-byte sequence number")
            seq = int.from_bytes(seq_b, "big")
            if seq > self.last_seq + 1:
                # Batches published before our connection was up (PUB drops them) are fetched
                # from the replay socket, as a real subscriber does; later gaps are failures.
                checks.check(self.last_seq == -1, f"gap after {self.last_seq} (got {seq})")
                missed = replay(self.sock.context, self.replay_endpoint, self.last_seq + 1)
                for s in range(self.last_seq + 1, seq):
                    checks.check(s in missed, f"batch {s} replayed")
                    if s in missed:
                        self.batches[s] = missed[s]
                        replica.apply(missed[s])
                        self.replayed += 1
            self.last_seq = seq
            self.batches[seq] = payload
            replica.apply(payload)


def replay(ctx: zmq.Context, endpoint: str, start: int) -> dict[int, bytes]:
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoint)
    dealer.send_multipart([b"", start.to_bytes(8, "big")])
    got = {}
    while dealer.poll(5000):
        _, seq_b, payload = dealer.recv_multipart()
        if not payload:
            break
        got[int.from_bytes(seq_b, "big")] = payload
    dealer.close(0)
    return got


# --- driving the server ---------------------------------------------------------------------

class Server:
    def __init__(self, binary: str, model: str, sub_endpoint: str, topic: str, args: list[str]):
        cfg = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": sub_endpoint,
               "replay_endpoint": "tcp://127.0.0.1:0", "topic": topic}
        env = dict(os.environ, PYTHONHASHSEED=SEED, RUST_LOG="info")
        env.pop("TOKENFAB_API_KEY", None)
        self.proc = subprocess.Popen(
            [binary, "serve", "--port", "0", "--model", model, "--served-model-name", "m",
             "--block-size", str(BLOCK),
             "--kv-events-config", json.dumps(cfg), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.log: list[str] = []
        self.base = self.replay = None
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # the log's colours
                self.log.append(line.rstrip())
                m = re.search(r"replay_endpoint=(tcp://\S+)", line)
                if m:
                    self.replay = m.group(1)
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    self.base = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(120) or self.base is None:
            self.stop()
            raise SystemExit("the server printed no address:\n" + "\n".join(self.log))

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return r.read().decode()

    def complete(self, prompt: list[int], max_tokens: int) -> dict:
        return self.post("/v1/completions", {"model": "m", "prompt": prompt,
                                             "max_tokens": max_tokens, "temperature": 0,
                                             "ignore_eos": True})

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.get("/metrics").splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def prompt(seed: int, n: int) -> list[int]:
    """n token ids, distinct per seed (a small LCG over the first 40k ids)."""
    x, out = seed * 7919 + 1, []
    for _ in range(n):
        x = (x * 1103515245 + 12345) % (1 << 31)
        out.append(100 + x % 40000)
    return out


def scenario(args, encoding: str, algo: str, checks: Checks):
    ctx = zmq.Context()
    topic = f"kv@test-pod@{algo}"
    sub = Subscriber(ctx, topic)
    server = Server(args.binary, args.model, sub.endpoint, topic,
                    ["--kv-cache-memory", args.kv_cache_memory, "--max-num-seqs", "8",
                     "--kv-events-encoding", encoding, "--prefix-caching-hash-algo", algo])
    replica = Replica(VllmHash(algo, SEED), checks, encoding, "CPU")
    try:
        sub.replay_endpoint = server.replay
        # The PUB socket connects to us: wait until it does (a batch arriving proves it).
        deadline, k = time.time() + 60, 0
        while sub.last_seq < 0 and time.time() < deadline:
            server.complete(prompt(900 + k, 40), 1)
            k += 1
            sub.drain(replica, checks)
        checks.check(sub.last_seq >= 0, "events arrive")

        def run(p: list[int], max_tokens: int, what: str):
            sub.drain(replica, checks)
            want = replica.predicted_cached_tokens(p)
            r = server.complete(p, max_tokens)
            got = r["usage"]["prompt_tokens_details"]["cached_tokens"]
            checks.check(got == want, f"{what}: cached_tokens {got} == predicted {want}")
            sub.drain(replica, checks)
            return got

        base = prompt(1, 100)
        run(base, 4, "first prompt")
        checks.check(run(base, 4, "same prompt again") == 96, "a repeat hits 6 full blocks")
        run(base[:64] + prompt(2, 40), 4, "shared 64-token prefix")

        # Pressure: distinct prompts beyond the pool's size evict the oldest blocks.
        for i in range(args.pressure):
            run(prompt(10 + i, 120), 4, f"pressure {i}")
        checks.check(replica.removed > 0, "eviction produced BlockRemoved events")
        run(base, 4, "first prompt after pressure")

        if algo == args.preempt_algo:
            # Preemption: concurrent requests that together outgrow the pool.
            before = server.metric("vllm:num_preemptions_total")
            threads = [threading.Thread(target=server.complete, args=(prompt(50 + i, 150), 100))
                       for i in range(args.concurrent)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            checks.check(server.metric("vllm:num_preemptions_total") > before,
                         "the concurrent requests were preempted")
            for i in range(args.concurrent):
                run(prompt(50 + i, 150), 1, f"after preemption {i}")

        sub.drain(replica, checks)
        # Replay: everything we received, byte for byte, from the ROUTER socket.
        checks.check(server.replay is not None, "the replay endpoint is logged")
        got = replay(ctx, server.replay, 0)
        checks.check(got == sub.batches,
                     f"replay from 0 returns the {len(sub.batches)} batches received")
        published = server.metric("tokenfab:kv_events_published_total")
        checks.check(published == sub.last_seq + 1, f"{published} batches published")
        checks.check(server.metric("tokenfab:kv_events_dropped_total") == 0, "nothing dropped")
        # The index agrees in size with the replica's view.
        checks.check(replica.stored > 0 and len(replica.full) > 0, "blocks stored")
        print(f"{encoding}/{algo}: {sub.last_seq + 1} batches ({sub.replayed} from replay), "
              f"{replica.stored} stored, {replica.removed} removed", file=sys.stderr)
    finally:
        server.stop()
        if checks.failed:
            print("server log:\n" + "\n".join(server.log[-40:]), file=sys.stderr)
        ctx.destroy(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--kv-cache-memory", default="15MiB")
    ap.add_argument("--pressure", type=int, default=8)
    ap.add_argument("--concurrent", type=int, default=4)
    ap.add_argument("--runs", default="map:sha256_cbor,array:sha256",
                    help="encoding:algorithm pairs, comma-separated")
    ap.add_argument("--preempt-algo", default="sha256_cbor")
    args = ap.parse_args()
    checks = Checks()
    for run in args.runs.split(","):
        encoding, algo = run.split(":")
        scenario(args, encoding, algo, checks)
    print(f"{checks.passed} passed, {checks.failed} failed")
    sys.exit(1 if checks.failed else 0)


if __name__ == "__main__":
    main()
