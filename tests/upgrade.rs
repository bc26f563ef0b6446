//! A rolling upgrade, with real processes: worker processes of the previous release (its
//! `libappsignal.so`, built by `make previous` into `target/previous/`) and of this build share one
//! working directory, as during a deploy where old workers still run while new ones start. Each
//! build announces its own library version (`_APPSIGNAL_TEST_LIBRARY_VERSION`: the previous one
//! older), so the hand-over rules between versions are what is exercised. Leaders are stopped and
//! SIGKILLed across versions. Everything both builds recorded must reach the reference receiver
//! exactly once: counters, distributions and gauges by their totals, and every sample and log line
//! one by one (each carries an id of its own); and no process of either build may end up disabled.
//!
//! This test never runs cargo for the previous library (it would wait on the lock of the target
//! directory it runs from): `make previous` builds it first (`.ci/run` does). Under `CI` a missing
//! library fails the test; elsewhere the test prints SKIPPED naming `make previous`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testkit::fleet::{self, WorkerProcess};
use testkit::setup::Setup;

const KEY: &str = "upgrade-secret-key";
/// The library versions each build announces: the previous release is the older one.
const PREVIOUS_VERSION: &str = "0.1.0";
const CURRENT_VERSION: &str = "0.2.0";
/// What a round of one worker records besides its metrics: transactions (one of each five with an
/// error, so sampled) and one showcase (an erroneous transaction, sampled, and a log line).
const ROUND_METRICS: u64 = 30;
const ROUND_TRANSACTIONS: u64 = 5;

