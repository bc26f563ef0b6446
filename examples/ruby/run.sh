#!/usr/bin/env bash
# The Ruby example end to end: builds libappsignal (if missing) and the C extension, starts the
# reference Push API receiver, runs the Rack app under Puma (cluster, 4 workers, agent started in
# each worker) and then Unicorn (4 workers, agent started once in the master and inherited across
# fork; the master then hands the leadership to a worker), sends a known number of requests,
# SIGKILLs the leader worker midway (between two batches, once it is idle), sends the second batch,
# stops the server gracefully, and checks that the receiver's totals equal exactly what was sent.
# Before the servers, app/shapes.rb reads back transaction_to_json, span_to_json and diagnose the
# way the AppSignal gem parses them and checks every field the language packages read.
#
#   bash examples/ruby/run.sh [puma] [unicorn]      (default: both; the shapes check always runs)
#   bash examples/ruby/run.sh shapes                (only the shapes check)
#   bash examples/ruby/run.sh otlp [puma|unicorn]   (the OTLP exporter: _APPSIGNAL_EXPORTER=otlp and no
#                                                   push key, against examples/otlp_receiver.py, which
#                                                   parses every request with the official
#                                                   opentelemetry-proto classes; default: one Puma
#                                                   pass; no shapes check)
#
# Environment: CARGO_TARGET_DIR (where the library is built; default <repo>/target),
# APPSIGNAL_REBUILD=1 (run cargo build even if the library exists), APPSIGNAL_LIB_DIR / RECEIVER_BIN
# (use these instead), OK_REQUESTS / ERROR_REQUESTS / WORK_REQUESTS / WORK_N / CLIENT_THREADS
# (see app/drive.rb), KEEP_TMP=1 (keep the temporary directory), CI (missing tools fail instead
# of skipping), KILL_LEADER=0 (do not SIGKILL the leader worker midway; it is on by default),
# EXPORTER=otlp (the same as the `otlp` argument), APPSIGNAL_OTLP_PYTHON (the Python with
# opentelemetry-proto; else <repo>/.venv/bin/python, else python3).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SERVERS=()
EXPORTER=${EXPORTER:-push}
SHAPES=1
for arg in "$@"; do
  case "$arg" in
    shapes) ;;
    otlp) EXPORTER=otlp ;;
    *) SERVERS+=("$arg") ;;
  esac
done
case "$EXPORTER" in
  push) [ $# -gt 0 ] || SERVERS=(puma unicorn) ;;
  # One Puma pass is the OTLP check (the exporter sits behind the same windows and journal as the
  # push API, so the fork patterns are the push passes' concern); the shapes do not depend on it.
  otlp) SHAPES=0; [ ${#SERVERS[@]} -gt 0 ] || SERVERS=(puma) ;;
  *) printf 'run.sh: error: EXPORTER=%s: push or otlp\n' "$EXPORTER" >&2; exit 1 ;;
esac
KEY="ruby-example-key-$$"
# OTLP mode: a header the exporter sends with every request; its value must never reach the log.
OTLP_SECRET="ruby-example-otlp-secret-$$"

INSTALL_HINT="apt-get install -y ruby ruby-dev puma ruby-rack unicorn build-essential"
# shellcheck source=../common/library.sh
. "$ROOT/examples/common/library.sh"

# ---- tools ---------------------------------------------------------------------------------------
need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] || unavailable "${missing[*]}"
}
need ruby make cc "${SERVERS[@]}"
for s in "${SERVERS[@]}"; do
  case "$s" in puma | unicorn) ;; *) die "unknown server '$s' (puma or unicorn)" ;; esac
