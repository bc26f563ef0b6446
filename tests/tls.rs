//! Pushes over HTTPS: real processes load the library and push through a TLS server on 127.0.0.1
//! (`tests/fixtures/tls_proxy.py`, Python's `ssl`) that forwards to the reference receiver, with
//! a certificate from a CA that only `_APPSIGNAL_CA_FILE_PATH` names. The library offers AES-GCM
//! suites only (`src/transmit/tls.rs`): TLS 1.3 and 1.2 servers are reached and the totals arrive
//! exactly; a server that offers nothing but ChaCha20-Poly1305 is refused with a log line, and the
//! payload stays in the cache.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use testkit::fleet::{self, WorkerProcess};
use testkit::setup::{stop_all, Setup};

const KEY: &str = "tls-key";

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the `openssl` command.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command (package openssl) is needed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"],
        &ec[..],
        &[
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    ]
    .concat());
    run(&[
        &["req"],
        &ec[..],
        &[
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// The TLS server in front of the receiver; killed on drop.
struct TlsProxy {
    child: Child,
    url: String,
    log: PathBuf,
}

impl TlsProxy {
    fn start(setup: &Setup, mode: &str) -> (TlsProxy, PathBuf) {
        let dir = setup.tmp.path();
        let (ca, cert, key) = certificates(dir);
        let log = dir.join("tls.log");
        let target = setup.receiver.url.trim_start_matches("http://").to_owned();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tls_proxy.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([
                "--cert",
                &cert.display().to_string(),
                "--key",
                &key.display().to_string(),
            ])
            .args([
                "--target",
                &target,
                "--log",
                &log.display().to_string(),
                "--mode",
                mode,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .expect("the proxy's port");
        let url = format!("https://127.0.0.1:{port}");
        (TlsProxy { child, url, log }, ca)
    }

    /// One line per handshake: `ok <version> <cipher>` or `failed <reason>`.
    fn handshakes(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Workers that push to the reference receiver through a TLS server offering `mode`.
fn behind_tls(mode: &str) -> (Setup, TlsProxy) {
    let setup = Setup::new(KEY, 400);
    let (proxy, ca) = TlsProxy::start(&setup, mode);
    let setup = setup
        .with("_APPSIGNAL_PUSH_API_ENDPOINT", &proxy.url)
        .with("_APPSIGNAL_CA_FILE_PATH", &ca.display().to_string());
    (setup, proxy)
}

/// Two processes record and stop; every total must arrive through the TLS server.
fn push_through(mode: &str) -> Vec<String> {
    let (setup, proxy) = behind_tls(mode);
    let mut workers: Vec<WorkerProcess> = (0..2).map(|i| setup.spawn(i)).collect();
    let mut expected = Value::Null;
    for w in workers.iter_mut() {
        fleet::add_sent(&mut expected, &w.record(2000).unwrap());
    }
    stop_all(&mut workers);
    setup.assert_totals(&expected);
    assert_eq!(setup.receiver.summary()["duplicates"], 0);
    let handshakes = proxy.handshakes();
    assert!(!handshakes.is_empty(), "nothing reached the TLS server");
    handshakes
}

#[test]
fn pushes_reach_a_tls13_server_with_a_private_ca_over_aes_gcm() {
    for handshake in push_through("default") {
        assert!(
            handshake.starts_with("ok TLSv1.3 TLS_AES_") && handshake.contains("_GCM_"),
            "{handshake}"
        );
    }
}

#[test]
fn pushes_reach_a_tls12_only_server_over_ecdhe_aes_gcm() {
    for handshake in push_through("tls12") {
        assert!(
            handshake.starts_with("ok TLSv1.2 ECDHE-ECDSA-AES") && handshake.contains("GCM"),
            "{handshake}"
        );
    }
}

#[test]
fn a_server_with_chacha20_only_is_refused_with_a_log_line_and_the_payload_kept() {
    let (setup, proxy) = behind_tls("chacha-only");
    let mut worker = setup.spawn(0);
    worker.record(100).unwrap();
    setup.await_log(
        &format!("push to {} failed", proxy.url),
        Duration::from_secs(30),
    );
    stop_all(std::slice::from_mut(&mut worker));
    assert_eq!(setup.receiver.summary()["payloads"], 0);
    let handshakes = proxy.handshakes();
    assert!(
        !handshakes.is_empty() && handshakes.iter().all(|h| h.starts_with("failed")),
        "{handshakes:?}"
    );
    let cached = std::fs::read_dir(setup.workdir().join("payloads"))
        .unwrap()
        .count();
    assert!(cached >= 1, "the payload was not kept in the cache");
}
