//! AFL++ entry point of the `sql` target (see `appsignal_fuzz::sql`). Build and run with `fuzz/run.sh`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        appsignal_fuzz::sql(data);
    });
}
