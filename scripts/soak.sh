#!/usr/bin/env bash
# Bounded soak: scripts/soak.sh MINUTES [extra soak.py args]. Builds tokenfab, then runs
# scripts/soak.py against `tokenfab serve --dummy-weights tiny` on 127.0.0.1 (port 0).
# Clients include slow readers, hung readers (idle past --stream-timeout), half-sent requests and
# trickled bodies; the default server args set 2 s stream/header/body timeouts to match.
# For the real model: --server-args "--model models/SmolLM2-135M-Instruct.Q4_1.gguf
#   --stream-timeout 2 --header-read-timeout 2 --body-read-timeout 2" (keep the timeouts).
set -euo pipefail
minutes=${1:?usage: scripts/soak.sh MINUTES}
shift
cd "$(dirname "$0")/.."
cargo build -q -p tokenfab
exec python3 scripts/soak.py --minutes "$minutes" --bin target/debug/tokenfab "$@"
