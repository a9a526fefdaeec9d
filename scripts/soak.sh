#!/usr/bin/env bash
# Bounded soak: scripts/soak.sh MINUTES [extra soak.py args]. Builds tokenfab, then runs
# scripts/soak.py against `tokenfab serve --dummy-weights tiny` on 127.0.0.1 (port 0).
# Pass --server-args "--model models/SmolLM2-135M-Instruct.Q4_1.gguf" for the real model.
set -euo pipefail
minutes=${1:?usage: scripts/soak.sh MINUTES}
shift
cd "$(dirname "$0")/.."
cargo build -q -p tokenfab
exec python3 scripts/soak.py --minutes "$minutes" --bin target/debug/tokenfab "$@"
