//! The reference Push API receiver as a program:
//! `cargo run --example receiver -- [--listen 127.0.0.1:8099] [--key KEY] [--dir DIR]`.
//! Prints its URL, then serves until interrupted. `GET /summary` gives the totals.

use testkit::receiver;

fn main() -> anyhow::Result<()> {
    receiver::run_cli()
}
