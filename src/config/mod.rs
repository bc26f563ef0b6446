//! Configuration: read once at `start()` from the process environment and from the library's own
//! environment table (`appsignal_env_put`, for VMs that cannot set real environment variables).
//! The table wins over the process environment. A malformed value gives a warning (logged once the
//! log is open) and the default; it never fails the start.
//!
//! [`Config`] is what this process read; it never crosses the socket or reaches a disk. What a
//! leader needs of it is [`Config::export_config`], built here and nowhere else.

pub mod otlp;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use once_cell::sync::Lazy;

use crate::export_config::{ExportConfig, Exporters, OtlpSettings, PrometheusSettings};
use otlp::ResourceInputs;

/// The library's own environment table, filled through `appsignal_env_put`.
static ENV_TABLE: Lazy<Mutex<HashMap<String, String>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// The table's lock (also taken by the agent around a `fork()`, see `agent::install_fork_handlers`).
pub(crate) fn table() -> std::sync::MutexGuard<'static, HashMap<String, String>> {
    // A panic while holding this lock cannot leave the map half-updated, so a poisoned lock is usable.
    ENV_TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn env_put(key: &str, value: &str) {
    let mut table = table();
    crate::test_knobs::hold("env_put");
    table.insert(key.to_owned(), value.to_owned());
}

pub fn env_get(key: &str) -> Option<String> {
    table().get(key).cloned()
}

pub fn env_delete(key: &str) {
    table().remove(key);
}

pub fn env_clear() {
    table().clear();
}

/// Default Push API endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://push.appsignal.com";

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    File,
    Stdout,
}

/// Which listeners the leader runs for other processes on the host (StatsD, OTLP/HTTP).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listeners {
    pub statsd: Option<SocketAddr>,
    pub otlp_http: Option<SocketAddr>,
}

/// The whole configuration of one process.
#[derive(Clone)]
pub struct Config {
    pub active: bool,
    /// None of `_APPSIGNAL_ACTIVE`, `_APPSIGNAL_PUSH_API_KEY` and `_APPSIGNAL_EXPORTER` is set (in
    /// the library table or the environment): what a package's test suite leaves after clearing the
    /// environment. Unlike an explicit `_APPSIGNAL_ACTIVE=false`, `start()` warns about it.
    pub nothing_configured: bool,
    /// `_APPSIGNAL_PUSH_API_KEY`: a secret.
    pub push_api_key: String,
    pub app_name: String,
    pub environment: String,
    /// The Push API endpoint, without a trailing `/`.
    pub endpoint: String,
    pub hostname: String,
    pub revision: String,
    /// `_APPSIGNAL_HOST_ROLE`: what this host does (e.g. `web`, `worker`), sent with every payload.
    pub host_role: Option<String>,
    /// `_APPSIGNAL_LANGUAGE_INTEGRATION_VERSION`: the language package that loaded the library
    /// (e.g. `ruby-4.0.0`), sent with every payload.
    pub language_integration_version: Option<String>,
    pub exporters: Exporters,
    /// Set when `exporters.otlp` is ([`otlp`]).
    pub otlp: Option<OtlpSettings>,
    pub working_directory_path: Option<PathBuf>,
    pub log: LogTarget,
    pub log_level: tracing::Level,
    pub log_file_path: Option<PathBuf>,
    pub files_world_accessible: bool,
    pub enable_host_metrics: bool,
    pub running_in_container: Option<bool>,
    pub ca_file_path: Option<PathBuf>,
    pub http_proxy: Option<String>,
    /// `_APPSIGNAL_PROCESS_NAME`: shown in every line this process writes to the log.
    pub process_name: Option<String>,
    pub ignore_actions: Vec<String>,
    pub ignore_errors: Vec<String>,
    pub ignore_namespaces: Vec<String>,
    pub filter_parameters: Vec<String>,
    pub filter_session_data: Vec<String>,
    /// How often the leader closes a window and pushes it (`_APPSIGNAL_TRANSMISSION_INTERVAL_MS`).
    pub transmission_interval: Duration,
    /// How often a process hands its pre-aggregated data to the leader (`_APPSIGNAL_FLUSH_INTERVAL_MS`).
    pub flush_interval: Duration,
    /// Longest time `stop()` waits for the flush and, in the leader, the last push.
    pub stop_timeout: Duration,
    /// Timeout of one HTTP request to the Push API.
    pub push_timeout: Duration,
    /// After a receiver refused a configuration's credentials (401/403), how long the leader
    /// waits before it tries that configuration's exporter again with one request
    /// (`_APPSIGNAL_REFUSED_KEY_RETRY_INTERVAL_MS`).
    pub refused_key_retry_interval: Duration,
    pub payload_cache_max_files: usize,
    pub payload_cache_max_bytes: u64,
    /// How often the leader collects host metrics (`_APPSIGNAL_HOST_METRICS_INTERVAL_MS`).
    pub host_metrics_interval: Duration,
    /// Share (0.0 … 1.0) of transactions sampled although fast and without error (`_APPSIGNAL_SAMPLE_RATE`).
    pub sample_rate: f64,
    /// Listeners the leader hosts for other processes (StatsD, OTLP/HTTP); off by default.
    pub listeners: Listeners,
    /// The Prometheus endpoint this configuration asks the leader for (`_APPSIGNAL_PROMETHEUS_*`);
    /// off by default.
    pub prometheus: Option<PrometheusSettings>,
    /// A series of the cumulative view not updated for this long is dropped
    /// (`_APPSIGNAL_CUMULATIVE_EXPIRY_MS`, 24 h by default).
    pub cumulative_expiry: Duration,
    /// The library version this process announces (the build's, unless a test build overrides
    /// it: `test_library_version`).
    pub library_version: String,
    /// The oldest and newest protocol this process speaks (the build's, unless a test build
    /// overrides them: `test_protocols`).
    pub protocols: (u32, u32),
}

