//! A worker process for the integration tests: loads libappsignal.so and obeys stdin commands
//! (see `common/worker.rs`). Usage: `worker <index>`; configuration through `_APPSIGNAL_*` variables.

#[path = "common/worker.rs"]
mod worker;

fn main() {
    let index = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    worker::run(index);
}