/// The previous release's library, as `make previous` leaves it.
fn previous_library() -> PathBuf {
    let testkit = Path::new(env!("CARGO_MANIFEST_DIR"));
    testkit
        .parent()
        .unwrap_or(testkit)
        .join("target/previous/libappsignal.so")
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// The previous library, or `None` to skip: under CI its absence fails the test, elsewhere the
/// test says SKIPPED on stderr with the command that builds it.
fn previous_or_skip(test: &str) -> Option<PathBuf> {
    let path = previous_library();
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "no {}: run `make previous` (builds the previous release's library)",
        path.display()
    );
    assert!(!in_ci(), "{test}: {why}");
    eprintln!("SKIPPED {test}: {why}");
    None
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Build {
    Previous,
    Current,
}

struct Member {
    process: WorkerProcess,
    build: Build,
    /// Its last `acked` event: everything it recorded, acknowledged by a leader.
    acked: Value,
}

/// The processes of both builds in one working directory, and what they recorded.
struct Deploy {
    setup: Setup,
    previous_env: Vec<(String, String)>,
    current_env: Vec<(String, String)>,
    live: Vec<Member>,
    next_index: u32,
    /// The totals of the processes that have ended (stopped or killed after their last round was
    /// acknowledged).
    expected: Value,
    /// Every showcase id handed to a library: one sample and one log line each.
    showcases: Vec<String>,
    rounds: u32,
}

impl Deploy {
    fn new(previous: &Path) -> Deploy {
        let setup = Setup::new(KEY, 300);
        let with = |library: &Path, version: &str| {
            let mut env = setup.env.clone();
            env.retain(|(k, _)| k != "APPSIGNAL_LIBRARY");
            env.push(("APPSIGNAL_LIBRARY".into(), library.display().to_string()));
            env.push(("_APPSIGNAL_TEST_LIBRARY_VERSION".into(), version.into()));
            env
        };
        let previous_env = with(previous, PREVIOUS_VERSION);
        let current_env = with(&testkit::library_path(), CURRENT_VERSION);
        Deploy {
            setup,
            previous_env,
            current_env,
            live: Vec::new(),
            next_index: 0,
            expected: Value::Null,
            showcases: Vec::new(),
            rounds: 0,
        }
    }

    /// Starts one process of `build`; it must come up as leader or client.
    fn spawn(&mut self, build: Build) -> WorkerProcess {
        let env = match build {
            Build::Previous => &self.previous_env,
            Build::Current => &self.current_env,
        };
        let index = self.next_index;
        self.next_index += 1;
        let process = WorkerProcess::spawn(&testkit::worker_exe(), &[index.to_string()], env)
            .unwrap_or_else(|e| panic!("{build:?} worker {index}: {e}\n{}", self.log_tail()));
        assert!(
            process.role == "leader" || process.role == "client",
            "{build:?} worker pid {} came up as {:?}\n{}",
            process.pid,
            process.role,
            self.log_tail()
        );
        process
    }

    fn join(&mut self, build: Build) {
        let process = self.spawn(build);
        self.live.push(Member {
            process,
            build,
            acked: Value::Null,
        });
    }

    /// Hands one round to every live process, without waiting for the answers.
    fn send_round(&mut self) {
        self.rounds += 1;
        for m in self.live.iter_mut() {
            let id = format!("showcase-{}-{}", m.process.pid, self.rounds);
            for command in [
                format!("record {ROUND_METRICS}"),
                format!("txn {ROUND_TRANSACTIONS}"),
                format!("showcase {id}"),
                "sync".to_owned(),
            ] {
                m.process.send(&command).unwrap();
            }
            self.showcases.push(id);
        }
    }

    /// Waits for member `i`'s acknowledgement of its round.
    fn await_acked(&mut self, i: usize) {
        let acked = self.live[i]
            .process
            .expect("acked", Duration::from_secs(90))
            .unwrap();
        assert_eq!(
            acked["idle"],
            true,
            "{:?} worker pid {} never got round {} acknowledged\n{}",
            self.live[i].build,
            self.live[i].process.pid,
            self.rounds,
            self.log_tail()
        );
        self.live[i].acked = acked;
    }

    /// One round by every live process, each acknowledged.
    fn round(&mut self) {
        self.send_round();
        for i in 0..self.live.len() {
            self.await_acked(i);
        }
    }

    /// A round during which `build` processes start: the others record while they come up.
    fn round_while_joining(&mut self, build: Build, count: usize) {
        self.send_round();
        let recording = self.live.len();
        for _ in 0..count {
            self.join(build);
        }
        for i in 0..recording {
            self.await_acked(i);
        }
        // The newcomers' first round.
        self.round();
    }

    /// The live member holding `agent.lock`, once one does (30 s).
    fn leader(&self) -> usize {
        let mut found = None;
        let workers: Vec<&WorkerProcess> = self.live.iter().map(|m| &m.process).collect();
        let held = testkit::poll(Duration::from_secs(30), || {
            found = lock_holder(&self.setup.workdir(), &workers);
            found.is_some()
        });
        assert!(held, "no live process leads\n{}", self.log_tail());
        found.unwrap_or_default()
    }

    /// Waits until a process of `build` leads; returns its position.
    fn await_leader_of(&self, build: Build) -> usize {
        let workers: Vec<&WorkerProcess> = self.live.iter().map(|m| &m.process).collect();
        let mut found = None;
        let led = testkit::poll(Duration::from_secs(30), || {
            found = lock_holder(&self.setup.workdir(), &workers)
                .filter(|&i| self.live[i].build == build);
            found.is_some()
        });
        assert!(
            led,
            "no {build:?} process took the lead; builds: {:?}, holder: {:?}\n{}",
            self.live.iter().map(|m| m.build).collect::<Vec<_>>(),
            lock_holder(&self.setup.workdir(), &workers),
            self.log_tail()
        );
        found.unwrap_or_default()
    }

    /// A round during which the leader is SIGKILLed right after its own part was acknowledged,
    /// while the others are handing it theirs. Returns the build of the killed leader.
    fn round_killing_leader(&mut self) -> Build {
        let leader = self.leader();
        self.send_round();
        self.await_acked(leader);
        let mut killed = self.live.remove(leader);
        killed.process.child.kill().unwrap();
        killed.process.wait(Duration::from_secs(10)).unwrap();
        fleet::add_sent(&mut self.expected, &killed.acked);
        for i in 0..self.live.len() {
            self.await_acked(i);
        }
        killed.build
    }

    /// SIGKILLs a live client of `build` after its round was acknowledged.
    fn kill_client(&mut self, build: Build) {
        let leader = self.leader();
        let i = (0..self.live.len())
            .find(|&i| i != leader && self.live[i].build == build)
            .unwrap_or_else(|| panic!("no {build:?} client to kill"));
        let mut killed = self.live.remove(i);
        killed.process.child.kill().unwrap();
        killed.process.wait(Duration::from_secs(10)).unwrap();
        fleet::add_sent(&mut self.expected, &killed.acked);
    }

    /// Stops a live client of `build` cleanly (`appsignal_stop()`); it must exit successfully.
    fn stop_client(&mut self, build: Build) {
        let leader = self.leader();
        let i = (0..self.live.len())
            .find(|&i| i != leader && self.live[i].build == build)
            .unwrap_or_else(|| panic!("no {build:?} client to stop"));
        self.stop_member(i);
    }

    fn stop_member(&mut self, i: usize) {
        let mut member = self.live.remove(i);
        let status = member.process.stop(Duration::from_secs(30)).unwrap();
        assert!(
            status.success(),
            "{:?} worker pid {} exited with {status}",
            member.build,
            member.process.pid
        );
        fleet::add_sent(&mut self.expected, &member.acked);
    }

    /// Every live process is leader or client, none disabled.
    fn assert_none_disabled(&mut self) {
        for m in self.live.iter_mut() {
            let report = m.process.diagnose().unwrap();
            let election = &report["leader_election"];
            assert!(
                (election["role"] == "leader" || election["role"] == "client")
                    && election["disabled_reason"].is_null(),
                "{:?} worker pid {}: {election}",
                m.build,
                m.process.pid
            );
        }
    }

    /// Stops the rest (clients first, the leader last), then checks what arrived.
    fn finish(mut self) {
        self.assert_none_disabled();
        let leader_pid = self.live[self.leader()].process.pid;
        while let Some(i) = self.live.iter().position(|m| m.process.pid != leader_pid) {
            self.stop_member(i);
        }
        self.stop_member(0);
        self.assert_received();
    }

    /// Metric totals equal, every sample and log line arrived exactly once, nothing dropped, and
    /// the log shows no refusal and no process that stopped reporting.
    fn assert_received(&self) {
        let mut expected = self.expected.clone();
        let showcases = self.showcases.len() as f64;
        for name in ["transaction_count", "transaction_error_count"] {
            expected["counters"][format!("{name}{{action=Checkout#pay,namespace=http_request}}")] =
                showcases.into();
        }
        self.setup.assert_totals(&expected);
        // Erroneous `txn` transactions (sample id `req`): one sample each.
        let erroneous: f64 = expected["counters"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("transaction_error_count{") && k.contains("=web"))
            .map(|(_, v)| v.as_f64().unwrap_or(0.0))
            .sum();
        let mut want_samples: BTreeMap<String, u64> =
            self.showcases.iter().map(|id| (id.clone(), 1)).collect();
        want_samples.insert("req".into(), erroneous as u64);
        let want_logs: BTreeMap<String, u64> =
            self.showcases.iter().map(|id| (id.clone(), 1)).collect();
        let want_total = want_samples.values().sum::<u64>();
        let arrived = testkit::poll(Duration::from_secs(30), || {
            self.setup.receiver.summary()["samples"] == want_total
                && self.setup.receiver.summary()["logs"] == want_logs.len() as u64
        });
        let (samples, logs) = self.received_ids();
        let summary = self.setup.receiver.summary();
        assert!(
            arrived && samples == want_samples && logs == want_logs,
            "samples or log lines differ from what was sent\n{}\n{}\n(summary: {summary})\n{}",
            differences("sample", &want_samples, &samples),
            differences("log line", &want_logs, &logs),
            self.log_tail()
        );
        for field in [
            "dropped_samples",
            "dropped_logs",
            "dropped_batches",
            "refused_connections",
            "poisoned_batches",
            "duplicates",
        ] {
            assert_eq!(summary[field], 0, "{field}: {summary}");
        }
        let log = self.setup.log();
        // The leader's refusal, the refused client's line, a client that gave up.
        for bad in ["refused pid", "refused this process", "stops reporting"] {
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(bad)).collect();
            assert!(
                lines.is_empty(),
                "the log says {bad:?}:\n{}",
                lines.join("\n")
            );
        }
    }

    /// How many times each sample id and each log line's `order` attribute arrived, read from
    /// the payloads the receiver kept (one file per payload id, duplicates not kept).
    fn received_ids(&self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let (mut samples, mut logs) = (BTreeMap::new(), BTreeMap::new());
        let dir = self.setup.tmp.path().join("received");
        for entry in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let payload: Value = serde_json::from_str(&text).unwrap();
            for s in payload["samples"].as_array().into_iter().flatten() {
                let id = s["id"].as_str().unwrap_or("(no id)").to_owned();
                *samples.entry(id).or_default() += 1;
            }
            for l in payload["logs"].as_array().into_iter().flatten() {
                let id = l["attributes"]["order"].as_str().unwrap_or("(no order)");
                *logs.entry(id.to_owned()).or_default() += 1;
            }
        }
        (samples, logs)
    }

    fn log_tail(&self) -> String {
        format!(
            "--- log ---\n{}",
            testkit::setup::tail(&self.setup.log(), 80)
        )
    }
}

