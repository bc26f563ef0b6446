//! The working directory as an attack surface, and secrets, with real processes: links planted at
//! every path the agent uses are never followed or chmodded and move the agent to the per-user
//! fallback directory (which keeps delivering, exactly); a directory of another user; the modes of
//! everything in both permission modes, bit by bit; a process of another uid refused at connect in
//! owner-only mode; the push key and OTLP header values (both exporters on) in no log, file
//! (cached OTLP requests included), diagnose or stderr.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use testkit::fleet::{self, WorkerProcess};
use testkit::receiver::Receiver;
use testkit::setup::{stop_all, Setup};

const KEY: &str = "fs-test-push-key-9f3a71c2";

/// The common set-up, with the per-user fallback directory under `$TMPDIR`: one per test, not
/// the host's /tmp.
fn setup_with_tmpdir(interval_ms: u64) -> Setup {
    let setup = Setup::new(KEY, interval_ms);
    let tmpdir = setup.tmp.path().join("tmpdir");
    std::fs::create_dir(&tmpdir).unwrap();
    setup.with("TMPDIR", &tmpdir.display().to_string())
}

/// The per-user fallback directory the agent moves to when the working directory is unusable.
fn fallback(setup: &Setup) -> PathBuf {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    setup
        .tmp
        .path()
        .join("tmpdir")
        .join(format!("appsignal-{uid}"))
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// A file and a directory with modes the agent never sets, as targets of planted links.
fn victims(tmp: &Path) -> (PathBuf, PathBuf) {
    let file = tmp.join("victim-file");
    std::fs::write(&file, b"keep").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let dir = tmp.join("victim-dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    (file, dir)
}

fn assert_untouched(file: &Path, dir: &Path) {
    assert_eq!(
        std::fs::read(file).unwrap(),
        b"keep",
        "written through a link"
    );
    assert_eq!(mode(file), 0o640, "a link target was chmodded");
    assert_eq!(mode(dir), 0o750, "a link target was chmodded");
    assert!(
        std::fs::read_dir(dir).unwrap().next().is_none(),
        "something was created through a link"
    );
}

/// Two processes record and stop; the receiver's totals must equal what they sent.
fn record_and_check(setup: &Setup, workers: &mut [WorkerProcess]) {
    let mut expected = Value::Null;
    let mut last = Vec::new();
    for w in workers.iter_mut() {
        last.push(w.record(300).unwrap());
    }
    for sent in &last {
        fleet::add_sent(&mut expected, sent);
    }
    stop_all(workers);
    setup.assert_totals(&expected);
}

#[test]
fn links_planted_at_every_path_are_not_followed_and_the_agent_falls_back() {
    for entry in [
        "",
        "agent.lock",
        "agent.socket",
        "appsignal.log",
        "journal",
        "payloads",
    ] {
        let setup = setup_with_tmpdir(300);
        let (file, dir) = victims(setup.tmp.path());
        let wd = setup.workdir();
        if entry.is_empty() {
            std::os::unix::fs::symlink(&dir, &wd).unwrap();
        } else {
            std::fs::create_dir(&wd).unwrap();
            let target = if matches!(entry, "journal" | "payloads") {
                &dir
            } else {
                &file
            };
            std::os::unix::fs::symlink(target, wd.join(entry)).unwrap();
        }
        let mut workers: Vec<WorkerProcess> = (0..2).map(|i| setup.spawn(i)).collect();
        let mut roles: Vec<&str> = workers.iter().map(|w| w.role.as_str()).collect();
        roles.sort_unstable();
        assert_eq!(roles, ["client", "leader"], "planted {entry:?}");
        for w in workers.iter_mut() {
            let report = w.diagnose().unwrap();
            let wdr = &report["leader_election"]["working_directory"];
            assert_eq!(
                wdr["path"].as_str().unwrap(),
                fallback(&setup).to_str().unwrap(),
                "{report}"
            );
            assert_eq!(wdr["mode"], "700", "{report}");
            assert_eq!(wdr["fallback"]["from"], wd.to_str().unwrap(), "{report}");
            let reason = wdr["fallback"]["reason"].as_str().unwrap();
            let planted = if entry.is_empty() {
                wd.clone()
            } else {
                wd.join(entry)
            };
            assert!(reason.contains(planted.to_str().unwrap()), "{reason}");
        }
        let log = std::fs::read_to_string(fallback(&setup).join("appsignal.log")).unwrap();
        assert!(
            log.contains("refused") && log.contains("using the per-user directory"),
            "{log}"
        );
        record_and_check(&setup, &mut workers);
        assert_untouched(&file, &dir);
        // The planted link is still there, untouched.
        assert!(std::fs::symlink_metadata(if entry.is_empty() {
            wd.clone()
        } else {
            wd.join(entry)
        })
        .unwrap()
        .file_type()
        .is_symlink());
    }
}

#[test]
fn a_link_planted_at_the_lock_while_running_moves_the_processes_to_the_fallback() {
    let setup = setup_with_tmpdir(300);
    let (file, dir) = victims(setup.tmp.path());
    let mut workers: Vec<WorkerProcess> = (0..2).map(|i| setup.spawn(i)).collect();
    let mut expected = Value::Null;
    let mut sent: Vec<Value> = workers.iter_mut().map(|w| w.record(200).unwrap()).collect();
    for w in workers.iter_mut() {
        w.sync().unwrap();
    }
    // A tmp cleaner removes the lock file; someone plants a link in its place.
    let lock = setup.workdir().join("agent.lock");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&file, &lock).unwrap();
    // Every process ends up in the fallback directory, and one of them leads there.
    assert!(
        testkit::poll(Duration::from_secs(30), || {
            workers.iter_mut().all(|w| {
                let report = w.diagnose().unwrap();
                report["leader_election"]["working_directory"]["fallback"]["from"].is_string()
                    && matches!(
                        report["leader_election"]["role"].as_str(),
                        Some("leader" | "client")
                    )
            })
        }),
        "the processes did not move to the fallback directory"
    );
    for (w, s) in workers.iter_mut().zip(sent.iter_mut()) {
        *s = w.record(200).unwrap();
    }
    for s in &sent {
        fleet::add_sent(&mut expected, s);
    }
    for w in workers.iter_mut() {
        w.role = w.diagnose().unwrap()["leader_election"]["role"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    stop_all(&mut workers);
    setup.assert_totals(&expected);
    assert_untouched(&file, &dir);
}

/// Every path in the working directory, and every file in `journal/` and `payloads/`, with its
/// mode: directory and file modes are exact, bit by bit.
fn assert_modes(wd: &Path, dir_mode: u32, file_mode: u32, running: bool) {
    assert_eq!(mode(wd), dir_mode, "{}", wd.display());
    for name in ["journal", "payloads"] {
        assert_eq!(mode(&wd.join(name)), dir_mode, "{name}/");
    }
    // The last leader removes its socket when it stops.
    let files: &[&str] = if running {
        &["agent.lock", "agent.socket", "appsignal.log"]
    } else {
        &["agent.lock", "appsignal.log"]
    };
    for name in files {
        assert_eq!(mode(&wd.join(name)), file_mode, "{name}");
    }
    let mut checked = 0;
    for name in ["journal", "payloads"] {
        for entry in std::fs::read_dir(wd.join(name)).unwrap() {
            let path = entry.unwrap().path();
            // A payload being written is a `.tmp-…` file for a moment, created under the umask
            // and given its mode by `fchmod` right after, before it is renamed into place: the
            // test looks at the files as they are kept, not in that instant.
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
            {
                continue;
            }
            // A segment or payload may be removed between the listing and the look (pushed).
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                assert_eq!(meta.mode() & 0o7777, file_mode, "{}", path.display());
                checked += 1;
            }
        }
    }
    if running {
        assert!(checked > 0, "no journal or payload file was checked");
    }
}

#[test]
fn both_permission_modes_bit_by_bit_including_journal_and_payload_files() {
    for (world_accessible, dir_mode, file_mode) in [(true, 0o777, 0o666), (false, 0o700, 0o600)] {
        // Pushes fail (nothing listens there), so windows become files in payloads/.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let setup = setup_with_tmpdir(200)
            .with("_APPSIGNAL_PUSH_API_ENDPOINT", &endpoint)
            .with(
                "_APPSIGNAL_FILES_WORLD_ACCESSIBLE",
                &world_accessible.to_string(),
            );
        let mut workers: Vec<WorkerProcess> = (0..2).map(|i| setup.spawn(i)).collect();
        let wd = setup.workdir();
        let has_files =
            |name: &str| std::fs::read_dir(wd.join(name)).is_ok_and(|mut d| d.next().is_some());
        // Record until a window is journaled and an earlier one waits in payloads/ at the same time.
        assert!(
            testkit::poll(Duration::from_secs(30), || {
                for w in workers.iter_mut() {
                    w.record(20).unwrap();
                }
                has_files("journal") && has_files("payloads")
            }),
            "no journal and payload files appeared"
        );
        assert_modes(&wd, dir_mode, file_mode, true);
        stop_all(&mut workers);
        assert_modes(&wd, dir_mode, file_mode, false);
    }
}

#[test]
fn a_working_directory_of_another_user() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED: needs root to make a directory of another user (sudo -E cargo test --test filesystem)"
        );
        return;
    }
    for world_accessible in [true, false] {
        let setup = setup_with_tmpdir(300).with(
            "_APPSIGNAL_FILES_WORLD_ACCESSIBLE",
            &world_accessible.to_string(),
        );
        let wd = setup.workdir();
        std::fs::create_dir(&wd).unwrap();
        std::fs::set_permissions(&wd, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::chown(&wd, Some(65534), Some(65534)).unwrap();
        let mut workers: Vec<WorkerProcess> = (0..2).map(|i| setup.spawn(i)).collect();
        let report = workers[0].diagnose().unwrap();
        let used = report["leader_election"]["working_directory"]["path"]
            .as_str()
            .unwrap()
            .to_owned();
        if world_accessible {
            // Shared, as world-accessible mode says (a deploy user and an app user): used, and
            // neither chowned nor chmodded.
            assert_eq!(used, wd.to_str().unwrap(), "{report}");
            assert!(
                report["leader_election"]["working_directory"]["fallback"].is_null(),
                "{report}"
            );
            assert_eq!(mode(&wd.join("agent.lock")), 0o666);
        } else {
            assert_eq!(used, fallback(&setup).to_str().unwrap(), "{report}");
            let reason = report["leader_election"]["working_directory"]["fallback"]["reason"]
                .as_str()
                .unwrap();
            assert!(reason.contains("owned by uid 65534"), "{reason}");
            assert!(!wd.join("agent.lock").exists(), "nothing created in it");
        }
        let meta = std::fs::metadata(&wd).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (65534, 0o777));
        record_and_check(&setup, &mut workers);
    }
}

