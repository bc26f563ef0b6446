//! What a leader needs of one app configuration ([`ExportConfig`]): what keeps its data apart from
//! other configurations sharing the working directory (its [`ExportConfig::id`]) and what the
//! exporters send it with (push key and endpoint, OTLP settings, the app's names). A process builds
//! it from its own configuration in one place (`config::Config::export_config`), sends it in the
//! handshake (`protocol::Hello`), and the leader writes it into journal segment and spool headers.
//! Pure data: this module reads no environment and does no I/O.
//!
//! Secrets (the push key, OTLP header values, the Prometheus bearer token) cross the socket but never reach a disk or a log:
//! [`ExportConfig::without_secrets`] is the one function that removes them (for the journal), and
//! `Debug` never shows them.
//!
//! The CBOR shape (field names, which fields may be absent) is shared with earlier library
//! versions: a leader of an earlier release reads this struct in a newer client's `Hello`, and a new
//! leader reads segment headers an earlier one wrote. A field is only ever added, with a default.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cbor::FromCbor;

/// Which exporters send a configuration's windows (`_APPSIGNAL_EXPORTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, FromCbor)]
pub struct Exporters {
    /// The Push API (`docs/push-api.md`).
    pub push: bool,
    /// OTLP/HTTP (`docs/otlp.md`).
    pub otlp: bool,
}

impl Default for Exporters {
    fn default() -> Self {
        Exporters {
            push: true,
            otlp: false,
        }
    }
}

/// A resource attribute's value, as the configuration gives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, FromCbor)]
pub enum ResourceValue {
    Str(String),
    List(Vec<String>),
}

/// The OTLP exporter's settings of one configuration (read by `config::otlp`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, FromCbor)]
pub struct OtlpSettings {
    pub metrics_endpoint: String,
    pub traces_endpoint: String,
    pub logs_endpoint: String,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS` syntax). Values are secrets.
    pub headers: Vec<(String, String)>,
    pub timeout_ms: u64,
    /// `gzip` (the default) or `none`.
    pub gzip: bool,
    /// Resource attributes from the process's configuration (`OTEL_SERVICE_NAME`,
    /// `OTEL_RESOURCE_ATTRIBUTES`, the `appsignal.config.*` lists); the leader adds the ones it
    /// derives from the rest of the [`ExportConfig`] when it builds a request.
    pub resource: Vec<(String, ResourceValue)>,
    /// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`: [`Temporality::name`] of a preference
    /// other than delta; empty for delta (the default, then not written, so that a configuration
    /// without it is the document earlier releases wrote, and what they read as delta). Text
    /// rather than a typed field: read back with [`OtlpSettings::temporality`], where anything
    /// unknown is delta.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub temporality: String,
}

/// Which OTLP temporality a configuration asks for (`docs/otlp.md`, Temporality).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Temporality {
    /// Every sum and histogram a delta of its window (AppSignal's collector).
    #[default]
    Delta,
    /// Counters and distributions as cumulative totals since each series' start.
    Cumulative,
    /// The specification's `lowmemory`: delta, except non-monotonic counters, cumulative.
    LowMemory,
}

impl Temporality {
    /// The specification's value (lower case).
    pub fn name(self) -> &'static str {
        match self {
            Temporality::Delta => "delta",
            Temporality::Cumulative => "cumulative",
            Temporality::LowMemory => "lowmemory",
        }
    }

    /// The preference named `text` (any case); `None` when it is none of the three.
    pub fn parse(text: &str) -> Option<Temporality> {
        [
            Temporality::Delta,
            Temporality::Cumulative,
            Temporality::LowMemory,
        ]
        .into_iter()
        .find(|t| text.eq_ignore_ascii_case(t.name()))
    }
}

/// The leader's Prometheus endpoint as one configuration asks for it (`_APPSIGNAL_PROMETHEUS_*`,
/// `docs/prometheus.md`): the leader serves it when any configuration it knows asks for it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, FromCbor)]
pub struct PrometheusSettings {
    pub port: u16,
    /// An IP address (validated by the configuration reader, again by the leader).
    pub bind: String,
    /// Required on every request when set (`Authorization: Bearer …`); required for a bind beyond
    /// loopback. A secret: emptied by [`ExportConfig::without_secrets`], never shown by `Debug`.
    #[serde(default)]
    pub bearer_token: String,
}

