//! AFL++ entry point of the `frame` target (see `appsignal_fuzz::frame`). Build and run with `fuzz/run.sh`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        appsignal_fuzz::frame(data);
    });
}