/// A `Hello` frame as a client sends it, encoded before the fork (the child must not allocate).
fn hello_frame() -> Vec<u8> {
    let hello = appsignal_agent::protocol::ClientMessage::Hello(appsignal_agent::protocol::Hello {
        protocol_version: appsignal_agent::protocol::PROTOCOL_VERSION,
        protocol: None,
        library_version: appsignal_agent::VERSION.into(),
        client_id: 0x5eed,
        pid: std::process::id(),
        config: appsignal_agent::export_config::ExportConfig {
            push_api_key: "another-users-key".into(),
            app_name: "intruder".into(),
            environment: "x".into(),
            endpoint: "http://127.0.0.1:9".into(),
            hostname: "h".into(),
            revision: String::new(),
            ..appsignal_agent::export_config::ExportConfig::default()
        },
    });
    appsignal_agent::protocol::encode(&hello).unwrap()
}

/// Forks a child that (with `uid`) drops to that uid and gid, connects to `socket`, sends a
/// handshake and reads the answer. Exit code: 0 answered (welcomed), 1 closed without an answer,
/// 2 could not connect, 3 could not drop privileges.
fn peer_of_uid(socket: &Path, uid: Option<u32>) -> i32 {
    let frame = hello_frame();
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in addr
        .sun_path
        .iter_mut()
        .zip(socket.as_os_str().as_encoded_bytes())
    {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: the child calls only async-signal-safe functions (setgroups, setgid, setuid, socket,
    // connect, write, read, _exit) on memory prepared before the fork.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            if let Some(uid) = uid {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0
                    || libc::geteuid() != uid
                {
                    libc::_exit(3);
                }
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if fd < 0 || libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                libc::_exit(2);
            }
            libc::write(fd, frame.as_ptr().cast(), frame.len());
            let mut answer = [0u8; 256];
            let n = libc::read(fd, answer.as_mut_ptr().cast(), answer.len());
            libc::_exit(if n > 0 { 0 } else { 1 });
        }
        assert!(pid > 0, "fork failed");
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        assert!(libc::WIFEXITED(status), "child status {status}");
        libc::WEXITSTATUS(status)
    }
}

