//! `appsignal_diagnose()`: a JSON report of what the agent in this process sees, in two parts.
//!
//! - `extension` and `agent`: the checks the Ruby gem's `appsignal diagnose` command prints, in the
//!   shape it reads: every leaf an object `{"result": …}`, with `"error"` / `"output"` when there
//!   is something to say (see docs/apm.md, "Diagnose").
//! - `leader_election`: our own report: configuration (the push key only as present/absent),
//!   working directory (path, owner, mode, writable), lock (path, holder pid), socket, role, the
//!   sender's progress (`sender.idle`: everything recorded so far is acknowledged by a leader), and
//!   why the agent is disabled if it is.
//!
//! Before any `start()` the configuration is read from the environment for the report (the gem
//! writes it there and asks for a diagnose without starting); nothing is created on disk.
//!
//! `leader_election.working_directory.fallback` says why the per-user working directory is used
//! instead of the located one, when it is. `leader_election.exports` (in the leader process only)
//! lists the configurations whose credentials a receiver refused and the payloads dropped.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::agent::{self, Role, Status};
use crate::config::Config;
use crate::election;
use crate::workdir::{self, Probe};

/// An object of `entries` (keys sorted, as every object here). One function for every object of
/// the report: `serde_json::json!` expands each key into its own insertion code, which made the
/// report tens of kilobytes of the library.
fn object(entries: Vec<(&'static str, Value)>) -> Value {
    let mut map = Map::new();
    for (key, value) in entries {
        map.insert(key.to_owned(), value);
    }
    Value::Object(map)
}

fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

fn optional_text(s: Option<impl Into<String>>) -> Value {
    s.map_or(Value::Null, text)
}

fn path_text(path: &Path) -> Value {
    text(path.display().to_string())
}

fn file_report(path: &Path) -> Value {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => object(vec![
            ("path", path_text(path)),
            ("exists", true.into()),
            ("uid", meta.uid().into()),
            ("gid", meta.gid().into()),
            ("mode", text(format!("{:o}", meta.mode() & 0o7777))),
            (
                "type",
                text(if meta.file_type().is_symlink() {
                    "symlink"
                } else if meta.is_dir() {
                    "directory"
                } else if meta.is_file() {
                    "file"
                } else {
                    "other"
                }),
            ),
            (
                "writable",
                (workdir::is_writable(path) || (!meta.is_dir() && meta.mode() & 0o222 != 0)).into(),
            ),
        ]),
        Err(e) => object(vec![
            ("path", path_text(path)),
            ("exists", false.into()),
            ("error", text(e.to_string())),
        ]),
    }
}

/// A check's result, with an error when there is one.
fn leaf(result: Value, error: Option<String>) -> Value {
    let mut entries = vec![("result", result)];
    if let Some(error) = error {
        entries.push(("error", text(error)));
    }
    object(entries)
}

/// The report as JSON: `extension`, `agent` and `leader_election`.
pub fn report() -> Value {
    // Notices a fork first, so that a child reports its own state, not the parent's.
    let sender_state = agent::sender_progress();
    let exports = agent::leader_exports();
    let status = agent::status_snapshot();
    let role = agent::role();
    let checks = checks(&status, role);
    let mut leader_election = leader_election(status, role, sender_state);
    leader_election["exports"] = exports.map_or(Value::Null, exports_report);
    object(vec![
        ("extension", checks.extension),
        ("agent", checks.agent),
        ("leader_election", leader_election),
    ])
}

/// The leader's exporters: refused credentials (by app name and environment, never the key) and
/// payloads dropped since it started leading.
fn exports_report(report: crate::leader::ExportsReport) -> Value {
    let refused = report
        .refused
        .iter()
        .map(|r| {
            object(vec![
                ("app_name", text(r.app_name.as_str())),
                ("environment", text(r.environment.as_str())),
                ("exporter", text(r.exporter)),
                ("reason", text(r.reason.as_str())),
                ("since_ms", r.since_ms.into()),
                ("dropped_payloads", r.dropped_payloads.into()),
                ("next_try_in_ms", r.next_try_in_ms.into()),
            ])
        })
        .collect();
    object(vec![
        ("rejected_payloads", report.rejected_payloads.into()),
        ("refused_credentials", Value::Array(refused)),
    ])
}

