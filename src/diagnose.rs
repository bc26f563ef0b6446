//! `appsignal_diagnose()`: a JSON report of what the agent in this process sees: configuration
//! (the push key only as present/absent), working directory (path, owner, mode, writable), lock
//! (path, holder pid), socket, role, the sender's progress (`sender.idle`: everything recorded so
//! far is acknowledged by a leader), why the agent is disabled if it is, and
//! (`working_directory.fallback`) why the per-user working directory is used instead of the located one.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::{json, Value};

use crate::agent::{self, Status};
use crate::election;
use crate::workdir;

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

/// The report as JSON.
pub fn report() -> Value {
    // Notices a fork first, so that a child reports its own state, not the parent's.
    let sender_state = agent::sender_progress();
    let Status {
        config,
        config_warnings,
        workdir,
        workdir_path,
        workdir_source,
        log_destination,
        disabled_reason,
        workdir_fallback,
    } = agent::status_snapshot();
    let config_report = config.as_ref().map(|c| {
        json!({
            "valid": c.invalid_reason().is_none(),
            "invalid_reason": c.invalid_reason(),
            "warnings": config_warnings,
            "active": c.active,
            "push_api_key": if c.push.push_api_key.is_empty() { "absent" } else { "present" },
            "app_name": c.push.app_name,
            "environment": c.push.environment,
            "endpoint": c.push.endpoint,
            "hostname": c.push.hostname,
            "revision": c.push.revision,
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
        "role": agent::role().as_str(),
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
