# Sourced by examples/*/run.sh: messages, the missing-tool policy, and finding (or building)
# libappsignal.so and the reference receiver. Needs ROOT (the repository) and INSTALL_HINT (the apt
# line for this example's tools). Honours APPSIGNAL_LIB_DIR and
# RECEIVER_BIN (both given: nothing is built, as when cargo test runs the scripts), CARGO_TARGET_DIR
# and APPSIGNAL_REBUILD=1. Sets TARGET_DIR, LIB_DIR and RECEIVER; locate_otlp_python sets OTLP_PYTHON.

say() { printf '==> %s\n' "$*"; }
die() { printf 'run.sh: error: %s\n' "$*" >&2; exit 1; }

# Missing tools fail the run when CI is set (never a silent skip there), else skip it.
unavailable() {
  local msg="missing: $* ($INSTALL_HINT)"
  if [ -n "${CI:-}" ]; then
    die "$msg; CI is set, so this is a failure, not a skip"
  fi
  printf 'run.sh: SKIPPED: %s\n' "$msg" >&2
  exit 0
}

locate_library() {
  TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  # Relative to the current directory, as cargo reads it.
  TARGET_DIR=$(realpath -m -- "$TARGET_DIR")
  LIB_DIR=${APPSIGNAL_LIB_DIR:-$(find_lib_dir || true)}
  RECEIVER=${RECEIVER_BIN:-$TARGET_DIR/release/examples/receiver}
  if [ "${APPSIGNAL_REBUILD:-0}" = 1 ] || [ -z "$LIB_DIR" ] || [ ! -x "$RECEIVER" ]; then
    command -v cargo >/dev/null 2>&1 || die "libappsignal is not built and cargo is missing"
    say "building libappsignal and the receiver (cargo build --release -p appsignal-testkit --example receiver)"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p appsignal-testkit --example receiver)
    LIB_DIR=${APPSIGNAL_LIB_DIR:-$(find_lib_dir)} || die "libappsignal.so not found under $TARGET_DIR/release"
  fi
  [ -f "$LIB_DIR/libappsignal.so" ] || die "no libappsignal.so in $LIB_DIR"
  [ -x "$RECEIVER" ] || die "no receiver at $RECEIVER"
  link_soname
  say "library $LIB_DIR/libappsignal.so, receiver $RECEIVER"
}

find_lib_dir() {
  # deps/ first: cargo refreshes the library there without always copying it up.
  for d in "$TARGET_DIR/release/deps" "$TARGET_DIR/release"; do
    [ -f "$d/libappsignal.so" ] && { echo "$d"; return 0; }
  done
  return 1
}

# A program linked with -lappsignal asks for the library's soname (libappsignal.so.0) at run time:
# an installed library has that link (make install); a build directory gets it here.
link_soname() {
  local soname
  soname=$(readelf -d "$LIB_DIR/libappsignal.so" 2>/dev/null | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
  [ -z "$soname" ] || [ -e "$LIB_DIR/$soname" ] || ln -s libappsignal.so "$LIB_DIR/$soname" 2>/dev/null || true
}

# The Python that runs examples/otlp_receiver.py, found as testkit/src/otlp_receiver.rs finds it:
# $APPSIGNAL_OTLP_PYTHON, else <repo>/.venv/bin/python, else <repo>/target/otlp-venv/bin/python (the
# virtualenv `cargo test` makes), else python3, the first that imports the official
# opentelemetry-proto classes. None: `unavailable` (fails under CI, skips elsewhere).
locate_otlp_python() {
  local candidate
  for candidate in "${APPSIGNAL_OTLP_PYTHON:-}" "$ROOT/.venv/bin/python" "$ROOT/target/otlp-venv/bin/python" python3; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c 'import opentelemetry.proto.collector.metrics.v1.metrics_service_pb2' >/dev/null 2>&1; then
      OTLP_PYTHON=$candidate
      return 0
    fi
  done
  INSTALL_HINT="cargo test --test otlp (makes $ROOT/target/otlp-venv); or python3 -m venv $ROOT/.venv && $ROOT/.venv/bin/pip install opentelemetry-proto; or set APPSIGNAL_OTLP_PYTHON"
  unavailable "a Python with opentelemetry-proto for examples/otlp_receiver.py"
}
