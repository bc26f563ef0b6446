#!/usr/bin/env bash
# The Elixir example end to end: builds libappsignal and the receiver (if missing), then
# `MIX_ENV=test mix test`, which builds the NIF (the project's own Mix compiler runs make in c_src/)
# and starts several BEAM OS processes sharing one working directory against the reference receiver
# (instrumented jobs as root spans; one test SIGKILLs the leader VM between two rounds).
#
#   bash examples/elixir/run.sh [mix test arguments…]
#   bash examples/elixir/run.sh otlp [mix test arguments…]
#       only the OTLP test (mix test --only otlp): the leader-SIGKILL run with _APPSIGNAL_EXPORTER=otlp
#       and no push key (passed with appsignal_env_put like all configuration) against
#       examples/otlp_receiver.py, which parses every request with the official opentelemetry-proto
#       classes. The default run excludes it.
#
# Environment: CARGO_TARGET_DIR (where the library is built; default <repo>/target),
# APPSIGNAL_REBUILD=1 (run cargo build even if the library exists), APPSIGNAL_LIB_DIR / RECEIVER_BIN
# (use these instead), WORKERS (BEAM processes per test, default 3), RECORDS (per worker and round,
# default 500), KEEP_TMP=1, CI (a missing elixir fails instead of skipping), EXPORTER=otlp (the same
# as the `otlp` argument), APPSIGNAL_OTLP_PYTHON (the Python with opentelemetry-proto; else
# <repo>/.venv/bin/python, else python3).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EXPORTER=${EXPORTER:-push}
if [ "${1:-}" = otlp ]; then
  EXPORTER=otlp
  shift
fi

INSTALL_HINT="apt-get install -y elixir erlang-dev erlang-nox build-essential"
# shellcheck source=../common/library.sh
. "$ROOT/examples/common/library.sh"

missing=()
for tool in elixir mix erl make cc; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] || unavailable "${missing[*]}"
erl_include=$(erl -noshell -eval 'io:format("~s", [code:root_dir()])' -s init stop)
compgen -G "$erl_include/usr/include/erl_nif.h" >/dev/null ||
  compgen -G "$erl_include/erts-*/include/erl_nif.h" >/dev/null ||
  unavailable "erl_nif.h (package erlang-dev)"

# ---- the library and the receiver ----------------------------------------------------------------
locate_library
MIX_ARGS=()
case "$EXPORTER" in
  push) ;;
  otlp)
    locate_otlp_python
    export APPSIGNAL_OTLP_PYTHON="$OTLP_PYTHON"
    MIX_ARGS=(--only otlp)
    say "OTLP: the tests tagged otlp, receiver examples/otlp_receiver.py run by $OTLP_PYTHON"
    ;;
  *) die "EXPORTER=$EXPORTER: push or otlp" ;;
esac
say "$(elixir --version | tail -n1), $(erl -noshell -eval 'io:format("OTP ~s", [erlang:system_info(otp_release)])' -s init stop)"

# ---- mix test ------------------------------------------------------------------------------------
cd "$HERE"
export MIX_ENV=test APPSIGNAL_LIB_DIR="$LIB_DIR" APPSIGNAL_INCLUDE="$ROOT" RECEIVER_BIN="$RECEIVER"
# No Hex: the project has no dependencies, and nothing may be fetched.
export MIX_OFFLINE=1 HEX_OFFLINE=1
started=$(date +%s.%N)
mix test ${MIX_ARGS[@]+"${MIX_ARGS[@]}"} "$@"
say "passed in $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
