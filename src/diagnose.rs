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

use serde_json::{json, Value};

use crate::agent::{self, Role, Status};
use crate::config::Config;
use crate::election;
use crate::workdir::{self, Probe};

fn file_report(path: &Path) -> Value {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => json!({
            "path": path.display().to_string(),
            "exists": true,
            "uid": meta.uid(),
            "gid": meta.gid(),
            "mode": format!("{:o}", meta.mode() & 0o7777),
            "type": if meta.file_type().is_symlink() { "symlink" } else if meta.is_dir() { "directory" } else if meta.is_file() { "file" } else { "other" },
            "writable": workdir::is_writable(path) || (!meta.is_dir() && meta.mode() & 0o222 != 0),
        }),
        Err(e) => json!({
            "path": path.display().to_string(),
            "exists": false,
            "error": e.to_string(),
        }),
    }
}

/// A check's result, with an error when there is one.
fn leaf(result: Value, error: Option<String>) -> Value {
    let mut leaf = json!({ "result": result });
    if let Some(error) = error {
        leaf["error"] = json!(error);
    }
    leaf
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
    json!({
        "extension": checks.extension,
        "agent": checks.agent,
        "leader_election": leader_election,
    })
}

/// The leader's exporters: refused credentials (by app name and environment, never the key) and
/// payloads dropped since it started leading.
fn exports_report(report: crate::leader::ExportsReport) -> Value {
    json!({
        "rejected_payloads": report.rejected_payloads,
        "refused_credentials": report.refused.iter().map(|r| json!({
            "app_name": r.app_name,
            "environment": r.environment,
            "exporter": r.exporter,
            "reason": r.reason,
            "since_ms": r.since_ms,
            "dropped_payloads": r.dropped_payloads,
            "next_try_in_ms": r.next_try_in_ms,
        })).collect::<Vec<_>>(),
    })
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
        json!(config.invalid_reason().is_none()),
        config.invalid_reason(),
    );

    let started = matches!(role, Role::Leader | Role::Client);
    let mut boot = leaf(
        json!(started),
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
        boot["output"] = json!(role.as_str());
    }

    let mut logger = leaf(
        json!(status.log_destination.is_some()),
        status
            .log_destination
            .is_none()
            .then(|| "not started: the log is opened by a start with a valid configuration".into()),
    );
    match &status.log_destination {
        Some(crate::log::Destination::File(path)) => {
            logger["output"] = json!(path.display().to_string())
        }
        Some(crate::log::Destination::Stdout) => logger["output"] = json!("stdout"),
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
        Ok(meta) => json!({
            "uid": leaf(json!(meta.uid()), None),
            "gid": leaf(json!(meta.gid()), None),
            "mode": leaf(json!(meta.mode()), None),
        }),
        Err(e) => {
            let error = format!("{}: {e}", workdir_path.display());
            json!({
                "uid": leaf(Value::Null, Some(error.clone())),
                "gid": leaf(Value::Null, Some(error.clone())),
                "mode": leaf(Value::Null, Some(error)),
            })
        }
    };

    let lock_created = match &status.workdir {
        Some(w) => {
            let lock = w.lock_path();
            match std::fs::symlink_metadata(&lock) {
                Ok(meta) if meta.is_file() => leaf(json!(true), None),
                Ok(_) => leaf(
                    json!(false),
                    Some(format!("{} is not a regular file", lock.display())),
                ),
                Err(e) => leaf(json!(false), Some(format!("{}: {e}", lock.display()))),
            }
        }
        None => leaf(
            json!(false),
            Some(status.disabled_reason.clone().unwrap_or_else(|| {
                "not started: the lock file is created by a start with a valid configuration".into()
            })),
        ),
    };

    Checks {
        extension: json!({ "config": { "valid": config_valid.clone() } }),
        agent: json!({
            "boot": { "started": boot },
            "host": {
                "uid": leaf(json!(agent::real_uid()), None),
                "gid": leaf(json!(agent::real_gid()), None),
            },
            "config": { "valid": config_valid },
            "logger": { "started": logger },
            "working_directory_stat": working_directory_stat,
            "lock_path": { "created": lock_created },
        }),
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
        json!({
            "valid": c.invalid_reason().is_none(),
            "invalid_reason": c.invalid_reason(),
            "warnings": config_warnings,
            "active": c.active,
            "push_api_key": if c.push_api_key.is_empty() { "absent" } else { "present" },
            "app_name": c.app_name,
            "environment": c.environment,
            "endpoint": c.endpoint,
            "exporters": {
                "push": c.exporters.push,
                "otlp": c.exporters.otlp,
            },
            // Endpoints and header names only: header values are secrets.
            "otlp": c.otlp.as_ref().map(|o| json!({
                "metrics_endpoint": o.metrics_endpoint,
                "traces_endpoint": o.traces_endpoint,
                "logs_endpoint": o.logs_endpoint,
                "headers": o.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
                "timeout_ms": o.timeout_ms,
                "compression": if o.gzip { "gzip" } else { "none" },
                "metrics_temporality": o.temporality().name(),
            })),
            "hostname": c.hostname,
            "revision": c.revision,
            "host_role": c.host_role,
            "language_integration_version": c.language_integration_version,
            "process_name": c.process_name,
            "files_world_accessible": c.files_world_accessible,
            "working_directory_path": c.working_directory_path.as_ref().map(|p| p.display().to_string()),
            "log": format!("{:?}", c.log).to_lowercase(),
            "log_level": c.log_level.to_string(),
            "transmission_interval_ms": c.transmission_interval.as_millis() as u64,
            "flush_interval_ms": c.flush_interval.as_millis() as u64,
        })
    });
    let workdir_report = workdir_path.as_ref().map(|p| {
        let mut r = file_report(p);
        r["source"] = json!(workdir_source);
        r["usable"] = json!(workdir.is_some());
        // The located directory was refused (something planted in it): this is the per-user one.
        r["fallback"] = json!(workdir_fallback.as_ref().map(|f| json!({
            "from": f.from.display().to_string(),
            "reason": f.reason,
        })));
        r
    });
    let (lock, socket) = match &workdir {
        Some(w) => {
            let mut lock = file_report(&w.lock_path());
            let holder = election::read_holder(&w.lock_path());
            lock["holder_pid"] = json!(holder.as_ref().map(|h| h.pid));
            lock["holder_version"] = json!(holder.as_ref().map(|h| h.version.clone()));
            (lock, file_report(&w.socket_path()))
        }
        None => (Value::Null, Value::Null),
    };
    let sender = sender_state.map(|(p, idle)| {
        json!({
            "idle": idle,
            "pending_batches": p.pending_batches,
            "last_assigned_seq": p.assigned_seq,
            "last_acked_seq": p.acked_seq,
            "dropped_batches": p.dropped_batches,
        })
    });
    json!({
        "library_version": crate::VERSION,
        "protocol_version": crate::protocol::PROTOCOL_VERSION,
        "process": {
            "pid": std::process::id(),
            "uid": workdir::current_euid(),
            "gid": workdir::current_egid(),
        },
        "role": role.as_str(),
        "sender": sender,
        "disabled_reason": disabled_reason,
        "config": config_report,
        "working_directory": workdir_report,
        "lock": lock,
        "socket": socket,
        "log": match log_destination {
            Some(crate::log::Destination::File(p)) => json!(p.display().to_string()),
            Some(crate::log::Destination::Stdout) => json!("stdout"),
            None => Value::Null,
        },
    })
}