impl fmt::Debug for PrometheusSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusSettings")
            .field("port", &self.port)
            .field("bind", &self.bind)
            .field("bearer_token_set", &!self.bearer_token.is_empty())
            .finish()
    }
}

/// What identifies one app configuration to the leader, and what its exporters need: data of
/// different configurations sharing a working directory is kept apart and exported with its own
/// key and settings.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, FromCbor)]
pub struct ExportConfig {
    /// A secret: removed by [`ExportConfig::without_secrets`], never shown by `Debug`.
    pub push_api_key: String,
    pub app_name: String,
    pub environment: String,
    pub endpoint: String,
    pub hostname: String,
    pub revision: String,
    /// What this host does (e.g. `web`, `worker`), sent with every payload.
    #[serde(default)]
    pub host_role: Option<String>,
    /// The language package that loaded the library (e.g. `ruby-4.0.0`), sent with every payload.
    #[serde(default)]
    pub language_integration_version: Option<String>,
    #[serde(default)]
    pub exporters: Exporters,
    /// Set when `exporters.otlp` is.
    #[serde(default)]
    pub otlp: Option<OtlpSettings>,
    /// The Prometheus endpoint this configuration asks the leader for (off when `None`; then not
    /// written, so that a configuration without it is the document earlier releases wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSettings>,
    /// The secrets were removed ([`ExportConfig::without_secrets`]): this copy came from the
    /// journal and can export nothing until a process with the whole configuration connects.
    #[serde(default)]
    pub redacted: bool,
}

impl ExportConfig {
    /// A copy without secrets (the push key, every OTLP header value, the Prometheus bearer
    /// token; header names stay), marked
    /// `redacted`: the only form in which a configuration is written to disk.
    pub fn without_secrets(&self) -> ExportConfig {
        ExportConfig {
            push_api_key: String::new(),
            otlp: self.otlp.as_ref().map(|otlp| OtlpSettings {
                headers: otlp
                    .headers
                    .iter()
                    .map(|(name, _)| (name.clone(), String::new()))
                    .collect(),
                ..otlp.clone()
            }),
            prometheus: self.prometheus.as_ref().map(|p| PrometheusSettings {
                bearer_token: String::new(),
                ..p.clone()
            }),
            redacted: true,
            ..self.clone()
        }
    }

    /// A stable 64-bit id (FNV-1a over the fields), the same in every process and library build,
    /// used to name journal segments and cached payload files without writing the push key to disk.
    pub fn id(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut fields: Vec<String> = [
            &self.push_api_key,
            &self.app_name,
            &self.environment,
            &self.endpoint,
            &self.hostname,
            &self.revision,
        ]
        .into_iter()
        .cloned()
        .collect();
        // Set only: a configuration without them keeps the id it had before they were sent.
        if let Some(role) = &self.host_role {
            fields.push(format!("host_role:{role}"));
        }
        if let Some(version) = &self.language_integration_version {
            fields.push(format!("language_integration_version:{version}"));
        }
        // A push-only configuration keeps the id it had before exporters existed.
        if self.exporters != Exporters::default() || self.otlp.is_some() {
            fields.push(format!(
                "exporters:{}:{}",
                self.exporters.push, self.exporters.otlp
            ));
            fields.extend(self.otlp.iter().flat_map(OtlpSettings::identity_fields));
        }
        // Set only, likewise.
        if let Some(p) = &self.prometheus {
            fields.push(format!(
                "prometheus:{}:{}:{}",
                p.port, p.bind, p.bearer_token
            ));
        }
        for field in &fields {
            for byte in field.bytes().chain(std::iter::once(0xff)) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }
}

impl OtlpSettings {
    /// The temporality asked for: delta unless the field names another one.
    pub fn temporality(&self) -> Temporality {
        Temporality::parse(&self.temporality).unwrap_or_default()
    }