/// The position in `workers` of the process whose pid `agent.lock` names.
fn lock_holder(workdir: &Path, workers: &[&WorkerProcess]) -> Option<usize> {
    let text = std::fs::read_to_string(workdir.join("agent.lock")).ok()?;
    let pid: u32 = text.split(';').next()?.parse().ok()?;
    workers.iter().position(|w| w.pid == pid)
}

/// The ids whose count differs: `what id: sent N, received M`.
fn differences(what: &str, want: &BTreeMap<String, u64>, got: &BTreeMap<String, u64>) -> String {
    let mut keys: Vec<&String> = want.keys().chain(got.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| want.get(*k) != got.get(*k))
        .map(|k| {
            format!(
                "{what} {k}: sent {}, received {}",
                want.get(k).copied().unwrap_or(0),
                got.get(k).copied().unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn previous_release_first_then_this_one_loses_nothing() {
    let Some(previous) = previous_or_skip("previous_release_first_then_this_one_loses_nothing")
    else {
        return;
    };
    let mut deploy = Deploy::new(&previous);
    // The old release runs alone: one of its processes leads.
    for _ in 0..3 {
        deploy.join(Build::Previous);
    }
    deploy.round();
    deploy.await_leader_of(Build::Previous);
    // New processes start while the old ones keep recording: the newer library takes the lead.
    deploy.round_while_joining(Build::Current, 2);
    deploy.await_leader_of(Build::Current);
    deploy.round();
    deploy.assert_none_disabled();
    // The old processes go one by one: a clean stop, a SIGKILL, and the leader SIGKILLed mid-round
    // in between (whichever build wins the election, the newer one leads again).
    deploy.stop_client(Build::Previous);
    deploy.round();
    assert_eq!(deploy.round_killing_leader(), Build::Current);
    deploy.await_leader_of(Build::Current);
    deploy.round();
    deploy.kill_client(Build::Previous);
    deploy.round();
    deploy.stop_client(Build::Previous);
    assert!(deploy.live.iter().all(|m| m.build == Build::Current));
    deploy.round();
    deploy.finish();
}

#[test]
fn this_release_first_then_the_previous_one_loses_nothing() {
    let Some(previous) = previous_or_skip("this_release_first_then_the_previous_one_loses_nothing")
    else {
        return;
    };
    let mut deploy = Deploy::new(&previous);
    for _ in 0..2 {
        deploy.join(Build::Current);
    }
    deploy.round();
    deploy.await_leader_of(Build::Current);
    // Old processes join (a rollback, or old workers restarted late): the newer leader keeps them.
    deploy.round_while_joining(Build::Previous, 2);
    deploy.await_leader_of(Build::Current);
    deploy.round();
    deploy.assert_none_disabled();
    // The other new process stops; the new leader is SIGKILLed mid-round: only old processes are
    // left, so one of them wins the election and replays what the new leader had journaled.
    deploy.stop_client(Build::Current);
    deploy.round();
    assert_eq!(deploy.round_killing_leader(), Build::Current);
    deploy.await_leader_of(Build::Previous);
    deploy.round();
    deploy.assert_none_disabled();
    // More new processes start: the old leader hands over to one of them.
    deploy.round_while_joining(Build::Current, 2);
    deploy.await_leader_of(Build::Current);
    deploy.round();
    deploy.kill_client(Build::Previous);
    deploy.round();
    deploy.finish();
}
