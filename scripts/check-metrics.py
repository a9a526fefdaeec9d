#!/usr/bin/env python3
"""Parses a tokenfab server's /metrics with prometheus_client's parser and checks what an
inference gateway's endpoint picker reads from it (queue length, running requests, KV-cache usage
as a 0-1 fraction, cache_config_info{block_size, num_gpu_blocks}) under both prefixes.

Usage: check-metrics.py --url http://127.0.0.1:8000 [--block-size 16] [--num-gpu-blocks 42]
Exit 0 and a final `N passed, 0 failed` line when every check holds. Needs prometheus_client.
"""

import argparse
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--block-size", type=int)
    ap.add_argument("--num-gpu-blocks", type=int)
    args = ap.parse_args()
    with urllib.request.urlopen(args.url.rstrip("/") + "/metrics", timeout=30) as r:
        ctype = r.headers.get("Content-Type", "")
        text = r.read().decode()
    passed, failed = 0, 0

    def check(cond, what):
        nonlocal passed, failed
        if cond:
            passed += 1
        else:
            failed += 1
            print(f"FAIL: {what}", file=sys.stderr)

    check(ctype.startswith("text/plain"), f"content type {ctype}")
    # The parser raises on anything malformed; every family must come through.
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for prefix in ("vllm", "tokenfab"):
        for name in ("num_requests_waiting", "num_requests_running", "kv_cache_usage_perc"):
            f = families.get(f"{prefix}:{name}")
            check(f is not None and f.type == "gauge", f"{prefix}:{name} is a gauge")
            if f is None:
                continue
            values = [s.value for s in f.samples]
            check(len(values) == 1 and values[0] >= 0, f"{prefix}:{name} has one value >= 0")
            if name == "kv_cache_usage_perc":
                check(all(0 <= v <= 1 for v in values), f"{prefix}:{name} is a 0-1 fraction")
        info = families.get(f"{prefix}:cache_config_info")
        check(info is not None and info.type == "gauge", f"{prefix}:cache_config_info is a gauge")
        if info is None:
            continue
        (sample,) = info.samples
        check(sample.value == 1, "cache_config_info is 1")
        labels = sample.labels
        for key, want in (("block_size", args.block_size), ("num_gpu_blocks", args.num_gpu_blocks)):
            value = labels.get(key, "")
            check(value.isdigit() and int(value) > 0, f"{prefix}:cache_config_info {key}={value}")
            if want is not None:
                check(value == str(want), f"{prefix}:cache_config_info {key} {value} == {want}")
        for name in ("prefix_cache_queries", "prefix_cache_hits", "num_preemptions",
                     "prompt_tokens", "generation_tokens"):
            f = families.get(f"{prefix}:{name}")
            check(f is not None and f.type == "counter", f"{prefix}:{name} is a counter")
        ttft = families.get(f"{prefix}:time_to_first_token_seconds")
        check(ttft is not None and ttft.type == "histogram", f"{prefix}:ttft is a histogram")
    for name in ("kv_events_published", "kv_events_dropped"):
        f = families.get(f"tokenfab:{name}")
        check(f is not None and f.type == "counter", f"tokenfab:{name} is a counter")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
