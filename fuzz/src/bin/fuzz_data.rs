//! AFL++ entry point of the `data` target (see `appsignal_fuzz::data`). Build and run with `fuzz/run.sh`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        appsignal_fuzz::data(data);
    });
}