impl fmt::Debug for Config {
    // Hand-written so that the push key can never reach a log line through `{:?}` (OTLP header
    // values are hidden by `OtlpSettings`'s own `Debug`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("active", &self.active)
            .field("nothing_configured", &self.nothing_configured)
            .field("push_api_key", &"[REDACTED]")
            .field("app_name", &self.app_name)
            .field("environment", &self.environment)
            .field("endpoint", &self.endpoint)
            .field("hostname", &self.hostname)
            .field("revision", &self.revision)
            .field("host_role", &self.host_role)
            .field(
                "language_integration_version",
                &self.language_integration_version,
            )
            .field("exporters", &self.exporters)
            .field("otlp", &self.otlp)
            .field("working_directory_path", &self.working_directory_path)
            .field("log", &self.log)
            .field("log_level", &self.log_level)
            .field("log_file_path", &self.log_file_path)
            .field("files_world_accessible", &self.files_world_accessible)
            .field("enable_host_metrics", &self.enable_host_metrics)
            .field("running_in_container", &self.running_in_container)
            .field("ca_file_path", &self.ca_file_path)
            .field("http_proxy", &self.http_proxy)
            .field("process_name", &self.process_name)
            .field("ignore_actions", &self.ignore_actions)
            .field("ignore_errors", &self.ignore_errors)
            .field("ignore_namespaces", &self.ignore_namespaces)
            .field("filter_parameters", &self.filter_parameters)
            .field("filter_session_data", &self.filter_session_data)
            .field("transmission_interval", &self.transmission_interval)
            .field("flush_interval", &self.flush_interval)
            .field("stop_timeout", &self.stop_timeout)
            .field("push_timeout", &self.push_timeout)
            .field(
                "refused_key_retry_interval",
                &self.refused_key_retry_interval,
            )
            .field("payload_cache_max_files", &self.payload_cache_max_files)
            .field("payload_cache_max_bytes", &self.payload_cache_max_bytes)
            .field("host_metrics_interval", &self.host_metrics_interval)
            .field("sample_rate", &self.sample_rate)
            .field("listeners", &self.listeners)
            .field("prometheus", &self.prometheus)
            .field("cumulative_expiry", &self.cumulative_expiry)
            .field("library_version", &self.library_version)
            .finish()
    }
}

/// When none of these is set, nothing is configured ([`Config::nothing_configured`]).
const NOTHING_CONFIGURED_KEYS: [&str; 3] = [
    "_APPSIGNAL_ACTIVE",
    "_APPSIGNAL_PUSH_API_KEY",
    "_APPSIGNAL_EXPORTER",
];

/// A configuration and the warnings found while reading it.
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Reads one variable: the library table first, then the process environment. Empty means unset.
fn lookup(key: &str) -> Option<String> {
    env_get(key)
        .or_else(|| std::env::var(key).ok())
        .filter(|v| !v.trim().is_empty())
}

struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    warnings: Vec<String>,
}