done
[ ${#SERVERS[@]} -eq 0 ] || ruby -e 'require "rack"' 2>/dev/null || unavailable "the Ruby library rack"
ruby -rrbconfig -e 'exit File.exist?(File.join(RbConfig::CONFIG["rubyhdrdir"], "ruby.h"))' ||
  unavailable "ruby.h (package ruby-dev)"

# ---- the library and the receiver ----------------------------------------------------------------
locate_library
[ "$EXPORTER" != otlp ] || locate_otlp_python

# ---- the extension -------------------------------------------------------------------------------
EXT_BUILD="$HERE/build/ext"
rm -rf "$EXT_BUILD" && mkdir -p "$EXT_BUILD"
say "building the C extension in $EXT_BUILD"
if ! (cd "$EXT_BUILD" &&
  APPSIGNAL_INCLUDE="$ROOT" APPSIGNAL_LIB_DIR="$LIB_DIR" ruby "$HERE/ext/appsignal_ext/extconf.rb" &&
  make) >"$EXT_BUILD/build.log" 2>&1; then
  cat "$EXT_BUILD/build.log" >&2
  [ -f "$EXT_BUILD/mkmf.log" ] && cat "$EXT_BUILD/mkmf.log" >&2
  die "building the extension failed"
fi
export APPSIGNAL_EXT_DIR="$EXT_BUILD"

# ---- the returned documents, read back as the gem reads them --------------------------------------
if [ "$SHAPES" = 1 ]; then
  SHAPES_TMP=$(mktemp -d "${TMPDIR:-/tmp}/appsignal-ruby-shapes.XXXXXX")
  say "shapes: transaction_to_json, span_to_json and diagnose, parsed as the gem parses them"
  if ! ruby "$HERE/app/shapes.rb" "$SHAPES_TMP"; then
    tail -n 20 "$SHAPES_TMP/appsignal.log" >&2 || true
    die "the returned documents differ from what the language packages read (kept in $SHAPES_TMP)"
  fi
  rm -rf "$SHAPES_TMP"
fi

# ---- processes we start, and their cleanup -------------------------------------------------------
RECEIVER_PID=""
SERVER_PID=""
TMP=""
cleanup() {
  local rc=$?
  for pid in $SERVER_PID $RECEIVER_PID; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ -n "$TMP" ]; then
    if [ $rc -ne 0 ] || [ "${KEEP_TMP:-0}" = 1 ]; then
      printf 'run.sh: logs kept in %s\n' "$TMP" >&2
    else
      rm -rf "$TMP"
    fi
  fi
}
trap cleanup EXIT

# Whether `pid` (a child of this shell) has exited; a zombie counts as exited.
exited() {
  local state
  kill -0 "$1" 2>/dev/null || return 0
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || echo Z)
  [ "$state" = Z ]
}

# Waits at most $2 seconds for `pid` to exit; returns its exit status.
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  until exited "$pid"; do
    [ $SECONDS -lt $deadline ] || return 124
    sleep 0.05
  done
  local rc=0
  wait "$pid" || rc=$?
  return $rc
}

free_port() {
  ruby -rsocket -e 's = TCPServer.new("127.0.0.1", 0); print s.addr[1]; s.close'
}

# The reference Push API receiver, or with EXPORTER=otlp examples/otlp_receiver.py (its first line
# is {"listening": "http://127.0.0.1:PORT"}). Sets RECEIVER_URL.
start_receiver() {
  if [ "$EXPORTER" = otlp ]; then
    "$OTLP_PYTHON" "$ROOT/examples/otlp_receiver.py" --port 0 >"$TMP/receiver.log" 2>&1 &
  else
    "$RECEIVER" --listen 127.0.0.1:0 --key "$KEY" --dir "$TMP/received" >"$TMP/receiver.log" 2>&1 &
  fi
  RECEIVER_PID=$!
  local deadline=$((SECONDS + 20))
  RECEIVER_URL=""
  until [ -n "$RECEIVER_URL" ]; do
    RECEIVER_URL=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$TMP/receiver.log" | head -n1 || true)
    exited "$RECEIVER_PID" && { cat "$TMP/receiver.log" >&2; die "the receiver exited"; }
    [ $SECONDS -lt $deadline ] || die "the receiver printed no URL within 20 s"
    [ -n "$RECEIVER_URL" ] || sleep 0.05
  done
}

