//! The OTLP exporter's settings of one configuration, read at `start()` from
//! `_APPSIGNAL_OTLP_*` and, where those are unset, the OpenTelemetry specification's standard
//! `OTEL_*` variables (both through the library table first, then the process environment).
//!
//! What this reads is data the leader needs: [`OtlpSettings`] is part of the configuration's
//! [`crate::export_config::ExportConfig`]. Header values are secrets: a warning names a header's key,
//! never its value.

use crate::export_config::{OtlpSettings, ResourceValue, Temporality};

/// Where OTLP goes when nothing says otherwise (the OpenTelemetry Collector's OTLP/HTTP port).
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
/// `OTEL_EXPORTER_OTLP_TIMEOUT` default, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// What the rest of the configuration contributes to the resource.
#[derive(Default)]
pub struct ResourceInputs<'a> {
    pub language_integration_version: Option<&'a str>,
    pub filter_parameters: &'a [String],
    pub filter_session_data: &'a [String],
    pub ignore_actions: &'a [String],
    pub ignore_errors: &'a [String],
    pub ignore_namespaces: &'a [String],
}

/// `%XX` escapes decoded (the W3C Baggage syntax that `OTEL_*_HEADERS` and
/// `OTEL_RESOURCE_ATTRIBUTES` use); anything malformed is kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `key1=value1,key2=value2`. A malformed entry is skipped with a warning that names the key
/// only (values may be secrets).
fn parse_pairs(var: &str, text: &str, warnings: &mut Vec<String>) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (n, entry) in text.split(',').enumerate() {
        if entry.trim().is_empty() {
            continue;
        }
        match entry.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                pairs.push((percent_decode(k.trim()), percent_decode(v.trim())));
            }
            _ => warnings.push(format!("{var}: entry {} is not key=value; skipped", n + 1)),
        }
    }
    pairs
}

fn is_http_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Reads the settings through `lookup` (library table, then the environment).
pub fn read(
    lookup: &dyn Fn(&str) -> Option<String>,
    inputs: &ResourceInputs<'_>,
    warnings: &mut Vec<String>,
) -> OtlpSettings {
    let mut url = |key: &str| -> Option<String> {
        let v = lookup(key)?.trim().to_owned();
        if is_http_url(&v) {
            Some(v)
        } else {
            warnings.push(format!("{key}={v:?} is not an http(s) URL; ignored"));
            None
        }
    };
    let ours = url("_APPSIGNAL_OTLP_ENDPOINT");
    let base = url("OTEL_EXPORTER_OTLP_ENDPOINT");
    let per_signal = [
        url("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
        url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        url("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"),
    ];
    // Ours wins; then a per-signal endpoint, used as it is; then the base with the signal's path.
    let endpoint = |signal_url: &Option<String>, path: &str| -> String {
        let join = |b: &str| format!("{}/v1/{path}", b.trim_end_matches('/'));
        match (&ours, signal_url, &base) {
            (Some(o), _, _) => join(o),
            (None, Some(s), _) => s.clone(),
            (None, None, Some(b)) => join(b),
            (None, None, None) => join(DEFAULT_ENDPOINT),
        }
    };
    let headers_var = if lookup("_APPSIGNAL_OTLP_HEADERS").is_some() {
        "_APPSIGNAL_OTLP_HEADERS"
    } else {
        "OTEL_EXPORTER_OTLP_HEADERS"
    };
    let headers = lookup(headers_var)
        .map(|h| parse_pairs(headers_var, &h, warnings))
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| {
            let ok = reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_ok();
            if !ok {
                warnings.push(format!(
                    "{headers_var}: {k:?} is not a valid header name; skipped"
                ));
            }
            ok
        })
        .collect();
    let timeout_ms = match lookup("OTEL_EXPORTER_OTLP_TIMEOUT").map(|v| v.trim().to_owned()) {
        None => DEFAULT_TIMEOUT_MS,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if (100..=300_000).contains(&ms) => ms,
            _ => {
                warnings.push(format!(
                    "OTEL_EXPORTER_OTLP_TIMEOUT={v:?} is not milliseconds in 100..=300000; using {DEFAULT_TIMEOUT_MS}"
                ));
                DEFAULT_TIMEOUT_MS
            }
        },
    };
    let gzip = match lookup("OTEL_EXPORTER_OTLP_COMPRESSION")
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("gzip") => true,
        Some("none") => false,
        Some(other) => {
            warnings.push(format!(
                "OTEL_EXPORTER_OTLP_COMPRESSION={other:?} is not gzip or none; using gzip"
            ));
            true
        }
    };
    // Empty is unset, as the specification reads every variable.
    let temporality = match lookup("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
        .filter(|v| !v.trim().is_empty())
    {
        None => Temporality::Delta,
        Some(v) => Temporality::parse(v.trim()).unwrap_or_else(|| {
            warnings.push(format!(
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE={v:?} is not delta, cumulative or lowmemory; using delta"
            ));
            Temporality::Delta
        }),
    };
    OtlpSettings {
        metrics_endpoint: endpoint(&per_signal[0], "metrics"),
        traces_endpoint: endpoint(&per_signal[1], "traces"),
        logs_endpoint: endpoint(&per_signal[2], "logs"),
        headers,
        timeout_ms,
        gzip,
        resource: resource(lookup, inputs, warnings),
        temporality: match temporality {
            Temporality::Delta => String::new(),
            other => other.name().to_owned(),
        },
    }
}