impl Reader<'_> {
    fn string(&self, key: &str) -> Option<String> {
        (self.lookup)(key).map(|v| v.trim().to_owned())
    }

    fn bool(&mut self, key: &str, default: bool) -> bool {
        self.opt_bool(key).unwrap_or(default)
    }

    /// `None` when unset or malformed (with a warning).
    fn opt_bool(&mut self, key: &str) -> Option<bool> {
        let v = self.string(key)?;
        match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => {
                self.warnings.push(format!(
                    "{key}={v:?} is not a boolean (true/false); using the default"
                ));
                None
            }
        }
    }

    fn millis(&mut self, key: &str, default_ms: u64, min_ms: u64, max_ms: u64) -> Duration {
        let ms = match self.string(key) {
            None => default_ms,
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if (min_ms..=max_ms).contains(&ms) => ms,
                _ => {
                    self.warnings.push(format!(
                        "{key}={v:?} is not a number of milliseconds in {min_ms}..={max_ms}; using the default {default_ms}"
                    ));
                    default_ms
                }
            },
        };
        Duration::from_millis(ms)
    }

    fn number(&mut self, key: &str, default: u64, min: u64) -> u64 {
        match self.string(key) {
            None => default,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n >= min => n,
                _ => {
                    self.warnings.push(format!(
                        "{key}={v:?} is not a whole number >= {min}; using the default {default}"
                    ));
                    default
                }
            },
        }
    }

    fn fraction(&mut self, key: &str, default: f64) -> f64 {
        match self.string(key) {
            None => default,
            Some(v) => match v.parse::<f64>() {
                Ok(f) if (0.0..=1.0).contains(&f) => f,
                _ => {
                    self.warnings.push(format!(
                        "{key}={v:?} is not a number between 0 and 1; using the default {default}"
                    ));
                    default
                }
            },
        }
    }

    fn list(&self, key: &str) -> Vec<String> {
        self.string(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `_APPSIGNAL_EXPORTER`: `push`, `otlp` or both, comma-separated.
    fn exporters(&mut self) -> Exporters {
        let Some(v) = self.string("_APPSIGNAL_EXPORTER") else {
            return Exporters::default();
        };
        let mut exporters = Exporters {
            push: false,
            otlp: false,
        };
        for name in v.split(',').map(|n| n.trim().to_ascii_lowercase()) {
            match name.as_str() {
                "push" => exporters.push = true,
                "otlp" => exporters.otlp = true,
                "" => {}
                _ => {
                    self.warnings.push(format!(
                        "_APPSIGNAL_EXPORTER={v:?}: {name:?} is not push or otlp; using push"
                    ));
                    return Exporters::default();
                }
            }
        }
        if !exporters.push && !exporters.otlp {
            return Exporters::default();
        }
        exporters
    }

    /// `_APPSIGNAL_ENABLE_STATSD`, `_APPSIGNAL_STATSD_PORT`, `_APPSIGNAL_STATSD_BIND`,
    /// `_APPSIGNAL_OTLP_HTTP_PORT`, `_APPSIGNAL_OTLP_HTTP_BIND`.
    fn listeners(&mut self) -> Listeners {
        let mut listeners = Listeners::default();
        if self.bool("_APPSIGNAL_ENABLE_STATSD", false) {
            let port = self.port("_APPSIGNAL_STATSD_PORT", 8125);
            listeners.statsd = self.listen_addr("_APPSIGNAL_STATSD_BIND", port);
        }
        if self.string("_APPSIGNAL_OTLP_HTTP_PORT").is_some() {
            let port = self.port("_APPSIGNAL_OTLP_HTTP_PORT", 8099);
            listeners.otlp_http = self.listen_addr("_APPSIGNAL_OTLP_HTTP_BIND", port);
        }
        listeners
    }

    /// `_APPSIGNAL_PROMETHEUS_PORT` (off when unset), `_APPSIGNAL_PROMETHEUS_BIND`,
    /// `_APPSIGNAL_PROMETHEUS_BEARER_TOKEN`. Whether a bind beyond loopback has its token is the
    /// leader's check (it logs the refusal once, where the endpoint would be).
    fn prometheus(&mut self) -> Option<PrometheusSettings> {
        self.string("_APPSIGNAL_PROMETHEUS_PORT")
            .filter(|v| !v.is_empty())?;
        let port = self.port("_APPSIGNAL_PROMETHEUS_PORT", 9464);
        let addr = self.listen_addr("_APPSIGNAL_PROMETHEUS_BIND", port)?;
        Some(PrometheusSettings {
            port,
            bind: addr.ip().to_string(),
            bearer_token: self
                .string("_APPSIGNAL_PROMETHEUS_BEARER_TOKEN")
                .unwrap_or_default(),
        })
    }

    fn port(&mut self, key: &str, default: u16) -> u16 {
        match self.string(key) {
            None => default,
            Some(v) => match v.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    self.warnings.push(format!(
                        "{key}={v:?} is not a port number (1..=65535); using {default}"
                    ));
                    default
                }
            },
        }
    }

    /// The bind address `key` names (an IP address; 127.0.0.1 when unset) with `port`; `None`
    /// (with a warning) when it is not an IP address: a listener must not open on a guess.
    fn listen_addr(&mut self, key: &str, port: u16) -> Option<SocketAddr> {
        let ip = match self.string(key) {
            None => std::net::IpAddr::from([127, 0, 0, 1]),
            Some(v) => match v.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
                Ok(ip) => ip,
                Err(_) => {
                    self.warnings.push(format!(
                        "{key}={v:?} is not an IP address; that listener stays off"
                    ));
                    return None;
                }
            },
        };
        Some(SocketAddr::new(ip, port))
    }

    fn level(&mut self, key: &str) -> tracing::Level {
        match self.string(key).map(|v| v.to_ascii_lowercase()) {
            None => tracing::Level::INFO,
            Some(v) => match v.as_str() {
                "error" => tracing::Level::ERROR,
                "warn" | "warning" => tracing::Level::WARN,
                "info" => tracing::Level::INFO,
                "debug" => tracing::Level::DEBUG,
                "trace" => tracing::Level::TRACE,
                _ => {
                    self.warnings.push(format!(
                        "{key}={v:?} is not a log level (error, warn, info, debug, trace); using info"
                    ));
                    tracing::Level::INFO
                }
            },
        }
    }
}

