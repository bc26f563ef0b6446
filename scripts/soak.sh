#!/usr/bin/env bash
# The soak run (not in CI): 8 processes, the leader SIGKILLed every 30 s, RSS and open descriptors
# of each sampled every 10 s, for 30 minutes by default; totals checked exactly at the end.
# Arguments go to examples/soak.rs, e.g. `scripts/soak.sh --minutes 10 --kill-every 20`.
# The per-minute table is printed at the end; every sample is in target/soak.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p appsignal-ffi
cargo build --release -q -p appsignal-testkit --example soak
exec target/release/examples/soak --csv target/soak.csv "$@"