#[test]
fn owner_only_mode_refuses_a_process_of_another_uid_at_connect() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED: needs root to run a child as another uid (sudo -E cargo test --test filesystem)"
        );
        return;
    }
    let setup = setup_with_tmpdir(300).with("_APPSIGNAL_FILES_WORLD_ACCESSIBLE", "false");
    let mut workers: Vec<WorkerProcess> = (0..2).map(|i| setup.spawn(i)).collect();
    let wd = setup.workdir();
    let socket = wd.join("agent.socket");
    // The directory modes alone keep another uid out (0700): open the path up so that the peer
    // reaches the socket and meets the second line of defence, the SO_PEERCRED check.
    for path in [setup.tmp.path(), wd.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    // The same child as root (our uid) is welcomed: the probe can tell the two apart.
    assert_eq!(
        peer_of_uid(&socket, None),
        0,
        "our own uid must be welcomed"
    );
    assert_eq!(
        peer_of_uid(&socket, Some(65534)),
        1,
        "uid 65534 must be refused at connect"
    );
    let log = std::fs::read_to_string(wd.join("appsignal.log")).unwrap();
    assert!(
        log.contains("refused a connection from uid 65534 (pid "),
        "{log}"
    );
    assert!(
        !log.contains("pid Some(") && !log.contains("uid Some("),
        "peers are named by number: {log}"
    );
    // The leader serves on.
    record_and_check(&setup, &mut workers);
}

