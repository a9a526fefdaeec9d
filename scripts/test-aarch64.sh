#!/usr/bin/env bash
# Builds the backend crate's tests for aarch64 and runs them under qemu user emulation: once on
# qemu's default CPU (NEON + dotprod: Isa::Neon and Isa::NeonDot against scalar) and once as a
# Cortex-A72 (NEON without dotprod: detection must not pick `sdot`, which would be SIGILL there).
# Installs the Debian cross toolchain first if a piece is missing (rustc-web with the arm64 std,
# gcc-aarch64-linux-gnu as linker, the arm64 glibc, qemu-user). Prints the wall time.
#   usage: scripts/test-aarch64.sh [extra cargo test args, e.g. -- quant]
# Build output goes to target/aarch64.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
start=$(date +%s)
target=aarch64-unknown-linux-gnu

have_toolchain() {
  [[ -x /usr/bin/rustc && -x /usr/bin/cargo && -x /usr/bin/rustdoc ]] &&
    [[ -d $(/usr/bin/rustc --print sysroot)/lib/rustlib/$target/lib ]] &&
    command -v aarch64-linux-gnu-gcc >/dev/null &&
    command -v qemu-aarch64 >/dev/null &&
    [[ -f /usr/aarch64-linux-gnu/lib/libc.so.6 ]]
}

# Exit 3 (not 1) when the toolchain cannot be installed, so that callers can tell a machine
# without Debian's packages from a failing test.
install() {
  sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  "${sudo[@]}" dpkg --add-architecture arm64 &&
    "${sudo[@]}" apt-get update -q &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rustc-web cargo-web \
      libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >&2
}
if ! have_toolchain; then
  echo "installing the aarch64 cross toolchain (Debian packages)..." >&2
  install || true
  have_toolchain || { echo "test-aarch64: cannot install the aarch64 toolchain" >&2; exit 3; }
fi

# Debian's rustc (rustup's has no aarch64 std here), its rustdoc for the doc tests.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# The cross loader under -L must load the cross glibc beside it: without LD_LIBRARY_PATH it finds
# the arm64 multiarch libc.so.6 (another build, pulled in by libstd-rust-web) through the host's
# ld.so.cache, and the mismatched pair spins forever in the first pthread_create.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib"

cd "$root"
run() {
  /usr/bin/cargo test -p tokenfab-backend --target "$target" --target-dir target/aarch64 "$@"
}
status=0
echo "== qemu default CPU (NEON + dotprod)" >&2
run "$@" || status=$?
if [[ $status == 0 ]]; then
  echo "== qemu cortex-a72 (NEON, no dotprod)" >&2
  QEMU_CPU=cortex-a72 run "$@" || status=$?
fi
echo "test-aarch64: $([[ $status == 0 ]] && echo ok || echo FAILED) in $(($(date +%s) - start)) s" >&2
exit "$status"
