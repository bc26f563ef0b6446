//! The reference Push API receiver as a program:
//! `cargo run --example receiver -- [--listen 127.0.0.1:8099] [--key KEY] [--dir DIR]`.
//! Prints its URL, then serves until interrupted. `GET /summary` gives the totals.

#[path = "common/receiver.rs"]
mod receiver;

fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:8099".to_owned();
    let mut key = "demo-key".to_owned();
    let mut dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--key" => key = args.next().unwrap_or(key),
            "--dir" => dir = args.next().map(std::path::PathBuf::from),
            other => anyhow::bail!("unknown argument {other:?}; expected --listen, --key, --dir"),
        }
    }
    let receiver = receiver::Receiver::bind(&listen, &key, dir)?;
    println!(
        "receiver listening on {} (push key {key:?}); GET {}/summary for totals",
        receiver.url, receiver.url
    );
    loop {
        std::thread::park();
    }
}
