#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers (fuzz/src/lib.rs) with AFL++ through cargo-afl, on the
# toolchain rust-toolchain.toml pins (a stable release; no nightly). See docs/robustness.md, "Fuzzing".
#
#   fuzz/run.sh --ci                    every target for FUZZ_SECONDS (default 15) s; exit 1 on a crash or hang
#   fuzz/run.sh --execs 10000000 sql    one target until ~10 million executions
#   fuzz/run.sh --execs 10000000 --seconds 1800 frame   … or 30 minutes, whichever comes first
#   fuzz/run.sh --resume --execs 10000000 sql   go on from target/fuzz/sql (executions add up)
#   fuzz/run.sh --seconds 600 frame data
#   fuzz/run.sh --max-len 4096 --execs 10000000 data   inputs of at most 4096 bytes (AFL's -G)
#
# Installs cargo-afl (and builds its AFL++) when missing. Output: $FUZZ_OUT_DIR/<target>/ (default
# target/fuzz: AFL's queue, crashes/, hangs/, fuzzer_stats) and one summary line per target. A crash file reproduces
# with `fuzz/run.sh --repro <target> <file>`; copied into fuzz/regressions/<target>/ it is replayed
# by `cargo test -p appsignal-fuzz` from then on.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(frame traceparent sql data config otlp_traces)
mode=seconds
seconds=${FUZZ_SECONDS:-15}
execs=
cap=
resume=
max_len=()
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) mode=seconds ;;
    --seconds) [ "$mode" = execs ] || mode=seconds; seconds=$2; cap=1; shift ;;
    --execs) mode=execs; execs=$2; shift ;;
    --repro) mode=repro ;;
    --resume) resume=1 ;;
    --max-len) max_len=(-G "$2"); shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) targets+=("$1") ;;
  esac
  shift
done

export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target/afl}
bin_dir=$CARGO_TARGET_DIR/fuzz

if ! cargo afl --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-afl" >&2
  cargo install --locked cargo-afl >&2
fi
# Builds AFL++ and its LLVM runtime once per toolchain (a no-op, with a complaint, when already built).
cargo afl config --build >/dev/null 2>&1 || true
cargo afl build --profile fuzz -q -p appsignal-fuzz --features afl --bins

if [ "$mode" = repro ]; then
  [ ${#targets[@]} -eq 2 ] || { echo "usage: fuzz/run.sh --repro <target> <file>" >&2; exit 2; }
  exec "$bin_dir/fuzz_${targets[0]}" < "${targets[1]}"
fi

[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

# AFL++ on a shared machine: no CPU pinning, no CPU-governor or core-pattern checks, no curses UI.
export AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
export AFL_QUIET=1
if [ "$mode" = seconds ]; then
  # Stop at the first crash: the run has failed anyway.
  export AFL_BENCH_UNTIL_CRASH=1
fi

stat() { sed -n "s/^$2 *: *//p" "$1/default/fuzzer_stats" 2>/dev/null | head -1; }
count() { find "$1" -maxdepth 1 -type f -name 'id:*' 2>/dev/null | wc -l; }

out_dir=${FUZZ_OUT_DIR:-target/fuzz}
passed=0
failed=0
for target in "${targets[@]}"; do
  out=$out_dir/$target
  input=(-i "fuzz/corpus/$target")
  if [ -n "$resume" ] && [ -f "$out/default/fuzzer_stats" ]; then
    input=(-i -)
  else
    rm -rf "$out"
    mkdir -p "$out"
  fi
  limit=(-V "$seconds")
  if [ "$mode" = execs ]; then
    limit=(-E "$execs")
    [ -n "$cap" ] && limit+=(-V "$seconds")
  fi
  started=$(date +%s)
  # -t: a run that takes over 2 s is a hang (AFL retries it with a longer timeout before saving it).
  if ! cargo afl fuzz "${input[@]}" -o "$out" -t 2000 "${max_len[@]}" "${limit[@]}" \
      "$bin_dir/fuzz_$target" >"$out/afl.log" 2>&1; then
    echo "fuzz: afl-fuzz failed for $target (see $out/afl.log):" >&2
    tail -20 "$out/afl.log" >&2
    failed=$((failed + 1))
    continue
  fi
  crashes=$(count "$out/default/crashes")
  hangs=$(count "$out/default/hangs")
  printf 'fuzz %-12s %12s execs in %5ss (%s/s), corpus %s, edges %s, crashes %s, hangs %s\n' \
    "$target" "$(stat "$out" execs_done)" "$(($(date +%s) - started))" "$(stat "$out" execs_per_sec)" \
    "$(stat "$out" corpus_count)" "$(stat "$out" edges_found)" "$crashes" "$hangs"
  if [ "$crashes" -gt 0 ] || [ "$hangs" -gt 0 ]; then
    for f in "$out"/default/crashes/id:* "$out"/default/hangs/id:*; do
      [ -f "$f" ] && echo "  reproduce: fuzz/run.sh --repro $target '$f'"
    done
    failed=$((failed + 1))
  else
    passed=$((passed + 1))
  fi
done

echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