/// The machine's host name, as `gethostname(2)` gives it.
pub fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes at most that many.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_owned();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `_APPSIGNAL_TEST_LIBRARY_VERSION` (pretend to be another library version, to test takeovers)
/// is honoured only in builds with the `test-knobs` feature: in a shipped library it would let any
/// environment make every leader hand over.
#[cfg(any(test, feature = "test-knobs"))]
fn test_library_version(r: &Reader<'_>) -> Option<String> {
    r.string("_APPSIGNAL_TEST_LIBRARY_VERSION")
}

#[cfg(not(any(test, feature = "test-knobs")))]
fn test_library_version(_: &Reader<'_>) -> Option<String> {
    None
}

/// `_APPSIGNAL_TEST_PROTOCOLS=oldest-newest` (or one number): the protocols this process speaks,
/// within those the build speaks, so that a test can run a process that speaks protocol 2 only
/// (as the previous release did) next to others. Honoured only with the `test-knobs` feature.
#[cfg(any(test, feature = "test-knobs"))]
fn test_protocols(r: &Reader<'_>) -> Option<(u32, u32)> {
    use crate::protocol::{OLDEST_PROTOCOL, PROTOCOL_VERSION};
    let text = r.string("_APPSIGNAL_TEST_PROTOCOLS")?;
    let (oldest, newest) = text.split_once('-').unwrap_or((&text, &text));
    let (oldest, newest) = (oldest.trim().parse().ok()?, newest.trim().parse().ok()?);
    let known = OLDEST_PROTOCOL..=PROTOCOL_VERSION;
    (known.contains(&oldest) && known.contains(&newest) && oldest <= newest)
        .then_some((oldest, newest))
}

#[cfg(not(any(test, feature = "test-knobs")))]
fn test_protocols(_: &Reader<'_>) -> Option<(u32, u32)> {
    None
}

impl Config {
    /// Reads the configuration from the library table and the process environment.
    pub fn load() -> Loaded {
        Self::load_from(&lookup)
    }

