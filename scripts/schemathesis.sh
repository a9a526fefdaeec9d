#!/usr/bin/env bash
# Property-based API test: schemathesis (pip install schemathesis) generates requests from
# /openapi.json against a live `tokenfab serve --dummy-weights tiny` on 127.0.0.1 and checks
# that no response is a 5xx and every response matches the document (status, content type,
# headers, body schema).
#   scripts/schemathesis.sh [MAX_EXAMPLES=50] [extra `st run` args]
# Extra server flags via SERVER_ARGS (default: tiny dummy weights, small token caps).
set -euo pipefail
n=${1:-50}
shift || true
cd "$(dirname "$0")/.."
command -v st >/dev/null || { echo "needs schemathesis: python3 -m pip install schemathesis"; exit 2; }
cargo build -q -p tokenfab
log=$(mktemp)
# shellcheck disable=SC2086
target/debug/tokenfab serve --port 0 ${SERVER_ARGS:---dummy-weights tiny --threads 1 --max-tokens-limit 64 --max-queued-requests 4096} \
  2>"$log" & pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 600); do
  addr=$(grep -o 'listening on http://[^ ]*' "$log" | head -1 | sed 's/listening on //') && [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "${addr:-}" ] || { cat "$log"; exit 1; }
st run "$addr/openapi.json" --url "$addr" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "$n" --request-timeout 60 --generation-deterministic "$@"
