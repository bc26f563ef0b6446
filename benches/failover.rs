//! Failover time: SIGKILL of the leader → a new leader answering a handshake on `agent.socket`.
//! Four worker processes (the test worker, which dlopens libappsignal.so) share a working
//! directory; the leader is killed 60 times, each time replaced so that four processes remain.
//! Prints the median, 90th percentile and maximum. `cargo bench -p appsignal-testkit --bench failover`
//!
//! Not a criterion bench: each sample needs a process to die, and the quantity is wall time
//! across processes, not the cost of a call.

use testkit::fleet;
use testkit::receiver;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use appsignal_agent::protocol::{self, ClientMessage, Hello, LeaderMessage};

const KILLS: usize = 60;

fn holder_pid(lock: &Path) -> Option<u32> {
    std::fs::read_to_string(lock)
        .ok()?
        .split(';')
        .next()?
        .parse()
        .ok()
}

/// Connects and completes a handshake; returns the leader's pid.
fn handshake(socket: &Path, hello: &ClientMessage) -> Option<u32> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(&protocol::encode(hello).ok()?).ok()?;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 256];
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(Some((message, _))) = protocol::decode::<LeaderMessage>(&buf) {
            return match message {
                LeaderMessage::Welcome { leader_pid, .. } => Some(leader_pid),
                _ => None,
            };
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("failover: benchmark");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let receiver = receiver::Receiver::start("bench-key", None).expect("receiver");
    let workdir = tmp.path().join("wd");
    let mut env = fleet::config_env(&receiver.url, "bench-key", &workdir, 1000);
    env.retain(|(k, _)| k != "_APPSIGNAL_LOG_LEVEL");
    let exe = Path::new(env!("CARGO_BIN_EXE_appsignal-test-worker"));
    let spawn = |i: u32| fleet::WorkerProcess::spawn(exe, &[i.to_string()], &env).expect("worker");
    let mut workers: Vec<fleet::WorkerProcess> = (0..4).map(spawn).collect();
    let lock = workdir.join("agent.lock");
    let socket = workdir.join("agent.socket");
    let hello = ClientMessage::Hello(Hello {
        protocol_version: protocol::PROTOCOL_VERSION,
        protocol: None,
        library_version: appsignal_agent::VERSION.into(),
        client_id: 1,
        pid: std::process::id(),
        config: appsignal_agent::config::Config::load_from(&|_| None)
            .config
            .export_config(),
    });
    let mut samples = Vec::with_capacity(KILLS);
    let mut next_index = 4;
    while samples.len() < KILLS {
        // Some load, so that the leader has a journal to hand over.
        for w in workers.iter_mut() {
            w.send("record 200").expect("record");
        }
        for w in workers.iter_mut() {
            w.expect("sent", Duration::from_secs(30)).expect("sent");
        }
        let Some(old) = holder_pid(&lock) else {
            continue;
        };
        let Some(i) = workers.iter().position(|w| w.pid == old) else {
            continue;
        };
        if handshake(&socket, &hello) != Some(old) {
            continue;
        }
        let killed = Instant::now();
        workers[i].child.kill().expect("kill");
        let deadline = killed + Duration::from_secs(10);
        let took = loop {
            if let Some(pid) = handshake(&socket, &hello) {
                if pid != old {
                    break killed.elapsed();
                }
            }
            assert!(Instant::now() < deadline, "no new leader within 10 s");
            std::thread::sleep(Duration::from_micros(200));
        };
        samples.push(took);
        workers[i]
            .wait(Duration::from_secs(5))
            .expect("killed worker exits");
        workers[i] = spawn(next_index);
        next_index += 1;
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "failover over {} leader SIGKILLs: median {:.1} ms, p90 {:.1} ms, max {:.1} ms, min {:.1} ms",
        samples.len(),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() * 9 / 10]),
        ms(samples[samples.len() - 1]),
        ms(samples[0])
    );
    for w in workers.iter_mut() {
        let _ = w.stop(Duration::from_secs(10));
    }
}