# ---- one pass per server -------------------------------------------------------------------------
run_server() {
  local server=$1 t0
  t0=$(date +%s.%N)
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/appsignal-ruby-$server.XXXXXX")
  mkdir -p "$TMP/state" "$TMP/received"
  start_receiver
  local port
  port=$(free_port)
  if [ "$EXPORTER" = otlp ]; then
    say "$server: OTLP receiver $RECEIVER_URL ($OTLP_PYTHON), _APPSIGNAL_EXPORTER=otlp, no push key; app on 127.0.0.1:$port, working directory $TMP/wd"
    export EXAMPLE_EXPORTER=otlp EXAMPLE_OTLP_ENDPOINT="$RECEIVER_URL"
    export EXAMPLE_OTLP_HEADERS="x-example-api-key=$OTLP_SECRET"
    unset EXAMPLE_PUSH_API_KEY EXAMPLE_PUSH_API_ENDPOINT
  else
    say "$server: receiver $RECEIVER_URL, app on 127.0.0.1:$port, working directory $TMP/wd"
    export EXAMPLE_EXPORTER=push EXAMPLE_PUSH_API_KEY="$KEY" EXAMPLE_PUSH_API_ENDPOINT="$RECEIVER_URL"
  fi
  export EXAMPLE_WORKING_DIRECTORY="$TMP/wd" EXAMPLE_STATE_DIR="$TMP/state" PORT="$port"
  local stop_signal
  case "$server" in
    puma)
      (cd "$HERE/app" && exec puma -C puma.rb config.ru) >"$TMP/server.log" 2>&1 &
      stop_signal=TERM
      ;;
    unicorn)
      (cd "$HERE/app" && exec unicorn -c unicorn.rb -E production config.ru) >"$TMP/server.log" 2>&1 &
      stop_signal=QUIT
      ;;
  esac
  SERVER_PID=$!

  ruby "$HERE/app/drive.rb" wait "http://127.0.0.1:$port/ping" "$SERVER_PID" 60 ||
    { tail -n 50 "$TMP/server.log" >&2; die "$server did not come up"; }
  local workers=${WEB_CONCURRENCY:-4}
  case "$server" in
    puma)
      say "$server: roles (each worker started the agent after fork; they elected one leader)"
      ruby "$HERE/app/drive.rb" roles "$TMP/state" "$server" "$workers" 30 ||
        { tail -n 50 "$TMP/server.log" >&2; die "$server: election"; }
      ;;
    unicorn)
      say "$server: roles (the master started the agent before forking and leads; the workers inherited it)"
      ruby "$HERE/app/drive.rb" roles "$TMP/state" "$server" "$workers" 30 all-clients ||
        { tail -n 50 "$TMP/server.log" >&2; die "$server: roles after fork"; }
      ruby "$HERE/app/drive.rb" handover "$TMP/wd" "$TMP/state" "$server" 30 ||
        { tail -n 50 "$TMP/server.log" >&2; tail -n 30 "$TMP/wd/appsignal.log" >&2 || true; die "$server: hand-over"; }
      ;;
  esac

  ruby "$HERE/app/drive.rb" send "http://127.0.0.1:$port" "$TMP/expected.json"

  # ---- KILL_LEADER (on by default) ----
  # Between two batches of requests (none in flight), once the leader worker is idle (everything it
  # recorded is journaled: a killed process loses only its unflushed pre-aggregate), SIGKILL it; a
  # client takes over and replays the journal, clients resend what was not acknowledged, the server
  # forks a replacement worker; then the second batch. Every request must still be counted once.
  if [ "${KILL_LEADER:-1}" != 0 ]; then
    say "$server: killing the leader worker between two batches"
    ruby "$HERE/app/drive.rb" kill-leader "http://127.0.0.1:$port" "$TMP/wd" "$TMP/state" "$server" "$workers" 30 ||
      { tail -n 50 "$TMP/server.log" >&2; tail -n 30 "$TMP/wd/appsignal.log" >&2 || true; die "$server: leader kill"; }
    ruby "$HERE/app/drive.rb" send "http://127.0.0.1:$port" "$TMP/expected.json"
  fi

  say "$server: stopping (SIG$stop_signal) and waiting for it to exit"
  kill "-$stop_signal" "$SERVER_PID"
  local rc=0
  wait_exit "$SERVER_PID" 60 || rc=$?
  SERVER_PID=""
  [ $rc -ne 124 ] || die "$server did not exit within 60 s after SIG$stop_signal"
  # Puma re-raises SIGTERM after its graceful shutdown (status 143 = 128 + 15); unicorn exits 0.
  [ $rc -eq 0 ] || { [ "$server" = puma ] && [ $rc -eq 143 ]; } ||
    { tail -n 50 "$TMP/server.log" >&2; die "$server exited with status $rc"; }
  # Allowed: the app's own /error, and Unicorn reporting the worker we SIGKILLed.
  if grep -E -i 'error|exception' "$TMP/server.log" | grep -v -i -E 'boom \(on purpose\)|reaped .*SIGKILL' >/dev/null; then
    grep -E -i 'error|exception' "$TMP/server.log" | grep -v -i -E 'boom \(on purpose\)|reaped .*SIGKILL' | head -n 20 >&2
    die "$server logged errors (see $TMP/server.log)"
  fi

  # Every process stopped at once (SIGTERM/SIGQUIT reach all workers together). A leader that stops
  # while clients are connected hands over: it leaves its journal for "the next leader". When those
  # clients were stopping too, nobody takes it over and the journal waits for the next start in this
  # working directory (a library race, see the README). The next deploy would push it; here a
  # one-shot process plays that next start, loudly. STRICT_JOURNAL=1 fails instead.
  local segments
  segments=$(find "$TMP/wd/journal" -name '*.seg' 2>/dev/null | wc -l)
  if [ "$segments" -gt 0 ]; then
    [ "${STRICT_JOURNAL:-0}" != 1 ] ||
      die "$server: $segments journal segment(s) left after every process stopped (STRICT_JOURNAL=1)"
    printf 'run.sh: WARNING: %s journal segment(s) left after every process stopped (the leader handed over to clients that were stopping too); a one-shot start in %s pushes them\n' \
      "$segments" "$TMP/wd" >&2
    (cd "$HERE/app" && ruby -r ./boot.rb -e \
      'AppsignalExample.start(ExampleBoot.config); r = AppsignalExample.await_role; AppsignalExample.stop; puts "  one-shot process #{Process.pid}: #{r}, stopped"')
  fi

  say "$server: polling $RECEIVER_URL/summary until the totals equal what was sent"
  ruby "$HERE/app/drive.rb" check "$RECEIVER_URL" "$TMP/expected.json" 20 ||
    { tail -n 30 "$TMP/wd/appsignal.log" >&2 || true; die "$server: totals differ"; }
  if [ "$EXPORTER" = otlp ]; then
    # The leaders exported with the OTLP exporter only, and the header value stayed out of the log.
    grep -q 'exporting every .* to OTLP at' "$TMP/wd/appsignal.log" ||
      die "$server: no leader said it exports to OTLP (see $TMP/wd/appsignal.log)"
    ! grep -q 'sent push payload' "$TMP/wd/appsignal.log" ||
      die "$server: a leader pushed to the Push API with _APPSIGNAL_EXPORTER=otlp"
    ! grep -q -F "$OTLP_SECRET" "$TMP/wd/appsignal.log" ||
      die "$server: appsignal.log contains the value of an OTLP header"
  fi

  kill -TERM "$RECEIVER_PID" 2>/dev/null || true
  wait_exit "$RECEIVER_PID" 10 >/dev/null 2>&1 || true
  RECEIVER_PID=""
  if [ "${KEEP_TMP:-0}" = 1 ]; then printf 'run.sh: kept %s\n' "$TMP"; else rm -rf "$TMP"; fi
  TMP=""
  say "$server: passed in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
}

for server in "${SERVERS[@]}"; do
  run_server "$server"
done
if [ "$EXPORTER" = otlp ]; then
  say "all passed: ${SERVERS[*]} with the OTLP exporter"
else
  say "all passed: shapes ${SERVERS[*]}"
fi