struct Checks {
    extension: Value,
    agent: Value,
}

/// The `extension` and `agent` sections, in the shape the gem's diagnose command reads.
fn checks(status: &Status, role: Role) -> Checks {
    // Before any start, the configuration the next start would read.
    let config = status
        .config
        .clone()
        .unwrap_or_else(|| Config::load().config);
    let config_valid = leaf(
        config.invalid_reason().is_none().into(),
        config.invalid_reason(),
    );

    let started = matches!(role, Role::Leader | Role::Client);
    let mut boot = leaf(
        started.into(),
        match role {
            Role::Leader | Role::Client => None,
            Role::Disabled => Some(
                status
                    .disabled_reason
                    .clone()
                    .unwrap_or_else(|| "disabled".into()),
            ),
            Role::Stopped => Some(
                "not started: appsignal_start() was not called, or appsignal_stop() was".into(),
            ),
            Role::Starting => Some("starting".into()),
        },
    );
    if started {
        boot["output"] = text(role.as_str());
    }

    let mut logger = leaf(
        status.log_destination.is_some().into(),
        status
            .log_destination
            .is_none()
            .then(|| "not started: the log is opened by a start with a valid configuration".into()),
    );
    match &status.log_destination {
        Some(crate::log::Destination::File(path)) => logger["output"] = path_text(path),
        Some(crate::log::Destination::Stdout) => logger["output"] = text("stdout"),
        None => {}
    }

    // The working directory of the last start, or where the next one would put it.
    let workdir_path: PathBuf = match &status.workdir_path {
        Some(path) => path.clone(),
        None => {
            Probe::system(|probe| workdir::locate(config.working_directory_path.as_deref(), probe))
                .0
        }
    };
    let working_directory_stat = match std::fs::symlink_metadata(&workdir_path) {
        Ok(meta) => object(vec![
            ("uid", leaf(meta.uid().into(), None)),
            ("gid", leaf(meta.gid().into(), None)),
            ("mode", leaf(meta.mode().into(), None)),
        ]),
        Err(e) => {
            let error = format!("{}: {e}", workdir_path.display());
            object(vec![
                ("uid", leaf(Value::Null, Some(error.clone()))),
                ("gid", leaf(Value::Null, Some(error.clone()))),
                ("mode", leaf(Value::Null, Some(error))),
            ])
        }
    };

    let lock_created = match &status.workdir {
        Some(w) => {
            let lock = w.lock_path();
            match std::fs::symlink_metadata(&lock) {
                Ok(meta) if meta.is_file() => leaf(true.into(), None),
                Ok(_) => leaf(
                    false.into(),
                    Some(format!("{} is not a regular file", lock.display())),
                ),
                Err(e) => leaf(false.into(), Some(format!("{}: {e}", lock.display()))),
            }
        }
        None => leaf(
            false.into(),
            Some(status.disabled_reason.clone().unwrap_or_else(|| {
                "not started: the lock file is created by a start with a valid configuration".into()
            })),
        ),
    };

    let one = |key: &'static str, value: Value| object(vec![(key, value)]);
    Checks {
        extension: one("config", one("valid", config_valid.clone())),
        agent: object(vec![
            ("boot", one("started", boot)),
            (
                "host",
                object(vec![
                    ("uid", leaf(agent::real_uid().into(), None)),
                    ("gid", leaf(agent::real_gid().into(), None)),
                ]),
            ),
            ("config", one("valid", config_valid)),
            ("logger", one("started", logger)),
            ("working_directory_stat", working_directory_stat),
            ("lock_path", one("created", lock_created)),
        ]),
    }
}

