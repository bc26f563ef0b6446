//! AFL++ entry point of the `config` target (see `appsignal_fuzz::config`). Build and run with `fuzz/run.sh`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        appsignal_fuzz::config(data);
    });
}
