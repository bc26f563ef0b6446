#!/usr/bin/env bash
# `make dist-deps`: the tools `make dist` and its test (tests/dist.rs) need. Idempotent: each step
# is skipped when its tool is already there. apt-get runs only as root on a Debian-like system.
#
#   rustup targets      the Rust standard library for the six targets of `make dist`, for the
#                       toolchain rust-toolchain.toml pins (rustup also adds them when it installs it)
#   ziglang (PyPI)      Zig: one C compiler and linker for every target, with glibc 2.17 and
#                       macOS 11 libSystem stubs (cargo-zigbuild finds it as `python3 -m ziglang`)
#   cargo-zigbuild      cargo with Zig as the C compiler and linker (crates.io)
#   qemu-user           runs the aarch64 programs of tests/dist.rs (Debian)
#   libc6-arm64-cross   the aarch64 glibc those programs load under qemu (Debian)
#   gcc-aarch64-linux-gnu  builds the aarch64 programs and extension with gcc, as a language
#                       package's build does (Debian)
#   musl                the x86_64 musl dynamic loader, which runs a program against the musl .so (Debian)
#   llvm                llvm-nm and llvm-objdump, which read the macOS archives' Mach-O files (Debian)
set -euo pipefail
cd "$(dirname "$0")/../.."

ZIGLANG_VERSION=0.17.1
CARGO_ZIGBUILD_VERSION=0.24.1
TARGETS="aarch64-unknown-linux-gnu x86_64-unknown-linux-musl aarch64-unknown-linux-musl x86_64-apple-darwin aarch64-apple-darwin"

installed_targets=$(rustup target list --installed)
for t in $TARGETS; do
  grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done

if [ "$(python3 -m ziglang version 2>/dev/null)" != "$ZIGLANG_VERSION" ]; then
  python3 -m pip install -q "ziglang==$ZIGLANG_VERSION"
fi
echo "zig $(python3 -m ziglang version)"

if ! cargo-zigbuild --version 2>/dev/null | grep -q "$CARGO_ZIGBUILD_VERSION"; then
  cargo install --locked -q cargo-zigbuild --version "$CARGO_ZIGBUILD_VERSION"
fi
cargo-zigbuild --version

need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
[ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] || need+=(libc6-arm64-cross)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v llvm-objdump >/dev/null || need+=(llvm)
[ -e /lib/ld-musl-x86_64.so.1 ] || need+=(musl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "make dist-deps: install ${need[*]} (as root: apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
