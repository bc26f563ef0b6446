#!/usr/bin/env bash
# `make dist`: one archive per platform in dist/, and dist/SHA256SUMS.
#
#   scripts/dist/build.sh [TARGET…]     (default: all six; `make dist-deps` installs the tools)
#   DIST_PACKAGE_ONLY=1 scripts/dist/build.sh [TARGET…]   # repackages what target/dist holds, no cargo
#
# Every target is built by cargo-zigbuild (Zig as the C compiler and linker) into target/dist/, a
# target directory of its own so that `make dist` never waits on the tests' build lock:
#   *-linux-gnu     linked against Zig's glibc 2.17 stubs, so the .so needs no symbol version above
#                   GLIBC_2.17 (RHEL/CentOS 7 and everything newer)
#   *-linux-musl    built with -crt-static, so that cargo makes the shared library too; the static
#                   library is the same code and is what Alpine builds of the language packages link
#   *-apple-darwin  macOS 11 (MACOSX_DEPLOYMENT_TARGET), linked against libSystem alone
# Each archive is flat: libappsignal.so and its soname link libappsignal.so.0 (libappsignal.dylib
# on macOS), libappsignal.a, appsignal.h, appsignal.pc, appsignal.version, LICENSE,
# THIRD-PARTY-LICENSES and appsignal-agent (see the README, "Platforms and release archives").
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"

ALL_TARGETS="x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu x86_64-unknown-linux-musl aarch64-unknown-linux-musl x86_64-apple-darwin aarch64-apple-darwin"
TARGETS="${*:-$ALL_TARGETS}"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
MAJOR=${VERSION%%.*}
COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then COMMIT="$COMMIT-dirty"; fi
# Reproducible archives: file times from the commit, not from the build.
EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
OUT="$ROOT/dist"
export CARGO_TARGET_DIR="$ROOT/target/dist"
export MACOSX_DEPLOYMENT_TARGET=11.0
# Shared libraries for musl: Rust builds no cdylib while crt-static is on (the musl default).
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=-crt-static"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=-crt-static"

# What a C program links besides libappsignal.a (`rustc --print native-static-libs`, less what the
# C compiler adds by itself). The unwinder: on glibc, gcc's (libgcc_s, or libgcc_eh with
# -static-libgcc); on musl, LLVM's libunwind (Alpine: apk add libunwind-static, or gcc's
# libgcc_eh, which `gcc -static` links anyway); on macOS it is in libSystem.
libs_private() {
  case "$1" in
    *-linux-gnu) echo "-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc" ;;
    *-linux-musl) echo "-lunwind -lc" ;;
    *-apple-darwin) echo "-lSystem -lc -lm" ;;
  esac
}

mkdir -p "$OUT"
for target in $TARGETS; do
  started=$(date +%s)
  case "$target" in
    *-linux-gnu) zig_target="$target.2.17" ;;
    *) zig_target="$target" ;;
  esac
  if [ -z "${DIST_PACKAGE_ONLY:-}" ]; then
    echo "== $target: cargo zigbuild --release -p appsignal-ffi --target $zig_target" >&2
    cargo zigbuild --release --locked -q -p appsignal-ffi --target "$zig_target"
  fi
  built="$CARGO_TARGET_DIR/$target/release"

  stage="$OUT/stage/$target"
  rm -rf "$stage"
  mkdir -p "$stage"
  files=()
  case "$target" in
    *-apple-darwin)
      cp "$built/libappsignal.dylib" "$stage/"
      files+=(libappsignal.dylib) ;;
    *)
      cp "$built/libappsignal.so" "$stage/"
      ln -s libappsignal.so "$stage/libappsignal.so.$MAJOR"
      files+=(libappsignal.so "libappsignal.so.$MAJOR") ;;
  esac
  cp "$built/libappsignal.a" "$stage/"
  cp appsignal.h LICENSE scripts/dist/appsignal-agent "$stage/"
  printf 'version=%s\ncommit=%s\ntarget=%s\n' "$VERSION" "$COMMIT" "$target" > "$stage/appsignal.version"
  sed -e "s|@VERSION@|$VERSION|g" -e "s|@TARGET@|$target|g" -e "s|@LIBS_PRIVATE@|$(libs_private "$target")|g" \
    scripts/dist/appsignal.pc.in > "$stage/appsignal.pc"
  python3 scripts/dist/licenses.py "$target" > "$stage/THIRD-PARTY-LICENSES"
  files+=(libappsignal.a appsignal.h appsignal.pc appsignal.version LICENSE THIRD-PARTY-LICENSES appsignal-agent)

  archive="libappsignal-$VERSION-$target.tar.gz"
  tar -C "$stage" --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" -cf - "${files[@]}" | gzip -n -9 > "$OUT/$archive"
  echo "== $target: dist/$archive ($(stat -c %s "$OUT/$archive") bytes, $(( $(date +%s) - started )) s)" >&2
done

# Checksums of every archive present (from earlier runs for other targets too).
(cd "$OUT" && sha256sum libappsignal-*.tar.gz > SHA256SUMS)
echo "== dist/SHA256SUMS:" >&2
cat "$OUT/SHA256SUMS" >&2
