//! AFL++ entry point of the `traceparent` target (see `appsignal_fuzz::traceparent`). Build and run with `fuzz/run.sh`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        appsignal_fuzz::traceparent(data);
    });
}
