//! AFL++ entry point of the `otlp_traces` target (see `appsignal_fuzz::otlp_traces`). Build and run with `fuzz/run.sh`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        appsignal_fuzz::otlp_traces(data);
    });
}
