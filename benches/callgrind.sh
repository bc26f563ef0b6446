#!/usr/bin/env bash
# Instructions per call on the app thread, one line per row of the table in docs/benchmarks.md.
#
# Builds the `callgrind` bench target (release, like every bench), runs each row's loop under
# valgrind's callgrind collecting only inside that row's function (`--toggle-collect`: agent
# start-up, the sender thread and the leader are not counted) and divides by the number of calls.
# Instruction counts barely move between runs or machines of one architecture, unlike times.
#
#   benches/callgrind.sh                  # every row, 20,000 calls each (2,000 for transactions)
#   benches/callgrind.sh counter_prebuilt # one row
#   CALLS=50000 benches/callgrind.sh      # more calls per row
#   CALLGRIND_EXE=path benches/callgrind.sh # a harness built before (e.g. of another commit)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }

exe=${CALLGRIND_EXE:-}
[ -n "$exe" ] || exe=$(cargo bench -p appsignal-testkit --bench callgrind --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "callgrind" and m.get("executable"):
        print(m["executable"])')
[ -n "$exe" ] || { echo "could not build the callgrind bench" >&2; exit 1; }

rows=("$@")
if [ ${#rows[@]} -eq 0 ]; then
  rows=(counter_prebuilt counter_per_call distribution_prebuilt transaction_10_sql
        transaction_10_sql_sampled otel_counter otel_histogram otel_10_spans
        metrics_crate_counter metrics_crate_histogram)
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '%-28s %12s %10s\n' row calls instr/call
for row in "${rows[@]}"; do
  case $row in
    transaction*|otel_10_spans) calls=${CALLS:-2000} ;;
    *) calls=$((${CALLS:-20000})) ;;
  esac
  valgrind --tool=callgrind --callgrind-out-file="$out/$row.out" \
    --toggle-collect="*row_${row}*" "$exe" "$row" "$calls" >"$out/$row.log" 2>&1 || {
    echo "$row failed:" >&2; tail -20 "$out/$row.log" >&2; exit 1; }
  total=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out/$row.out" | tail -1)
  [ -n "$total" ] || total=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$out/$row.out" | tail -1)
  printf '%-28s %12d %10d\n' "$row" "$calls" $((total / calls))
done
