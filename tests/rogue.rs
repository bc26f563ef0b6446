//! A rogue peer in a process of its own (a bin target, built by `cargo test`), for the tests that
//! need another pid than the test's. Usage:
//!
//! - `rogue hold SOCKET CLIENT_ID`: handshakes as CLIENT_ID, prints `welcome` or `closed`, then
//!   holds the connection until stdin closes;
//! - `rogue halfframes SOCKET N`: opens N connections, handshakes on each, sends all but the last
//!   byte of a 4 MiB frame on each, prints `sent`; when stdin closes, prints how many connections
//!   the leader had closed (`closed K`) and exits.

use testkit::rogue;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use rogue::Rogue;

fn wait_for_stdin_eof() {
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
}

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let socket = PathBuf::from(args.get(2).cloned().unwrap_or_default());
    let config = rogue::config("http://127.0.0.1:1", "rogue-key", "rogue-app");
    match args.get(1).map(String::as_str) {
        Some("hold") => {
            let id: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
            let mut rogue = Rogue::connect(&socket).expect("connect");
            match rogue.hello(id, &config) {
                Some(appsignal_agent::protocol::LeaderMessage::Welcome { .. }) => say("welcome"),
                _ => say("closed"),
            }
            wait_for_stdin_eof();
        }
        Some("halfframes") => {
            let n: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
            let len = appsignal_agent::protocol::MAX_FRAME_BYTES - 1;
            let mut body = (len as u32).to_be_bytes().to_vec();
            body.resize(4 + len - 1, 0x80);
            let mut held = Vec::new();
            for i in 0..n {
                let Ok(mut rogue) = Rogue::connect(&socket) else {
                    continue;
                };
                let id = u64::from(std::process::id()) << 16 | i as u64;
                if rogue.hello(id, &config).is_none() {
                    continue;
                }
                let _ = rogue.stream.set_write_timeout(Some(Duration::from_secs(5)));
                let _ = rogue.write_raw(&body);
                held.push(rogue);
            }
            say("sent");
            wait_for_stdin_eof();
            let mut closed = 0;
            for r in held.iter_mut() {
                if r.closed_within(Duration::from_millis(10)) {
                    closed += 1;
                }
            }
            say(&format!("closed {closed}"));
        }
        _ => say("usage: rogue hold|halfframes SOCKET ARG"),
    }
}