fn resource(
    lookup: &dyn Fn(&str) -> Option<String>,
    inputs: &ResourceInputs<'_>,
    warnings: &mut Vec<String>,
) -> Vec<(String, ResourceValue)> {
    let mut resource: Vec<(String, ResourceValue)> = Vec::new();
    let language = inputs
        .language_integration_version
        .and_then(|v| v.split('-').next())
        .filter(|l| !l.is_empty())
        .unwrap_or("c");
    resource.push((
        "appsignal.config.language_integration".into(),
        ResourceValue::Str(language.to_owned()),
    ));
    for (key, list) in [
        ("filter_request_payload", inputs.filter_parameters),
        ("filter_request_query_parameters", inputs.filter_parameters),
        ("filter_request_session_data", inputs.filter_session_data),
        ("ignore_actions", inputs.ignore_actions),
        ("ignore_errors", inputs.ignore_errors),
        ("ignore_namespaces", inputs.ignore_namespaces),
    ] {
        if !list.is_empty() {
            resource.push((
                format!("appsignal.config.{key}"),
                ResourceValue::List(list.to_vec()),
            ));
        }
    }
    if let Some(name) = lookup("OTEL_SERVICE_NAME").map(|n| n.trim().to_owned()) {
        resource.push(("service.name".into(), ResourceValue::Str(name)));
    }
    if let Some(text) = lookup("OTEL_RESOURCE_ATTRIBUTES") {
        for (k, v) in parse_pairs("OTEL_RESOURCE_ATTRIBUTES", &text, warnings) {
            if !resource.iter().any(|(known, _)| *known == k) {
                resource.push((k, ResourceValue::Str(v)));
            }
        }
    }
    resource
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(pairs: &[(&str, &str)]) -> (OtlpSettings, Vec<String>) {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut warnings = Vec::new();
        let s = super::read(
            &move |k| map.get(k).cloned(),
            &ResourceInputs::default(),
            &mut warnings,
        );
        (s, warnings)
    }

    #[test]
    fn endpoints_follow_the_specification_and_ours_wins() {
        let (s, _) = read(&[]);
        assert_eq!(s.metrics_endpoint, "http://localhost:4318/v1/metrics");
        assert!(s.gzip);
        assert_eq!(s.timeout_ms, 10_000);
        let (s, _) = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318/"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://t.example/custom",
            ),
        ]);
        assert_eq!(s.metrics_endpoint, "https://collector:4318/v1/metrics");
        assert_eq!(s.logs_endpoint, "https://collector:4318/v1/logs");
        assert_eq!(s.traces_endpoint, "https://t.example/custom");
        let (s, _) = read(&[
            ("_APPSIGNAL_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://t.example/custom",
            ),
        ]);
        assert_eq!(s.traces_endpoint, "http://127.0.0.1:9/v1/traces");
    }

    #[test]
    fn headers_are_parsed_decoded_and_never_shown() {
        let (s, w) = read(&[
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=SECRET%3D1, x-team = core ,broken,bad name=SECRET2",
            ),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]);
        assert_eq!(
            s.headers,
            vec![
                ("api-key".to_owned(), "SECRET=1".to_owned()),
                ("x-team".to_owned(), "core".to_owned())
            ]
        );
        assert!(!s.gzip);
        assert_eq!(s.timeout_ms, 2500);
        assert_eq!(w.len(), 2, "{w:?}");
        let shown = format!("{s:?} {w:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        // Ours replaces the standard variable entirely.
        let (s, _) = read(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("_APPSIGNAL_OTLP_HEADERS", "b=2"),
        ]);
        assert_eq!(s.headers, vec![("b".to_owned(), "2".to_owned())]);
    }

    #[test]
    fn bad_values_give_warnings_and_defaults() {
        let (s, w) = read(&[
            ("_APPSIGNAL_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
        ]);
        assert_eq!(s.metrics_endpoint, "http://localhost:4318/v1/metrics");
        assert_eq!((s.timeout_ms, s.gzip), (DEFAULT_TIMEOUT_MS, true));
        assert_eq!(w.len(), 3, "{w:?}");
    }

    #[test]
    fn the_temporality_preference_takes_the_specifications_values_in_any_case() {
        const VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
        let (s, w) = read(&[]);
        assert_eq!(
            (s.temporality(), s.temporality.as_str()),
            (Temporality::Delta, "")
        );
        assert!(w.is_empty(), "{w:?}");
        for (text, expected) in [
            ("delta", Temporality::Delta),
            ("DELTA", Temporality::Delta),
            ("cumulative", Temporality::Cumulative),
            (" Cumulative ", Temporality::Cumulative),
            ("lowmemory", Temporality::LowMemory),
            ("LowMemory", Temporality::LowMemory),
        ] {
            let (s, w) = read(&[(VAR, text)]);
            assert_eq!(s.temporality(), expected, "{text:?}");
            assert!(w.is_empty(), "{text:?}: {w:?}");
        }
        // Delta is carried as nothing (the document earlier releases wrote).
        let (s, _) = read(&[(VAR, "Delta")]);
        assert_eq!(s.temporality, "");
        let (s, _) = read(&[(VAR, "CUMULATIVE")]);
        assert_eq!(s.temporality, "cumulative");
        let (s, w) = read(&[(VAR, " ")]);
        assert_eq!((s.temporality(), w.len()), (Temporality::Delta, 0));
        for unknown in ["low_memory", "cumulative,delta"] {
            let (s, w) = read(&[(VAR, unknown)]);
            assert_eq!(s.temporality(), Temporality::Delta, "{unknown:?}");
            assert_eq!(w.len(), 1, "{unknown:?}: {w:?}");
            assert!(w[0].contains(VAR), "{w:?}");
        }
    }

    #[test]
    fn resource_attributes_from_the_environment() {
        let (s, _) = read(&[
            ("OTEL_SERVICE_NAME", "checkout"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=ignored,team=pay%20ments,k8s.pod.name=p-1",
            ),
        ]);
        let get = |k: &str| s.resource.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        assert_eq!(
            get("service.name"),
            Some(&ResourceValue::Str("checkout".into()))
        );
        assert_eq!(get("team"), Some(&ResourceValue::Str("pay ments".into())));
        assert_eq!(
            get("appsignal.config.language_integration"),
            Some(&ResourceValue::Str("c".into()))
        );
        assert_eq!(get("appsignal.config.ignore_actions"), None);
    }
}