#[test]
fn the_push_key_and_otlp_header_values_appear_nowhere() {
    const OTLP_SECRET: &str = "SECRET123otlp";
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    // Accepted pushes, pushes refused with 401 (the receiver expects another key), and pushes to
    // nothing (connection refused): each with the log at trace level.
    // Both exporters at once: the OTLP requests go to nothing, so they stay in payloads/ (the
    // resource of an OTLP request names the push key when it is sent; the cached one must not).
    let wrong_key_receiver = Receiver::start("another-key", None).unwrap();
    for endpoint in [
        None,
        Some(wrong_key_receiver.url.clone()),
        Some(unreachable.clone()),
    ] {
        let mut setup = setup_with_tmpdir(200)
            .with("_APPSIGNAL_LOG_LEVEL", "trace")
            .with("_APPSIGNAL_EXPORTER", "push,otlp")
            .with("_APPSIGNAL_OTLP_ENDPOINT", &unreachable)
            .with(
                "_APPSIGNAL_OTLP_HEADERS",
                &format!("x-api-key={OTLP_SECRET}"),
            )
            .with("_APPSIGNAL_STOP_TIMEOUT_MS", "1000");
        if let Some(endpoint) = &endpoint {
            setup = setup.with("_APPSIGNAL_PUSH_API_ENDPOINT", endpoint);
        }
        let stderr_path = setup.tmp.path().join("stderr");
        let mut seen = String::new();
        let mut workers: Vec<WorkerProcess> = (0..2)
            .map(|i| {
                let stderr =
                    std::fs::File::create(stderr_path.with_extension(i.to_string())).unwrap();
                WorkerProcess::spawn_with_stderr(
                    &testkit::worker_exe(),
                    &[i.to_string()],
                    &setup.env,
                    Stdio::from(stderr),
                )
                .unwrap()
            })
            .collect();
        for w in workers.iter_mut() {
            w.record(100).unwrap();
            w.send("txn 5").unwrap();
            w.expect("sent", Duration::from_secs(30)).unwrap();
        }
        // Let windows close and be pushed (or fail to be).
        assert!(
            testkit::poll(Duration::from_secs(30), || {
                let log = std::fs::read_to_string(setup.workdir().join("appsignal.log"))
                    .unwrap_or_default();
                ["sent push payload", "not sent", "dropped:"]
                    .iter()
                    .any(|m| log.contains(m))
                    && log.contains("OTLP metrics export to")
            }),
            "no push and OTLP export were attempted (endpoint {endpoint:?})"
        );
        for w in workers.iter_mut() {
            seen.push_str(&w.diagnose().unwrap().to_string());
        }
        stop_all(&mut workers);
        // Everything on disk under the test's directory: log, journal, payloads, lock, stderr.
        let mut files = vec![setup.tmp.path().to_path_buf()];
        let mut read = 0;
        let mut otlp_cached = 0;
        while let Some(path) = files.pop() {
            if path.starts_with(setup.tmp.path().join("received")) {
                continue; // what the receiver stored: the payload bodies it was sent
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                let mut text = String::from_utf8_lossy(&bytes).into_owned();
                // Cached payloads are gzip: look inside too.
                let mut inflated = Vec::new();
                if std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(&bytes[..]),
                    &mut inflated,
                )
                .is_ok()
                {
                    text.push_str(&String::from_utf8_lossy(&inflated));
                }
                for (secret, what) in [(KEY, "the push key"), (OTLP_SECRET, "an OTLP header value")]
                {
                    assert!(
                        !text.contains(secret),
                        "{} holds {what} (endpoint {endpoint:?})",
                        path.display()
                    );
                }
                seen.push_str(&text);
                read += 1;
                otlp_cached += usize::from(path.to_string_lossy().ends_with(".otlp.gz"));
            }
        }
        assert!(read >= 4, "read {read} files");
        assert!(otlp_cached >= 1, "no cached OTLP request was read");
        // What was read is what the agent wrote: the app name is in the log and diagnose.
        assert!(seen.contains("demo-app"), "nothing was read");
        assert!(
            !seen.contains(KEY),
            "the push key leaked in diagnose (endpoint {endpoint:?})"
        );
        assert!(
            !seen.contains(OTLP_SECRET),
            "an OTLP header value leaked in diagnose (endpoint {endpoint:?})"
        );
    }
}
