//! The demo: starts the reference receiver on 127.0.0.1, starts four worker processes that load
//! libappsignal.so through its C interface and share one working directory (one of them wins the
//! election and leads), has them record counters, gauges and distributions, stops them, and prints
//! what the receiver got next to what was sent.
//!
//! `cargo run --release --example demo [-- --workers 4 --records 20000]`
//!
//! With `--otlp`, the workers export OTLP instead (`_APPSIGNAL_EXPORTER=otlp`, no push key) to the
//! Python receiver `examples/otlp_receiver.py`, which decodes every request with the official
//! `opentelemetry-proto` classes; one worker also records an erroneous transaction and a log line,
//! and the demo prints the spans and log records that arrived.

use testkit::fleet;
use testkit::otlp_receiver;
use testkit::receiver;
use testkit::worker;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut workers, mut records, mut otlp) = (4u32, 20_000u64, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--worker" => {
                // A worker copy of this program.
                worker::run(args.next().and_then(|a| a.parse().ok()).unwrap_or(0));
                return Ok(());
            }
            "--workers" => workers = args.next().and_then(|a| a.parse().ok()).unwrap_or(workers),
            "--records" => records = args.next().and_then(|a| a.parse().ok()).unwrap_or(records),
            "--otlp" => otlp = true,
            other => bail!("unknown argument {other:?}; expected --workers N, --records N, --otlp"),
        }
    }
    let started = Instant::now();
    let key = "demo-push-key";
    let base = std::env::temp_dir().join(format!("appsignal-demo-{}", std::process::id()));
    let receiver = receiver::Receiver::start(key, Some(base.join("received")))?;
    let otlp_receiver = if otlp {
        let python = match otlp_receiver::python_or_make() {
            Ok(python) => python,
            Err(missing) => bail!("--otlp needs a Python with opentelemetry-proto: {missing}"),
        };
        Some(otlp_receiver::OtlpReceiver::start(&python)?)
    } else {
        None
    };
    let workdir = base.join("wd");
    println!("library:           {}", worker::library_path().display());
    match &otlp_receiver {
        Some(r) => println!(
            "OTLP receiver:     {} (examples/otlp_receiver.py, official opentelemetry-proto classes)",
            r.url
        ),
        None => println!(
            "receiver:          {} (payloads stored in {})",
            receiver.url,
            base.join("received").display()
        ),
    }
    println!("working directory: {}", workdir.display());

    let mut env = fleet::config_env(&receiver.url, key, &workdir, 1000);
    if let Some(r) = &otlp_receiver {
        env.retain(|(k, _)| k != "_APPSIGNAL_PUSH_API_KEY");
        env.push(("_APPSIGNAL_EXPORTER".into(), "otlp".into()));
        env.push(("_APPSIGNAL_OTLP_ENDPOINT".into(), r.url.clone()));
        env.push(("_APPSIGNAL_FILTER_PARAMETERS".into(), "password".into()));
    }
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
    if otlp {
        procs[0].send("showcase order-42")?;
        procs[0].expect("sent", Duration::from_secs(60))?;
    }
    // Clients first, the leader last: the leader pushes what remains when it stops.
    procs.sort_by_key(|p| p.role == "leader");
    for p in &mut procs {
        p.stop(Duration::from_secs(15))?;
    }
    let summary_of = || match &otlp_receiver {
        Some(r) => r.summary(),
        None => receiver.summary(),
    };
    let rows = fleet::await_totals(&expected, summary_of, Duration::from_secs(10));
    let summary = summary_of();
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
    if otlp {
        print_otlp(&summary);
        println!(
            "OTLP requests received: {}, duplicates dropped: {}; {:.1} s in all",
            summary["requests"],
            summary["duplicates"],
            started.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "payloads received: {}, duplicates dropped: {}, dropped updates reported: {}; {:.1} s in all",
            summary["payloads"], summary["duplicates"], summary["dropped_updates"], started.elapsed().as_secs_f64()
        );
    }
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

/// The spans, log records and resource the OTLP receiver decoded.
fn print_otlp(summary: &serde_json::Value) {
    let empty = Vec::new();
    let spans = summary["spans"].as_array().unwrap_or(&empty);
    println!("spans ({}), as the receiver decoded them:", spans.len());
    for span in spans.iter().take(12) {
        let indent = if span["parent_span_id"] == "" {
            ""
        } else {
            "  "
        };
        let mut extra = String::new();
        if let Some(q) = span["attributes"]["db.query.text"].as_str() {
            extra = format!(" db.query.text={q:?}");
        }
        if let Some(e) = span["events"].as_array().and_then(|e| e.first()) {
            extra.push_str(&format!(
                " exception={} {:?}",
                e["attributes"]["exception.type"]
                    .as_str()
                    .unwrap_or_default(),
                e["attributes"]["exception.message"]
                    .as_str()
                    .unwrap_or_default()
            ));
        }
        if let Some(p) = span["attributes"]["appsignal.request.payload"].as_str() {
            extra.push_str(&format!(" params={p}"));
        }
        println!(
            "  {indent}{} [trace {}… span {}]{extra}",
            span["name"].as_str().unwrap_or_default(),
            &span["trace_id"]
                .as_str()
                .unwrap_or_default()
                .get(..8)
                .unwrap_or_default(),
            span["span_id"].as_str().unwrap_or_default()
        );
    }
    for log in summary["logs"].as_array().unwrap_or(&empty) {
        println!(
            "log record: {} {:?} {}",
            log["severity_text"].as_str().unwrap_or_default(),
            log["body"].as_str().unwrap_or_default(),
            log["attributes"]
        );
    }
    if let Some(resource) = summary["resources"].get(0) {
        println!(
            "resource: service.name={} host.name={} appsignal.config.environment={}",
            resource["service.name"],
            resource["host.name"],
            resource["appsignal.config.environment"]
        );
    }
}