    /// Every field, for the configuration's id (the same in every process with these settings).
    fn identity_fields(&self) -> Vec<String> {
        let mut fields = vec![
            self.metrics_endpoint.clone(),
            self.traces_endpoint.clone(),
            self.logs_endpoint.clone(),
            self.timeout_ms.to_string(),
            self.gzip.to_string(),
        ];
        for (k, v) in &self.headers {
            fields.push(format!("h:{k}={v}"));
        }
        for (k, v) in &self.resource {
            fields.push(format!("r:{k}={v:?}"));
        }
        // Set only: a delta configuration keeps the id it had before the preference existed.
        if !self.temporality.is_empty() {
            fields.push(format!("temporality:{}", self.temporality));
        }
        fields
    }
}

impl fmt::Debug for ExportConfig {
    // Hand-written so that the push key can never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportConfig")
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
            .field("prometheus", &self.prometheus)
            .field("redacted", &self.redacted)
            .finish()
    }
}

impl fmt::Debug for OtlpSettings {
    // Hand-written so that header values can never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("OtlpSettings")
            .field("metrics_endpoint", &self.metrics_endpoint)
            .field("traces_endpoint", &self.traces_endpoint)
            .field("logs_endpoint", &self.logs_endpoint)
            .field("headers (values redacted)", &header_names)
            .field("timeout_ms", &self.timeout_ms)
            .field("gzip", &self.gzip)
            .field("resource", &self.resource)
            .field("temporality", &self.temporality)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cbor;

    /// Every field set, both exporters, two OTLP headers.
    fn full() -> ExportConfig {
        ExportConfig {
            push_api_key: "push-secret".into(),
            app_name: "app ✓".into(),
            environment: "production".into(),
            endpoint: "https://push.example".into(),
            hostname: "web-1".into(),
            revision: "abc".into(),
            host_role: Some("web".into()),
            language_integration_version: Some("ruby-4.1.0".into()),
            exporters: Exporters {
                push: true,
                otlp: true,
            },
            otlp: Some(OtlpSettings {
                metrics_endpoint: "http://c/v1/metrics".into(),
                traces_endpoint: "http://c/v1/traces".into(),
                logs_endpoint: "http://c/v1/logs".into(),
                headers: vec![
                    ("x-api-key".into(), "header-secret-1".into()),
                    ("x-team".into(), "header-secret-2".into()),
                ],
                timeout_ms: 2_500,
                gzip: false,
                resource: vec![
                    ("service.name".into(), ResourceValue::Str("shop".into())),
                    (
                        "appsignal.config.ignore_actions".into(),
                        ResourceValue::List(vec!["a".into(), "b".into()]),
                    ),
                ],
                temporality: "cumulative".into(),
            }),
            prometheus: Some(PrometheusSettings {
                port: 9464,
                bind: "0.0.0.0".into(),
                bearer_token: "token-secret".into(),
            }),
            redacted: false,
        }
    }