    /// Reads the configuration through `lookup` (tests pass a map).
    pub fn load_from(lookup: &dyn Fn(&str) -> Option<String>) -> Loaded {
        let mut r = Reader {
            lookup,
            warnings: Vec::new(),
        };
        let log = match r.string("_APPSIGNAL_LOG").map(|v| v.to_ascii_lowercase()) {
            None => LogTarget::File,
            Some(v) if v == "file" => LogTarget::File,
            Some(v) if v == "stdout" => LogTarget::Stdout,
            Some(v) => {
                r.warnings.push(format!(
                    "_APPSIGNAL_LOG={v:?} is not file or stdout; using file"
                ));
                LogTarget::File
            }
        };
        let exporters = r.exporters();
        let nothing_configured = NOTHING_CONFIGURED_KEYS
            .iter()
            .all(|key| r.string(key).filter(|v| !v.is_empty()).is_none());
        let mut config = Config {
            active: r.bool("_APPSIGNAL_ACTIVE", false),
            nothing_configured,
            push_api_key: r.string("_APPSIGNAL_PUSH_API_KEY").unwrap_or_default(),
            app_name: r.string("_APPSIGNAL_APP_NAME").unwrap_or_default(),
            environment: r
                .string("_APPSIGNAL_APP_ENV")
                .unwrap_or_else(|| "development".to_owned()),
            endpoint: r
                .string("_APPSIGNAL_PUSH_API_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_owned())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()),
            hostname: r
                .string("_APPSIGNAL_HOSTNAME")
                .unwrap_or_else(system_hostname),
            revision: r.string("_APP_REVISION").unwrap_or_default(),
            host_role: r.string("_APPSIGNAL_HOST_ROLE"),
            language_integration_version: r.string("_APPSIGNAL_LANGUAGE_INTEGRATION_VERSION"),
            exporters,
            otlp: None,
            working_directory_path: r
                .string("_APPSIGNAL_WORKING_DIRECTORY_PATH")
                .map(PathBuf::from),
            log,
            log_level: r.level("_APPSIGNAL_LOG_LEVEL"),
            log_file_path: r.string("_APPSIGNAL_LOG_FILE_PATH").map(PathBuf::from),
            files_world_accessible: r.bool("_APPSIGNAL_FILES_WORLD_ACCESSIBLE", true),
            enable_host_metrics: r.bool("_APPSIGNAL_ENABLE_HOST_METRICS", true),
            running_in_container: r.opt_bool("_APPSIGNAL_RUNNING_IN_CONTAINER"),
            ca_file_path: r.string("_APPSIGNAL_CA_FILE_PATH").map(PathBuf::from),
            http_proxy: r.string("_APPSIGNAL_HTTP_PROXY"),
            process_name: r.string("_APPSIGNAL_PROCESS_NAME"),
            ignore_actions: r.list("_APPSIGNAL_IGNORE_ACTIONS"),
            ignore_errors: r.list("_APPSIGNAL_IGNORE_ERRORS"),
            ignore_namespaces: r.list("_APPSIGNAL_IGNORE_NAMESPACES"),
            filter_parameters: r.list("_APPSIGNAL_FILTER_PARAMETERS"),
            filter_session_data: r.list("_APPSIGNAL_FILTER_SESSION_DATA"),
            transmission_interval: r.millis(
                "_APPSIGNAL_TRANSMISSION_INTERVAL_MS",
                30_000,
                100,
                3_600_000,
            ),
            flush_interval: r.millis("_APPSIGNAL_FLUSH_INTERVAL_MS", 100, 5, 10_000),
            stop_timeout: r.millis("_APPSIGNAL_STOP_TIMEOUT_MS", 5_000, 0, 60_000),
            push_timeout: r.millis("_APPSIGNAL_PUSH_TIMEOUT_MS", 10_000, 100, 120_000),
            refused_key_retry_interval: r.millis(
                "_APPSIGNAL_REFUSED_KEY_RETRY_INTERVAL_MS",
                3_600_000,
                1_000,
                86_400_000,
            ),
            payload_cache_max_files: r.number("_APPSIGNAL_PAYLOAD_CACHE_MAX_FILES", 100, 1)
                as usize,
            payload_cache_max_bytes: r.number(
                "_APPSIGNAL_PAYLOAD_CACHE_MAX_BYTES",
                20 * 1024 * 1024,
                1024,
            ),
            sample_rate: r.fraction("_APPSIGNAL_SAMPLE_RATE", 0.0),
            listeners: Listeners::default(),
            prometheus: None,
            cumulative_expiry: r.millis(
                "_APPSIGNAL_CUMULATIVE_EXPIRY_MS",
                86_400_000,
                100,
                31 * 86_400_000,
            ),
            library_version: test_library_version(&r).unwrap_or_else(|| crate::VERSION.to_owned()),
            protocols: test_protocols(&r).unwrap_or((
                crate::protocol::OLDEST_PROTOCOL,
                crate::protocol::PROTOCOL_VERSION,
            )),
            host_metrics_interval: r.millis(
                "_APPSIGNAL_HOST_METRICS_INTERVAL_MS",
                60_000,
                100,
                3_600_000,
            ),
        };
        config.listeners = r.listeners();
        config.prometheus = r.prometheus();
        if exporters.otlp {
            let inputs = ResourceInputs {
                language_integration_version: config.language_integration_version.as_deref(),
                filter_parameters: &config.filter_parameters,
                filter_session_data: &config.filter_session_data,
                ignore_actions: &config.ignore_actions,
                ignore_errors: &config.ignore_errors,
                ignore_namespaces: &config.ignore_namespaces,
            };
            config.otlp = Some(otlp::read(lookup, &inputs, &mut r.warnings));
        }
        Loaded {
            config,
            warnings: r.warnings,
        }
    }

    /// What a leader needs of this configuration: sent in the handshake, registered by the leader
    /// for its own data, written (without secrets) into the journal. Built here only.
    pub fn export_config(&self) -> ExportConfig {
        ExportConfig {
            push_api_key: self.push_api_key.clone(),
            app_name: self.app_name.clone(),
            environment: self.environment.clone(),
            endpoint: self.endpoint.clone(),
            hostname: self.hostname.clone(),
            revision: self.revision.clone(),
            host_role: self.host_role.clone(),
            language_integration_version: self.language_integration_version.clone(),
            exporters: self.exporters,
            otlp: self.otlp.clone(),
            prometheus: self.prometheus.clone(),
            redacted: false,
        }
    }

    /// Why this configuration cannot run an agent, if it cannot.
    pub fn invalid_reason(&self) -> Option<String> {
        if self.nothing_configured {
            return Some(
                "nothing is configured (none of _APPSIGNAL_ACTIVE, _APPSIGNAL_PUSH_API_KEY and \
                 _APPSIGNAL_EXPORTER is set)"
                    .to_owned(),
            );
        }
        if !self.active {
            return Some("_APPSIGNAL_ACTIVE is not true".to_owned());
        }
        if self.exporters.push && self.push_api_key.is_empty() {
            return Some("_APPSIGNAL_PUSH_API_KEY is not set".to_owned());
        }
        if self.exporters.push
            && !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://"))
        {
            return Some(format!(
                "_APPSIGNAL_PUSH_API_ENDPOINT={:?} is not an http(s) URL",
                self.endpoint
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Loaded {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_from(&move |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let loaded = load(&[]);
        let c = loaded.config;
        assert!(!c.active);
        assert!(c.files_world_accessible);
        assert_eq!(c.transmission_interval, Duration::from_secs(30));
        assert_eq!(c.endpoint, DEFAULT_ENDPOINT);
        assert!(loaded.warnings.is_empty());
        assert!(c.nothing_configured);
        assert_eq!(
            c.invalid_reason().as_deref(),
            Some(
                "nothing is configured (none of _APPSIGNAL_ACTIVE, _APPSIGNAL_PUSH_API_KEY and \
                 _APPSIGNAL_EXPORTER is set)"
            )
        );
    }

    #[test]
    fn any_of_active_key_or_exporter_is_a_configuration() {
        for (key, value) in [
            ("_APPSIGNAL_ACTIVE", "false"),
            ("_APPSIGNAL_ACTIVE", "true"),
            ("_APPSIGNAL_ACTIVE", "maybe"),
            ("_APPSIGNAL_PUSH_API_KEY", "k"),
            ("_APPSIGNAL_EXPORTER", "otlp"),
        ] {
            let c = load(&[(key, value)]).config;
            assert!(!c.nothing_configured, "{key}={value}");
        }
        // Empty (or blank) is unset.
        assert!(
            load(&[("_APPSIGNAL_ACTIVE", " ")])
                .config
                .nothing_configured
        );
        // Other settings alone are still nothing: the agent would not start.
        assert!(
            load(&[("_APPSIGNAL_APP_NAME", "app")])
                .config
                .nothing_configured
        );
        assert_eq!(
            load(&[("_APPSIGNAL_ACTIVE", "false")])
                .config
                .invalid_reason()
                .as_deref(),
            Some("_APPSIGNAL_ACTIVE is not true")
        );
    }

    #[test]
    fn listeners_are_off_by_default_and_bind_loopback() {
        assert_eq!(load(&[]).config.listeners, Listeners::default());
        let loaded = load(&[
            ("_APPSIGNAL_ENABLE_STATSD", "true"),
            ("_APPSIGNAL_OTLP_HTTP_PORT", "8099"),
        ]);
        let l = loaded.config.listeners;
        assert_eq!(l.statsd, Some("127.0.0.1:8125".parse().unwrap()));
        assert_eq!(l.otlp_http, Some("127.0.0.1:8099".parse().unwrap()));
        let loaded = load(&[
            ("_APPSIGNAL_ENABLE_STATSD", "true"),
            ("_APPSIGNAL_STATSD_PORT", "70000"),
            ("_APPSIGNAL_STATSD_BIND", "::"),
            ("_APPSIGNAL_OTLP_HTTP_PORT", "4318"),
            ("_APPSIGNAL_OTLP_HTTP_BIND", "localhost"),
        ]);
        let l = loaded.config.listeners;
        assert_eq!(l.statsd, Some("[::]:8125".parse().unwrap()));
        assert_eq!(l.otlp_http, None, "a host name is not guessed at");
        assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
    }

    #[test]
    fn the_prometheus_endpoint_is_off_by_default_and_travels_with_the_configuration() {
        let c = load(&[]).config;
        assert_eq!(c.prometheus, None);
        assert_eq!(c.cumulative_expiry, Duration::from_secs(24 * 3600));
        let loaded = load(&[
            ("_APPSIGNAL_PROMETHEUS_PORT", "9464"),
            ("_APPSIGNAL_CUMULATIVE_EXPIRY_MS", "60000"),
        ]);
        let c = loaded.config;
        let expected = PrometheusSettings {
            port: 9464,
            bind: "127.0.0.1".into(),
            bearer_token: String::new(),
        };
        assert_eq!(c.prometheus.as_ref(), Some(&expected));
        assert_eq!(c.export_config().prometheus, Some(expected));
        assert_eq!(c.cumulative_expiry, Duration::from_secs(60));
        let c = load(&[
            ("_APPSIGNAL_PROMETHEUS_PORT", "9000"),
            ("_APPSIGNAL_PROMETHEUS_BIND", "[::]"),
            ("_APPSIGNAL_PROMETHEUS_BEARER_TOKEN", "s3cret"),
        ])
        .config;
        let p = c.prometheus.unwrap();
        assert_eq!(
            (p.port, p.bind.as_str(), p.bearer_token.as_str()),
            (9000, "::", "s3cret")
        );
        let loaded = load(&[
            ("_APPSIGNAL_PROMETHEUS_PORT", "9000"),
            ("_APPSIGNAL_PROMETHEUS_BIND", "localhost"),
        ]);
        assert_eq!(
            loaded.config.prometheus, None,
            "a host name is not guessed at"
        );
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    }

    #[test]
    fn invalid_values_warn_and_fall_back_to_defaults() {
        let loaded = load(&[
            ("_APPSIGNAL_ACTIVE", "maybe"),
            ("_APPSIGNAL_TRANSMISSION_INTERVAL_MS", "fast"),
            ("_APPSIGNAL_LOG_LEVEL", "loud"),
            ("_APPSIGNAL_RUNNING_IN_CONTAINER", "perhaps"),
        ]);
        assert_eq!(loaded.warnings.len(), 4, "{:?}", loaded.warnings);
        assert!(!loaded.config.active);
        assert_eq!(loaded.config.transmission_interval, Duration::from_secs(30));
        assert_eq!(loaded.config.log_level, tracing::Level::INFO);
        assert_eq!(loaded.config.running_in_container, None);
    }

    #[test]
    fn values_are_read() {
        let loaded = load(&[
            ("_APPSIGNAL_ACTIVE", "true"),
            ("_APPSIGNAL_PUSH_API_KEY", "secret-key"),
            ("_APPSIGNAL_PUSH_API_ENDPOINT", "http://127.0.0.1:9/"),
            ("_APPSIGNAL_TRANSMISSION_INTERVAL_MS", "1000"),
            ("_APPSIGNAL_FILES_WORLD_ACCESSIBLE", "false"),
            ("_APPSIGNAL_IGNORE_ACTIONS", "a, b ,,c"),
            ("_APPSIGNAL_RUNNING_IN_CONTAINER", "true"),
        ]);
        let c = loaded.config;
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert!(c.invalid_reason().is_none());
        assert_eq!(c.endpoint, "http://127.0.0.1:9");
        assert_eq!(c.transmission_interval, Duration::from_secs(1));
        assert!(!c.files_world_accessible);
        assert_eq!(c.ignore_actions, vec!["a", "b", "c"]);
        assert_eq!(c.running_in_container, Some(true));
        assert!(!format!("{c:?}").contains("secret-key"));
    }

    #[test]
    fn the_export_config_carries_what_a_leader_needs_and_nothing_else() {
        let loaded = load(&[
            ("_APPSIGNAL_ACTIVE", "true"),
            ("_APPSIGNAL_PUSH_API_KEY", "secret-key"),
            ("_APPSIGNAL_APP_NAME", "shop"),
            ("_APPSIGNAL_APP_ENV", "staging"),
            ("_APPSIGNAL_PUSH_API_ENDPOINT", "https://push.example/"),
            ("_APPSIGNAL_HOSTNAME", "web-1"),
            ("_APP_REVISION", "abc"),
            ("_APPSIGNAL_HOST_ROLE", "web"),
            ("_APPSIGNAL_LANGUAGE_INTEGRATION_VERSION", "ruby-4.1.0"),
            ("_APPSIGNAL_EXPORTER", "push,otlp"),
            ("_APPSIGNAL_OTLP_ENDPOINT", "http://collector:4318"),
            ("_APPSIGNAL_OTLP_HEADERS", "x-api-key=otlp-secret"),
            ("_APPSIGNAL_IGNORE_ACTIONS", "health"),
            // Settings of this process only: none of them reaches the leader.
            ("_APPSIGNAL_WORKING_DIRECTORY_PATH", "/tmp/appsignal-x"),
            ("_APPSIGNAL_LOG", "stdout"),
            ("_APPSIGNAL_PROCESS_NAME", "puma"),
            ("_APPSIGNAL_ENABLE_STATSD", "true"),
            ("_APPSIGNAL_TRANSMISSION_INTERVAL_MS", "1000"),
            ("_APPSIGNAL_SAMPLE_RATE", "0.5"),
        ]);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let c = loaded.config;
        let mut inputs_warnings = Vec::new();
        let otlp = otlp::read(
            &|key| match key {
                "_APPSIGNAL_OTLP_ENDPOINT" => Some("http://collector:4318".to_owned()),
                "_APPSIGNAL_OTLP_HEADERS" => Some("x-api-key=otlp-secret".to_owned()),
                _ => None,
            },
            &ResourceInputs {
                language_integration_version: Some("ruby-4.1.0"),
                ignore_actions: &["health".to_owned()],
                ..ResourceInputs::default()
            },
            &mut inputs_warnings,
        );
        assert_eq!(
            c.export_config(),
            ExportConfig {
                push_api_key: "secret-key".into(),
                app_name: "shop".into(),
                environment: "staging".into(),
                endpoint: "https://push.example".into(),
                hostname: "web-1".into(),
                revision: "abc".into(),
                host_role: Some("web".into()),
                language_integration_version: Some("ruby-4.1.0".into()),
                exporters: Exporters {
                    push: true,
                    otlp: true
                },
                otlp: Some(otlp),
                prometheus: None,
                redacted: false,
            }
        );
        // The same configuration gives the same copy (and id) every time it is built.
        assert_eq!(c.export_config().id(), c.clone().export_config().id());
    }

    #[test]
    fn config_id_is_stable_and_distinguishes_configs() {
        let a = load(&[
            ("_APPSIGNAL_PUSH_API_KEY", "k1"),
            ("_APPSIGNAL_HOSTNAME", "h"),
        ])
        .config
        .export_config();
        let b = load(&[
            ("_APPSIGNAL_PUSH_API_KEY", "k2"),
            ("_APPSIGNAL_HOSTNAME", "h"),
        ])
        .config
        .export_config();
        assert_eq!(a.id(), a.clone().id());
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn host_role_and_integration_version_are_part_of_the_configuration_when_set() {
        let plain = load(&[("_APPSIGNAL_PUSH_API_KEY", "k")])
            .config
            .export_config();
        assert_eq!(plain.host_role, None);
        assert_eq!(plain.language_integration_version, None);
        let set = load(&[
            ("_APPSIGNAL_PUSH_API_KEY", "k"),
            ("_APPSIGNAL_HOST_ROLE", " worker "),
            ("_APPSIGNAL_LANGUAGE_INTEGRATION_VERSION", "ruby-4.1.0"),
            ("_APPSIGNAL_PROCESS_NAME", "sidekiq"),
        ])
        .config;
        assert_eq!(set.host_role.as_deref(), Some("worker"));
        assert_eq!(
            set.language_integration_version.as_deref(),
            Some("ruby-4.1.0")
        );
        assert_eq!(set.process_name.as_deref(), Some("sidekiq"));
        // Kept apart from processes of another role or package version; unset ones keep their id.
        assert_ne!(set.export_config().id(), plain.id());
        let role_only = ExportConfig {
            host_role: Some("worker".into()),
            ..plain.clone()
        };
        assert_ne!(role_only.id(), plain.id());
        assert_ne!(role_only.id(), set.export_config().id());
        // The journal's copy keeps them (they are not secrets).
        assert_eq!(
            set.export_config().without_secrets().host_role.as_deref(),
            Some("worker")
        );
    }

    #[test]
    fn table_wins_over_process_environment() {
        env_put("_APPSIGNAL_TEST_ONLY_KEY", "from-table");
        assert_eq!(
            lookup("_APPSIGNAL_TEST_ONLY_KEY").as_deref(),
            Some("from-table")
        );
        env_delete("_APPSIGNAL_TEST_ONLY_KEY");
        assert_eq!(lookup("_APPSIGNAL_TEST_ONLY_KEY"), None);
    }

    #[test]
    fn exporters_are_chosen_and_otlp_alone_needs_no_push_key() {
        let c = load(&[
            ("_APPSIGNAL_ACTIVE", "true"),
            ("_APPSIGNAL_PUSH_API_KEY", "k"),
        ])
        .config;
        assert_eq!(c.exporters, Exporters::default());
        assert!(c.otlp.is_none());
        let loaded = load(&[
            ("_APPSIGNAL_ACTIVE", "true"),
            ("_APPSIGNAL_EXPORTER", "otlp"),
        ]);
        let c = loaded.config;
        assert_eq!(
            c.exporters,
            Exporters {
                push: false,
                otlp: true
            }
        );
        assert!(c.otlp.is_some());
        assert_eq!(
            c.invalid_reason(),
            None,
            "no push key needed for OTLP alone"
        );
        let c = load(&[
            ("_APPSIGNAL_ACTIVE", "true"),
            ("_APPSIGNAL_EXPORTER", "push, otlp"),
        ])
        .config;
        assert!(c.exporters.push && c.exporters.otlp);
        assert!(
            c.invalid_reason().is_some(),
            "the Push API still needs its key"
        );
        let loaded = load(&[("_APPSIGNAL_EXPORTER", "kafka")]);
        assert_eq!(loaded.config.exporters, Exporters::default());
        assert_eq!(loaded.warnings.len(), 1);
    }

    #[test]
    fn otlp_settings_are_part_of_the_identity_and_never_of_the_journal_copy() {
        let a = load(&[
            ("_APPSIGNAL_EXPORTER", "otlp"),
            ("_APPSIGNAL_OTLP_HEADERS", "k=secret-one"),
        ]);
        let b = load(&[
            ("_APPSIGNAL_EXPORTER", "otlp"),
            ("_APPSIGNAL_OTLP_HEADERS", "k=two"),
        ]);
        let plain = load(&[]).config.export_config();
        assert_ne!(a.config.export_config().id(), b.config.export_config().id());
        assert_ne!(a.config.export_config().id(), plain.id());
        let stripped = a.config.export_config().without_secrets();
        assert!(stripped.redacted);
        assert_eq!(stripped.otlp.as_ref().unwrap().headers[0].1, "");
        assert!(!format!("{:?}", a.config.export_config()).contains("secret-one"));
    }
}