/// Our own report (what `appsignal_diagnose()` returned before it took the gem's shape).
fn leader_election(
    status: Status,
    role: Role,
    sender_state: Option<(crate::client::Progress, bool)>,
) -> Value {
    let Status {
        config,
        config_warnings,
        workdir,
        workdir_path,
        workdir_source,
        log_destination,
        disabled_reason,
        workdir_fallback,
    } = status;
    let config_report = config.as_ref().map(|c| {
        // Endpoints and header names only: header values are secrets.
        let otlp = c.otlp.as_ref().map(|o| {
            object(vec![
                ("metrics_endpoint", text(o.metrics_endpoint.as_str())),
                ("traces_endpoint", text(o.traces_endpoint.as_str())),
                ("logs_endpoint", text(o.logs_endpoint.as_str())),
                (
                    "headers",
                    Value::Array(o.headers.iter().map(|(k, _)| text(k.as_str())).collect()),
                ),
                ("timeout_ms", o.timeout_ms.into()),
                ("compression", text(if o.gzip { "gzip" } else { "none" })),
                ("metrics_temporality", text(o.temporality().name())),
            ])
        });
        object(vec![
            ("valid", c.invalid_reason().is_none().into()),
            ("invalid_reason", optional_text(c.invalid_reason())),
            (
                "warnings",
                Value::Array(config_warnings.into_iter().map(Value::String).collect()),
            ),
            ("active", c.active.into()),
            (
                "push_api_key",
                text(if c.push_api_key.is_empty() {
                    "absent"
                } else {
                    "present"
                }),
            ),
            ("app_name", text(c.app_name.as_str())),
            ("environment", text(c.environment.as_str())),
            ("endpoint", text(c.endpoint.as_str())),
            (
                "exporters",
                object(vec![
                    ("push", c.exporters.push.into()),
                    ("otlp", c.exporters.otlp.into()),
                ]),
            ),
            ("otlp", otlp.unwrap_or(Value::Null)),
            ("hostname", text(c.hostname.as_str())),
            ("revision", text(c.revision.as_str())),
            ("host_role", optional_text(c.host_role.as_deref())),
            (
                "language_integration_version",
                optional_text(c.language_integration_version.as_deref()),
            ),
            ("process_name", optional_text(c.process_name.as_deref())),
            ("files_world_accessible", c.files_world_accessible.into()),
            (
                "working_directory_path",
                c.working_directory_path
                    .as_deref()
                    .map_or(Value::Null, path_text),
            ),
            ("log", text(format!("{:?}", c.log).to_lowercase())),
            ("log_level", text(c.log_level.to_string())),
            (
                "transmission_interval_ms",
                (c.transmission_interval.as_millis() as u64).into(),
            ),
            (
                "flush_interval_ms",
                (c.flush_interval.as_millis() as u64).into(),
            ),
        ])
    });
    let workdir_report = workdir_path.as_ref().map(|p| {
        let mut r = file_report(p);
        r["source"] = optional_text(workdir_source);
        r["usable"] = workdir.is_some().into();
        // The located directory was refused (something planted in it): this is the per-user one.
        r["fallback"] = workdir_fallback.as_ref().map_or(Value::Null, |f| {
            object(vec![
                ("from", path_text(&f.from)),
                ("reason", text(f.reason.as_str())),
            ])
        });
        r
    });
    let (lock, socket) = match &workdir {
        Some(w) => {
            let mut lock = file_report(&w.lock_path());
            let holder = election::read_holder(&w.lock_path());
            lock["holder_pid"] = holder.as_ref().map_or(Value::Null, |h| h.pid.into());
            lock["holder_version"] = optional_text(holder.map(|h| h.version));
            (lock, file_report(&w.socket_path()))
        }
        None => (Value::Null, Value::Null),
    };
    let sender = sender_state.map_or(Value::Null, |(p, idle)| {
        object(vec![
            ("idle", idle.into()),
            ("pending_batches", p.pending_batches.into()),
            ("last_assigned_seq", p.assigned_seq.into()),
            ("last_acked_seq", p.acked_seq.into()),
            ("dropped_batches", p.dropped_batches.into()),
        ])
    });
    object(vec![
        ("library_version", text(crate::VERSION)),
        ("protocol_version", crate::protocol::PROTOCOL_VERSION.into()),
        (
            "process",
            object(vec![
                ("pid", std::process::id().into()),
                ("uid", workdir::current_euid().into()),
                ("gid", workdir::current_egid().into()),
            ]),
        ),
        ("role", text(role.as_str())),
        ("sender", sender),
        ("disabled_reason", optional_text(disabled_reason)),
        ("config", config_report.unwrap_or(Value::Null)),
        ("working_directory", workdir_report.unwrap_or(Value::Null)),
        ("lock", lock),
        ("socket", socket),
        (
            "log",
            match log_destination {
                Some(crate::log::Destination::File(p)) => path_text(&p),
                Some(crate::log::Destination::Stdout) => text("stdout"),
                None => Value::Null,
            },
        ),
    ])
}