    #[test]
    fn without_secrets_removes_the_push_key_and_every_header_value_and_nothing_else() {
        let config = full();
        let stripped = config.without_secrets();
        let mut expected = config.clone();
        expected.push_api_key.clear();
        if let Some(otlp) = expected.otlp.as_mut() {
            otlp.headers = vec![
                ("x-api-key".into(), String::new()),
                ("x-team".into(), String::new()),
            ];
        }
        if let Some(p) = expected.prometheus.as_mut() {
            p.bearer_token.clear();
        }
        expected.redacted = true;
        assert_eq!(stripped, expected);
        let written = serde_cbor::to_vec(&stripped).unwrap();
        for secret in ["push-secret", "header-secret", "token-secret"] {
            assert!(
                !written
                    .windows(secret.len())
                    .any(|w| w == secret.as_bytes()),
                "{secret} is in the stripped copy"
            );
        }
        // Without OTLP settings there is only the key to remove.
        let push_only = ExportConfig {
            otlp: None,
            prometheus: None,
            ..full()
        };
        assert_eq!(
            push_only.without_secrets(),
            ExportConfig {
                push_api_key: String::new(),
                redacted: true,
                ..push_only.clone()
            }
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let shown = format!("{:?}", full());
        assert!(!shown.contains("secret"), "{shown}");
        assert!(
            shown.contains("x-api-key"),
            "header names are shown: {shown}"
        );
    }

    #[test]
    fn round_trips_through_the_cbor_codec() {
        for config in [
            full(),
            full().without_secrets(),
            ExportConfig::default(),
            ExportConfig {
                host_role: None,
                language_integration_version: None,
                exporters: Exporters::default(),
                otlp: None,
                prometheus: None,
                ..full()
            },
        ] {
            let bytes = serde_cbor::to_vec(&config).unwrap();
            let read: ExportConfig = cbor::from_slice(&bytes).unwrap();
            assert_eq!(read, config);
            assert_eq!(read.id(), config.id());
        }
    }

    #[test]
    fn the_id_is_stable_and_tells_configurations_apart() {
        let config = full();
        assert_eq!(config.id(), config.clone().id());
        // The journal's copy hashes differently (no key): a segment header carries the id of
        // the whole configuration beside it.
        assert_ne!(config.without_secrets().id(), config.id());
        let other_header = ExportConfig {
            otlp: config.otlp.clone().map(|o| OtlpSettings {
                headers: vec![("x-api-key".into(), "another".into())],
                ..o
            }),
            ..config.clone()
        };
        assert_ne!(other_header.id(), config.id());
        let with_temporality = |temporality: &str| ExportConfig {
            otlp: config.otlp.clone().map(|o| OtlpSettings {
                temporality: temporality.into(),
                ..o
            }),
            ..config.clone()
        };
        assert_ne!(with_temporality("").id(), config.id());
        assert_ne!(
            with_temporality("").id(),
            with_temporality("lowmemory").id()
        );
        // A push-only configuration without the optional fields keeps the id earlier releases gave it.
        let plain = ExportConfig {
            push_api_key: "k".into(),
            ..ExportConfig::default()
        };
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for field in ["k", "", "", "", "", ""] {
            for byte in field.bytes().chain(std::iter::once(0xff)) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        assert_eq!(plain.id(), hash);
    }

    #[test]
    fn the_temporality_reads_back_delta_unless_it_names_another() {
        let with = |text: &str| {
            OtlpSettings {
                temporality: text.into(),
                ..full().otlp.unwrap()
            }
            .temporality()
        };
        assert_eq!(with(""), Temporality::Delta);
        assert_eq!(with("delta"), Temporality::Delta);
        assert_eq!(with("cumulative"), Temporality::Cumulative);
        assert_eq!(with("LowMemory"), Temporality::LowMemory);
        assert_eq!(with("sometimes"), Temporality::Delta);
    }

    /// The previous release's declaration of this struct (then `config::PushConfig`) and of the
    /// types in it, as its `serde_cbor` wrote them: what earlier leaders read and earlier journals hold.
    mod previous {
        use serde::{Deserialize, Serialize};

        #[derive(Serialize, Deserialize)]
        pub struct Exporters {
            pub push: bool,
            pub otlp: bool,
        }

        impl Default for Exporters {
            fn default() -> Self {
                Exporters {
                    push: true,
                    otlp: false,
                }
            }
        }

        #[derive(Serialize, Deserialize)]
        pub enum ResourceValue {
            Str(String),
            List(Vec<String>),
        }

        #[derive(Serialize, Deserialize)]
        pub struct OtlpSettings {
            pub metrics_endpoint: String,
            pub traces_endpoint: String,
            pub logs_endpoint: String,
            pub headers: Vec<(String, String)>,
            pub timeout_ms: u64,
            pub gzip: bool,
            pub resource: Vec<(String, ResourceValue)>,
        }

        #[derive(Serialize, Deserialize)]
        pub struct PushConfig {
            pub push_api_key: String,
            pub app_name: String,
            pub environment: String,
            pub endpoint: String,
            pub hostname: String,
            pub revision: String,
            #[serde(default)]
            pub host_role: Option<String>,
            #[serde(default)]
            pub language_integration_version: Option<String>,
            #[serde(default)]
            pub exporters: Exporters,
            #[serde(default)]
            pub otlp: Option<OtlpSettings>,
            #[serde(default)]
            pub redacted: bool,
        }

        /// The shape before exporters, OTLP, host roles and redaction existed.
        #[derive(Serialize)]
        pub struct FirstPushConfig {
            pub push_api_key: String,
            pub app_name: String,
            pub environment: String,
            pub endpoint: String,
            pub hostname: String,
            pub revision: String,
        }
    }

    fn previous_of(config: &ExportConfig) -> previous::PushConfig {
        previous::PushConfig {
            push_api_key: config.push_api_key.clone(),
            app_name: config.app_name.clone(),
            environment: config.environment.clone(),
            endpoint: config.endpoint.clone(),
            hostname: config.hostname.clone(),
            revision: config.revision.clone(),
            host_role: config.host_role.clone(),
            language_integration_version: config.language_integration_version.clone(),
            exporters: previous::Exporters {
                push: config.exporters.push,
                otlp: config.exporters.otlp,
            },
            otlp: config.otlp.as_ref().map(|o| previous::OtlpSettings {
                metrics_endpoint: o.metrics_endpoint.clone(),
                traces_endpoint: o.traces_endpoint.clone(),
                logs_endpoint: o.logs_endpoint.clone(),
                headers: o.headers.clone(),
                timeout_ms: o.timeout_ms,
                gzip: o.gzip,
                resource: o
                    .resource
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            ResourceValue::Str(s) => previous::ResourceValue::Str(s.clone()),
                            ResourceValue::List(l) => previous::ResourceValue::List(l.clone()),
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            }),
            redacted: config.redacted,
        }
    }

    #[test]
    fn the_previous_release_and_this_one_read_each_other() {
        // Delta (the default) is not written: the document is the one earlier releases wrote.
        let without_prometheus = ExportConfig {
            prometheus: None,
            otlp: full().otlp.map(|o| OtlpSettings {
                temporality: String::new(),
                ..o
            }),
            ..full()
        };
        for config in [
            without_prometheus.clone(),
            without_prometheus.without_secrets(),
        ] {
            let old = serde_cbor::to_vec(&previous_of(&config)).unwrap();
            // A document the previous release wrote (a Hello, a segment header) reads here...
            assert_eq!(cbor::from_slice::<ExportConfig>(&old).unwrap(), config);
            // ...and what this release writes is the same document, so the previous one reads it.
            assert_eq!(serde_cbor::to_vec(&config).unwrap(), old);
            let back: previous::PushConfig = serde_cbor::from_slice(&old).unwrap();
            assert_eq!(back.push_api_key, config.push_api_key);
        }
        // The Prometheus settings and the temporality are fields the previous release skips.
        for config in [full(), full().without_secrets()] {
            let new = serde_cbor::to_vec(&config).unwrap();
            let back: previous::PushConfig = serde_cbor::from_slice(&new).unwrap();
            assert_eq!(back.app_name, config.app_name);
            assert_eq!(
                back.otlp.map(|o| o.metrics_endpoint),
                config.otlp.map(|o| o.metrics_endpoint)
            );
        }
        let first = previous::FirstPushConfig {
            push_api_key: "k".into(),
            app_name: "app".into(),
            environment: "production".into(),
            endpoint: "https://push.example".into(),
            hostname: "h".into(),
            revision: "r".into(),
        };
        let read: ExportConfig = cbor::from_slice(&serde_cbor::to_vec(&first).unwrap()).unwrap();
        assert_eq!(
            read,
            ExportConfig {
                push_api_key: "k".into(),
                app_name: "app".into(),
                environment: "production".into(),
                endpoint: "https://push.example".into(),
                hostname: "h".into(),
                revision: "r".into(),
                ..ExportConfig::default()
            }
        );
    }
}
