#!/usr/bin/env bash
# Builds the Containerfile with buildah where no container registry is reachable (this project's
# sandbox reaches only crates.io, PyPI, npm and Debian), then runs the image's binary.
#
# The base images the Containerfile names (rust, python and debian slim, bookworm) cannot be
# pulled there, so this script makes local stand-ins under the same names: a Debian bookworm
# `minbase` root made by debootstrap (the debian:bookworm-slim stand-in); the same plus gcc and
# this machine's Rust toolchain under /usr/local (the rust:*-slim-bookworm stand-in, as the
# official image lays it out); the same root plus Debian's python3 and pip (the python stand-in,
# Python 3.11 instead of 3.12). Then `buildah bud --pull=never` builds the real Containerfile,
# all three stages. Where the registries are reachable, the one documented command replaces all
# of this: `podman build -t tokenfab -f Containerfile .`.
#
# Needs root (apt-get, chroot), ~10 GB of disk (vfs storage), and 15-30 min on 2 cores.
#   usage: deploy/container-check.sh [WORKDIR]     (default /tmp/tokenfab-container-check)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/tokenfab-container-check}
storage=(--storage-driver vfs)
mkdir -p "$work"
command -v buildah >/dev/null && command -v debootstrap >/dev/null ||
  { apt-get update -qq && apt-get install -y -qq buildah debootstrap >/dev/null; }

rust_image=docker.io/library/rust:1.95-slim-bookworm
python_image=docker.io/library/python:3.12-slim-bookworm
debian_image=docker.io/library/debian:bookworm-slim

# Makes image $1 from the directory tree $2.
image_from_tree() {
  local c
  c=$(buildah "${storage[@]}" from scratch)
  local m
  m=$(buildah "${storage[@]}" mount "$c")
  cp -a "$2/." "$m/"
  buildah "${storage[@]}" umount "$c" >/dev/null
  buildah "${storage[@]}" config --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo --cmd /bin/bash "$c"
  buildah "${storage[@]}" commit --quiet "$c" "$1" >/dev/null
  buildah "${storage[@]}" rm "$c" >/dev/null
}

if ! buildah "${storage[@]}" inspect "$debian_image" >/dev/null 2>&1; then
  echo "making stand-in base images (no registry reachable)..." >&2
  base=$work/bookworm
  [[ -x $base/bin/bash ]] || debootstrap --variant=minbase bookworm "$base" http://deb.debian.org/debian >/dev/null
  image_from_tree "$debian_image" "$base"

  py=$work/python
  rm -rf "$py" && cp -a "$base" "$py"
  chroot "$py" bash -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-pip >/dev/null && apt-get clean'
  # The official image's pip is the system one; Debian's refuses installs, not downloads.
  image_from_tree "$python_image" "$py"

  rs=$work/rust
  rm -rf "$rs" && cp -a "$base" "$rs"
  chroot "$rs" bash -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates >/dev/null && apt-get clean'
  tc=$(rustc --print sysroot)
  mkdir -p "$rs/usr/local/rustup/toolchains/stable" "$rs/usr/local/cargo/bin"
  (cd "$tc" && tar --exclude=./share/doc -cf - .) | tar -C "$rs/usr/local/rustup/toolchains/stable" -xf -
  for b in cargo rustc rustdoc; do
    ln -sf "/usr/local/rustup/toolchains/stable/bin/$b" "$rs/usr/local/cargo/bin/$b"
  done
  image_from_tree "$rust_image" "$rs"
fi

cd "$root"
# Build-time mounts for this sandbox only (the Containerfile needs neither): its TLS proxy's CA,
# which `cargo` inside the build must trust to reach crates.io, and this machine's crate cache.
mounts=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
[[ -d $HOME/.cargo/registry ]] && mounts+=(--volume "$HOME/.cargo/registry:/usr/local/cargo/registry")
echo "buildah bud (all stages)..." >&2
buildah "${storage[@]}" bud --isolation chroot --pull=never --layers=false \
  -t localhost/tokenfab-fetch:check --target fetch -f Containerfile .
buildah "${storage[@]}" bud --isolation chroot --pull=never --layers=false "${mounts[@]}" \
  -t localhost/tokenfab:check -f Containerfile .

# The runtime image: its user, entrypoint, and the binary running there as that user.
buildah "${storage[@]}" inspect --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.StopSignal}}' localhost/tokenfab:check
c=$(buildah "${storage[@]}" from --pull=never localhost/tokenfab:check)
trap 'buildah "${storage[@]}" rm "$c" >/dev/null' EXIT
buildah "${storage[@]}" run --isolation chroot --user 10001:10001 "$c" -- /usr/local/bin/tokenfab --version
buildah "${storage[@]}" run --isolation chroot "$c" -- id

# Serve the default model from a read-only volume as user 10001, answer one request, then
# SIGTERM: the server drains and exits 0.
model=$("$root/scripts/fetch-model.sh")
port=18573
log=$work/serve.log
buildah "${storage[@]}" run --isolation chroot --user 10001:10001 \
  --volume "$(dirname "$model"):/models:ro" "$c" -- /usr/local/bin/tokenfab serve \
  --host 127.0.0.1 --port $port --model "/models/$(basename "$model")" --kv-cache-memory 64MiB \
  >"$log" 2>&1 &
runner=$!
for _ in $(seq 120); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/ready) == 200 ]] && break
  sleep 1
done
curl -sf http://127.0.0.1:$port/v1/completions -H 'content-type: application/json' \
  -d '{"model": "'"$(basename "$model" .gguf)"'", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}'
echo
server=$(pgrep -n -f -- "--port $port --model /models/")
kill -TERM "$server"
wait "$runner"
grep -q "stopped" "$log" || { cat "$log"; exit 1; }
buildah "${storage[@]}" images
echo "container check: ok" >&2
