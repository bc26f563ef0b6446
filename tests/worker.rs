//! A worker process for the integration tests (a bin target, so that cargo rebuilds it for them): loads libappsignal.so and obeys stdin commands
//! (see `testkit/src/worker.rs`). Usage: `worker <index>`; configuration through `_APPSIGNAL_*` variables.

use testkit::worker;

fn main() {
    let index = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    worker::run(index);
}
