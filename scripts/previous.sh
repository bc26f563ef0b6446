#!/usr/bin/env bash
# `make previous`: the library of the previous release, for tests/upgrade.rs (processes of two
# releases sharing one working directory, as during a rolling deploy).
#
#   scripts/previous.sh [COMMIT]        (default: PREVIOUS_COMMIT below)
#
# Exports COMMIT with `git archive` into target/previous/src (the history must hold it: a full
# clone, not a shallow one) and builds there `cargo build --locked -p appsignal-ffi --features
# test-knobs` (the knob `_APPSIGNAL_TEST_LIBRARY_VERSION` lets the test give each side a version),
# in a target directory of its own, target/previous/target, so that it never waits on the tests'
# build lock. Leaves target/previous/libappsignal.so and target/previous/COMMIT (the full hash it
# was built from); when both are there for COMMIT, does nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

# The last commit that speaks protocol 2: the previous release's library.
PREVIOUS_COMMIT=a06f31b
REQUESTED="${1:-$PREVIOUS_COMMIT}"
OUT="$ROOT/target/previous"

if ! COMMIT=$(git rev-parse --verify --quiet "$REQUESTED^{commit}"); then
  echo "make previous: commit $REQUESTED is not in this repository's history (a shallow clone?);" >&2
  echo "fetch it (git fetch --unshallow) or work in a full clone" >&2
  exit 1
fi

if [ -f "$OUT/libappsignal.so" ] && [ "$(cat "$OUT/COMMIT" 2>/dev/null)" = "$COMMIT" ]; then
  echo "target/previous/libappsignal.so is built from $COMMIT already"
  exit 0
fi

rm -rf "$OUT/src" "$OUT/COMMIT" "$OUT/libappsignal.so"
mkdir -p "$OUT/src"
git archive --format=tar "$COMMIT" | tar -x -C "$OUT/src"
(cd "$OUT/src" && CARGO_TARGET_DIR="$OUT/target" cargo build --locked -q -p appsignal-ffi --features test-knobs)
cp "$OUT/target/debug/libappsignal.so" "$OUT/libappsignal.so.tmp"
mv "$OUT/libappsignal.so.tmp" "$OUT/libappsignal.so"
echo "$COMMIT" > "$OUT/COMMIT"
echo "target/previous/libappsignal.so built from $COMMIT"
