//! The demo: starts the reference receiver on 127.0.0.1, starts four worker processes that load
//! libappsignal.so through its C interface and share one working directory (one of them wins the
//! election and leads), has them record counters, gauges and distributions, stops them, and prints
//! what the receiver got next to what was sent.
//!
//! `cargo run --release --example demo [-- --workers 4 --records 20000]`

#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/receiver.rs"]
mod receiver;
#[path = "common/worker.rs"]
mod worker;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut workers, mut records) = (4u32, 20_000u64);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--worker" => {
                // A worker copy of this program.
                worker::run(args.next().and_then(|a| a.parse().ok()).unwrap_or(0));
                return Ok(());
            }
            "--workers" => workers = args.next().and_then(|a| a.parse().ok()).unwrap_or(workers),
            "--records" => records = args.next().and_then(|a| a.parse().ok()).unwrap_or(records),
            other => bail!("unknown argument {other:?}; expected --workers N, --records N"),
        }
    }
    let started = Instant::now();
    let key = "demo-push-key";
    let base = std::env::temp_dir().join(format!("appsignal-demo-{}", std::process::id()));
    let receiver = receiver::Receiver::start(key, Some(base.join("received")))?;
    let workdir = base.join("wd");
    println!("library:           {}", worker::library_path().display());
    println!(
        "receiver:          {} (payloads stored in {})",
        receiver.url,
        base.join("received").display()
    );
    println!("working directory: {}", workdir.display());

    let env = fleet::config_env(&receiver.url, key, &workdir, 1000);
    let exe = std::env::current_exe()?;
    let mut procs = Vec::new();
    for i in 0..workers {
        procs.push(fleet::WorkerProcess::spawn(
            &exe,
            &["--worker".into(), i.to_string()],
            &env,
        )?);
    }
    for p in &procs {
        println!("worker pid {:>7}: {}", p.pid, p.role);
    }
    let leaders = procs.iter().filter(|p| p.role == "leader").count();
    println!(
        "{leaders} leader, {} clients; recording {records} of each metric per worker…",
        procs.len() - leaders
    );

    let mut expected = serde_json::Value::Null;
    for p in &mut procs {
        p.send(&format!("record {records}"))?;
    }
    for p in &mut procs {
        let sent = p.expect("sent", Duration::from_secs(60))?;
        fleet::add_sent(&mut expected, &sent);
    }
    // Clients first, the leader last: the leader pushes what remains when it stops.
    procs.sort_by_key(|p| p.role == "leader");
    for p in &mut procs {
        p.stop(Duration::from_secs(15))?;
    }
    let rows = fleet::await_totals(&expected, || receiver.summary(), Duration::from_secs(10));
    let summary = receiver.summary();
    println!();
    println!("{:<48} {:>26} {:>26}  ", "series", "sent", "received");
    for r in &rows {
        println!(
            "{:<48} {:>26} {:>26}  {}",
            r.series,
            r.sent,
            r.received,
            if r.equal { "ok" } else { "DIFFERENT" }
        );
    }
    println!();
    println!(
        "payloads received: {}, duplicates dropped: {}, dropped updates reported: {}; {:.1} s in all",
        summary["payloads"], summary["duplicates"], summary["dropped_updates"], started.elapsed().as_secs_f64()
    );
    if rows.iter().all(|r| r.equal) {
        println!("every total received equals what was sent.");
        let _ = std::fs::remove_dir_all(&base);
        Ok(())
    } else {
        bail!(
            "totals differ; the agent's log is in {}",
            workdir.join("appsignal.log").display()
        )
    }
}
