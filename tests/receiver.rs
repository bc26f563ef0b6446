//! The reference receiver as a bin target, so that `cargo test` builds it for the tests that drive
//! the Ruby and Elixir examples (see `examples/receiver.rs` for the same program as an example).

use testkit::receiver;

fn main() -> anyhow::Result<()> {
    receiver::run_cli()
}
