//! A closed window in OTLP terms: one metrics, one traces and one logs request (each left out when
//! empty), built with the `opentelemetry-proto` message types. Pure: no I/O, no clock, no
//! randomness, so that the same window and the same [`LiveView`] always give the same requests
//! (ids of spans made from transactions are derived from the sample, not drawn). The mapping is
//! written down in `docs/otlp.md`; the attribute names are the ones AppSignal's collector reads.
//!
//! **Temporality** (`docs/otlp.md`, Temporality). Delta: counters and distributions are the
//! window's amounts. Cumulative: they are the cumulative view's totals of the configuration's app
//! and environment as the leader sees them when it builds the request ([`LiveView`]: exactly what
//! a Prometheus scrape shows then), every series of it in every request, each with its own start
//! and the build time; the agent's own counts become gauges of the window's count, because
//! cumulative-only receivers drop delta sums. Lowmemory: delta, except non-monotonic counters,
//! cumulative. A counter name with one non-monotonic series is a non-monotonic Sum as a whole, in
//! every temporality (as on the Prometheus endpoint). Gauges and host metrics are the window's.

use std::collections::BTreeMap;

use crate::data::Data;
use crate::sample::{LogLine, Sample, SampleEvent, SampleKind};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, metric, number_data_point, AggregationTemporality,
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};

use crate::aggregate::Window;
use crate::cumulative::{LiveSeries, Value};
use crate::export_config::{ExportConfig, ResourceValue, Temporality};
use crate::payload::AgentReport;
use crate::protocol::MetricKey;
use crate::sketch::Sketch;

/// The instrumentation scope every request names.
pub const SCOPE_NAME: &str = "appsignal-agent";
/// Scope attribute (and HTTP header, `X-AppSignal-Export-Id`) that carries the request's stable id.
pub const EXPORT_ID_ATTRIBUTE: &str = "appsignal.export.id";
/// Resource attribute that carries the push key to AppSignal's collector: added at send time only.
pub const PUSH_API_KEY_ATTRIBUTE: &str = "appsignal.config.push_api_key";

/// What a request's metrics take besides the window: the temporality asked for and, unless that is
/// delta for a window without counters, the cumulative view of the window's app and environment.
#[derive(Debug, Clone, Copy)]
pub struct LiveView<'a> {
    pub temporality: Temporality,
    /// The live series of the window's (app name, environment), sorted by (kind, key), as
    /// `Cumulative::live_of` gives them: the committed totals plus every window not yet added
    /// (this one included). Under delta only their monotonic flags are read.
    pub series: &'a [LiveSeries<'a>],
    /// When the request is built (ms since the epoch): the time of every cumulative point.
    pub now_ms: u64,
}

impl LiveView<'_> {
    /// Delta, without a cumulative view (every counter name monotonic unless the window says not).
    pub const DELTA: LiveView<'static> = LiveView {
        temporality: Temporality::Delta,
        series: &[],
        now_ms: 0,
    };
}

/// The requests of one window.
#[derive(Debug, Default)]
pub struct Requests {
    pub metrics: Option<ExportMetricsServiceRequest>,
    pub traces: Option<ExportTraceServiceRequest>,
    pub logs: Option<ExportLogsServiceRequest>,
}

fn any(value: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(value) })
}

fn string(s: impl Into<String>) -> Option<AnyValue> {
    any(any_value::Value::StringValue(s.into()))
}

fn kv(key: impl Into<String>, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value,
        ..Default::default()
    }
}

fn kv_str(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    kv(key, string(value))
}

/// A dynamic value as an OTLP value, types kept (integers stay integers); null, and floats that
/// have no JSON form, are no value.
fn data_value(v: &Data) -> Option<AnyValue> {
    match v {
        Data::Null => None,
        Data::Bool(b) => any(any_value::Value::BoolValue(*b)),
        Data::Integer(i) => any(any_value::Value::IntValue(*i)),
        Data::Float(f) if f.is_finite() => any(any_value::Value::DoubleValue(*f)),
        Data::Float(_) => None,
        Data::String(s) => string(s.clone()),
        Data::Array(items) => any(any_value::Value::ArrayValue(ArrayValue {
            values: items.iter().filter_map(data_value).collect(),
        })),
        Data::Map(map) => any(any_value::Value::KvlistValue(KeyValueList {
            values: map
                .iter()
                .map(|(k, v)| kv(k.clone(), data_value(v)))
                .collect(),
        })),
    }
}

fn nanos_from_ms(ms: f64) -> u64 {
    if ms.is_finite() && ms > 0.0 {
        (ms * 1_000_000.0) as u64
    } else {
        0
    }
}

/// The resource of a configuration: AppSignal's attributes (what its collector reads), the
/// OpenTelemetry ones a generic backend needs, then the process's own (`OTEL_RESOURCE_ATTRIBUTES`).
/// Not the push key: requests are cached on disk, so [`PUSH_API_KEY_ATTRIBUTE`] is put in when a
/// request is sent (`transmit::otlp`).
pub fn resource(config: &ExportConfig) -> Resource {
    let extra: &[(String, ResourceValue)] =
        config.otlp.as_ref().map_or(&[], |s| s.resource.as_slice());
    let find = |key: &str| {
        extra.iter().find_map(|(k, v)| match v {
            ResourceValue::Str(s) if k == key => Some(s.clone()),
            _ => None,
        })
    };
    let service_name = find("service.name").unwrap_or_else(|| {
        if config.app_name.is_empty() {
            "unknown_service".to_owned()
        } else {
            config.app_name.clone()
        }
    });
    let revision = if config.revision.is_empty() {
        "unknown"
    } else {
        config.revision.as_str()
    };
    let mut attributes = vec![
        kv_str("service.name", service_name),
        kv_str("host.name", &config.hostname),
        kv_str("appsignal.config.name", &config.app_name),
        kv_str("appsignal.config.environment", &config.environment),
        kv_str("appsignal.config.revision", revision),
        kv_str("deployment.environment.name", &config.environment),
        kv_str("telemetry.sdk.name", "libappsignal"),
        kv_str("telemetry.sdk.language", "rust"),
        kv_str("telemetry.sdk.version", crate::VERSION),
    ];
    if !config.revision.is_empty() {
        attributes.push(kv_str("service.version", &config.revision));
    }
    for (key, value) in extra {
        if attributes.iter().any(|a| a.key == *key) {
            continue;
        }
        let value = match value {
            ResourceValue::Str(s) => string(s.clone()),
            ResourceValue::List(items) => any(any_value::Value::ArrayValue(ArrayValue {
                values: items.iter().filter_map(|i| string(i.clone())).collect(),
            })),
        };
        attributes.push(kv(key.clone(), value));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

pub(crate) fn scope(export_id: &str) -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: crate::VERSION.to_owned(),
        attributes: vec![kv_str(EXPORT_ID_ATTRIBUTE, export_id)],
        ..Default::default()
    })
}

/// Builds the requests of `window`; `export_id` goes on every scope, `report` becomes
/// `appsignal.agent.*` metrics, `live` says how counters and distributions are sent.
pub fn requests(
    window: &Window,
    export_id: &str,
    report: &AgentReport,
    live: &LiveView<'_>,
) -> Requests {
    let resource = resource(&window.config);
    let metrics = metrics(window, report, live);
    let spans: Vec<Span> = window.samples.iter().flat_map(sample_spans).collect();
    let logs: Vec<LogRecord> = window.logs.iter().map(log_record).collect();
    Requests {
        metrics: (!metrics.is_empty()).then(|| ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: scope(export_id),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }),
        traces: (!spans.is_empty()).then(|| ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: scope(export_id),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }),
        logs: (!logs.is_empty()).then(|| ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![ScopeLogs {
                    scope: scope(export_id),
                    log_records: logs,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

fn tag_attributes(tags: &[(String, String)]) -> Vec<KeyValue> {
    tags.iter()
        .map(|(k, v)| kv_str(k.clone(), v.clone()))
        .collect()
}

/// A host metric's semantic-convention name, attributes and scale, for a gauge of the leader's
/// host-metrics collector (recognised by its name and its `hostname` tag). `None`: not a host
/// metric, or one without a convention (it keeps its own name).
fn host_metric(key: &MetricKey) -> Option<(String, Vec<KeyValue>, f64)> {
    if key.tags.first().map(|(k, _)| k.as_str()) != Some("hostname") {
        return None;
    }
    let tag = |name: &str| {
        key.tags
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let named =
        |name: &str, attrs: Vec<KeyValue>, scale: f64| Some((name.to_owned(), attrs, scale));
    match key.name.as_str() {
        "cpu" => named(
            "system.cpu.utilization",
            vec![kv_str("cpu.mode", tag("state")?)],
            0.01,
        ),
        "load_average" => named(
            &format!("system.cpu.load_average.{}m", tag("window")?),
            vec![],
            1.0,
        ),
        "memory" => match tag("state")? {
            "total" => named("system.memory.limit", vec![], 1.0),
            "available" => named("system.linux.memory.available", vec![], 1.0),
            state => named(
                "system.memory.usage",
                vec![kv_str("system.memory.state", state)],
                1.0,
            ),
        },
        "swap" => match tag("state")? {
            "used" => named(
                "system.paging.usage",
                vec![kv_str("system.paging.state", "used")],
                1.0,
            ),
            _ => named("system.paging.limit", vec![], 1.0),
        },
        "disk_space" => {
            let mount = kv_str("system.filesystem.mountpoint", tag("mountpoint")?);
            match tag("state")? {
                "total" => named("system.filesystem.limit", vec![mount], 1.0),
                state => named(
                    "system.filesystem.usage",
                    vec![mount, kv_str("system.filesystem.state", state)],
                    1.0,
                ),
            }
        }
        "disk_usage" => named(
            "system.filesystem.utilization",
            vec![kv_str("system.filesystem.mountpoint", tag("mountpoint")?)],
            0.01,
        ),
        "disk_io_read" | "disk_io_written" => named(
            "system.disk.io",
            vec![
                kv_str("system.device", tag("device")?),
                kv_str(
                    "disk.io.direction",
                    if key.name == "disk_io_read" {
                        "read"
                    } else {
                        "write"
                    },
                ),
            ],
            1.0,
        ),
        "network_rx" | "network_tx" => named(
            "system.network.io",
            vec![
                kv_str("network.interface.name", tag("interface")?),
                kv_str(
                    "network.io.direction",
                    if key.name == "network_rx" {
                        "receive"
                    } else {
                        "transmit"
                    },
                ),
            ],
            1.0,
        ),
        "cgroup_memory_limit" => named("container.memory.limit", vec![], 1.0),
        "cgroup_memory_usage" => named("container.memory.usage", vec![], 1.0),
        "cgroup_cpu_limit" => named("container.cpu.limit", vec![], 1.0),
        _ => None,
    }
}

fn host_unit(name: &str) -> &'static str {
    match name {
        "system.cpu.utilization" | "system.filesystem.utilization" => "1",
        "container.cpu.limit" => "{cpu}",
        n if n.starts_with("system.cpu.load_average") => "{thread}",
        _ => "By",
    }
}

#[derive(Default)]
struct MetricBuilder {
    /// (name, kind) → metric, so that points of one name share one metric of one type.
    metrics: BTreeMap<(String, u8), Metric>,
}

impl MetricBuilder {
    fn entry(
        &mut self,
        name: &str,
        kind: u8,
        unit: &str,
        empty: metric::Data,
    ) -> &mut metric::Data {
        let metric = self
            .metrics
            .entry((name.to_owned(), kind))
            .or_insert_with(|| Metric {
                name: name.to_owned(),
                unit: unit.to_owned(),
                data: Some(empty),
                ..Default::default()
            });
        // Always Some: set just above, never taken.
        metric
            .data
            .get_or_insert(metric::Data::Gauge(Gauge::default()))
    }

    /// A point of the Sum `name`; its temporality and monotonic flag are the name's (the same
    /// for every point of it).
    fn sum(
        &mut self,
        name: &str,
        point: NumberDataPoint,
        temporality: AggregationTemporality,
        is_monotonic: bool,
    ) {
        let empty = metric::Data::Sum(Sum {
            data_points: Vec::new(),
            aggregation_temporality: temporality as i32,
            is_monotonic,
        });
        if let metric::Data::Sum(sum) = self.entry(name, 0, "", empty) {
            sum.data_points.push(point);
        }
    }

    fn gauge(&mut self, name: &str, unit: &str, point: NumberDataPoint) {
        let empty = metric::Data::Gauge(Gauge::default());
        if let metric::Data::Gauge(gauge) = self.entry(name, 1, unit, empty) {
            gauge.data_points.push(point);
        }
    }

    fn histogram(
        &mut self,
        name: &str,
        point: ExponentialHistogramDataPoint,
        temporality: AggregationTemporality,
    ) {
        let empty = metric::Data::ExponentialHistogram(ExponentialHistogram {
            data_points: Vec::new(),
            aggregation_temporality: temporality as i32,
        });
        if let metric::Data::ExponentialHistogram(h) = self.entry(name, 2, "", empty) {
            h.data_points.push(point);
        }
    }
}

fn number_point(
    attributes: Vec<KeyValue>,
    start_ns: u64,
    time_ns: u64,
    value: f64,
) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start_ns,
        time_unix_nano: time_ns,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

/// A sketch as an exponential histogram point: the buckets are the sketch's own, not re-bucketed.
pub fn histogram_point(
    attributes: Vec<KeyValue>,
    start_ns: u64,
    time_ns: u64,
    sketch: &Sketch,
) -> ExponentialHistogramDataPoint {
    let buckets = |b: &crate::sketch::Buckets| {
        (!b.counts().is_empty()).then(|| Buckets {
            offset: b.offset(),
            bucket_counts: b.counts().to_vec(),
        })
    };
    ExponentialHistogramDataPoint {
        attributes,
        start_time_unix_nano: start_ns,
        time_unix_nano: time_ns,
        count: sketch.count(),
        sum: Some(sketch.sum()),
        scale: sketch.scale(),
        zero_count: sketch.zero_count(),
        positive: buckets(sketch.positive()),
        negative: buckets(sketch.negative()),
        min: sketch.min(),
        max: sketch.max(),
        zero_threshold: f64::MIN_POSITIVE,
        ..Default::default()
    }
}

fn sorted<'a>(keys: impl Iterator<Item = &'a MetricKey>) -> Vec<&'a MetricKey> {
    let mut keys: Vec<&MetricKey> = keys.collect();
    crate::sort::sort(&mut keys);
    keys
}

fn is_increment(amount: f64) -> bool {
    amount.is_finite() && amount >= 0.0
}

fn metrics(window: &Window, report: &AgentReport, live: &LiveView<'_>) -> Vec<Metric> {
    use AggregationTemporality::{Cumulative, Delta};
    let start_ns = window.start_ms.saturating_mul(1_000_000);
    let end_ns = window.end_ms.saturating_mul(1_000_000);
    let now_ns = live.now_ms.saturating_mul(1_000_000);
    let mut builder = MetricBuilder::default();
    // Counter names with a non-monotonic series (in the cumulative view, or a negative amount in
    // this window): such a name is a non-monotonic Sum as a whole.
    let mut non_monotonic: Vec<&str> = live
        .series
        .iter()
        .filter_map(|s| match *s.value {
            Value::Counter {
                monotonic: false, ..
            } => Some(s.key.name.as_str()),
            _ => None,
        })
        .chain(
            window
                .metrics
                .counters
                .iter()
                .filter(|(_, amount)| !is_increment(**amount))
                .map(|(k, _)| k.name.as_str()),
        )
        .collect();
    crate::sort::sort(&mut non_monotonic);
    let monotonic = |name: &str| non_monotonic.binary_search(&name).is_err();
    // Which counter names are sent from the cumulative view; the others are the window's deltas.
    let cumulative_counter = |name: &str| match live.temporality {
        Temporality::Delta => false,
        Temporality::Cumulative => true,
        Temporality::LowMemory => !monotonic(name),
    };
    let cumulative_distributions = live.temporality == Temporality::Cumulative;
    // Keys in order, so that points come out in a stable order: the same window always gives the
    // same bytes (a replayed window is the same request).
    let counters = sorted(window.metrics.counters.keys());
    for (key, value) in counters
        .into_iter()
        .map(|k| (k, &window.metrics.counters[k]))
        .filter(|(k, _)| !cumulative_counter(&k.name))
    {
        builder.sum(
            &key.name,
            number_point(tag_attributes(&key.tags), start_ns, end_ns, *value),
            Delta,
            monotonic(&key.name),
        );
    }
    // The cumulative view is sorted by (kind, key): its points come out in a stable order too.
    for s in live.series {
        let series_start_ns = s.start_ms.saturating_mul(1_000_000);
        match &*s.value {
            Value::Counter { total, .. } if cumulative_counter(&s.key.name) => builder.sum(
                &s.key.name,
                number_point(tag_attributes(&s.key.tags), series_start_ns, now_ns, *total),
                Cumulative,
                monotonic(&s.key.name),
            ),
            Value::Distribution(sketch) if cumulative_distributions => builder.histogram(
                &s.key.name,
                histogram_point(tag_attributes(&s.key.tags), series_start_ns, now_ns, sketch),
                Cumulative,
            ),
            _ => {}
        }
    }
    let gauges = sorted(window.metrics.gauges.keys());
    for (key, gauge) in gauges.into_iter().map(|k| (k, &window.metrics.gauges[k])) {
        let at_ns = gauge.at_ms.saturating_mul(1_000_000);
        match host_metric(key) {
            Some((name, attributes, scale)) => builder.gauge(
                &name,
                host_unit(&name),
                number_point(attributes, start_ns, at_ns, gauge.value * scale),
            ),
            None => builder.gauge(
                &key.name,
                "",
                number_point(tag_attributes(&key.tags), start_ns, at_ns, gauge.value),
            ),
        }
    }
    if !cumulative_distributions {
        let distributions = sorted(window.metrics.distributions.keys());
        for (key, sketch) in distributions
            .into_iter()
            .map(|k| (k, &window.metrics.distributions[k]))
        {
            builder.histogram(
                &key.name,
                histogram_point(tag_attributes(&key.tags), start_ns, end_ns, sketch),
                Delta,
            );
        }
    }
    for (name, value) in report.counts.named() {
        if value > 0 {
            let name = format!("appsignal.agent.{name}");
            let point = number_point(Vec::new(), start_ns, end_ns, value as f64);
            // Cumulative-only receivers drop (or refuse) delta sums: the window's count as a gauge.
            if live.temporality == Temporality::Cumulative {
                builder.gauge(&name, "", point);
            } else {
                builder.sum(&name, point, Delta, true);
            }
        }
    }
    builder.metrics.into_values().collect()
}

// ---------------------------------------------------------------------------------------------
// Traces

/// A 64-bit hash (FNV-1a, then a SplitMix64 finaliser) for ids derived from a sample.
fn hash64(seed: u64, parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h.max(1)
}

/// Hex text of exactly `bytes` bytes, not all zero.
fn hex_id(text: Option<&str>, bytes: usize) -> Option<Vec<u8>> {
    let text = text?;
    if text.len() != bytes * 2 {
        return None;
    }
    let id: Option<Vec<u8>> = (0..bytes)
        .map(|i| u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok())
        .collect();
    id.filter(|id| id.iter().any(|b| *b != 0))
}

/// The kind a sample or event names in `span_kind` (samples of the OTLP intake keep the kind
/// they were received with).
fn span_kind(kind: Option<&str>) -> Option<span::SpanKind> {
    Some(match kind? {
        "server" => span::SpanKind::Server,
        "client" => span::SpanKind::Client,
        "producer" => span::SpanKind::Producer,
        "consumer" => span::SpanKind::Consumer,
        "internal" => span::SpanKind::Internal,
        _ => return None,
    })
}

/// The text under `key` of a map value, `""` when it is not there or not text.
fn entry_text<'a>(map: &'a BTreeMap<String, Data>, key: &str) -> &'a str {
    match map.get(key) {
        Some(Data::String(s)) => s,
        _ => "",
    }
}

/// Backtrace lines: an array of strings, or a string holding one (JSON-encoded or plain lines).
fn backtrace_lines(v: Option<&Data>) -> Vec<String> {
    match v {
        Some(Data::Array(lines)) => lines
            .iter()
            .map(|l| match l {
                Data::String(s) => s.clone(),
                other => other.to_json(),
            })
            .collect(),
        Some(Data::String(s)) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(parsed @ serde_json::Value::Array(_)) => {
                backtrace_lines(Some(&crate::sample::data_from_json(parsed)))
            }
            _ => s.lines().map(str::to_owned).collect(),
        },
        _ => Vec::new(),
    }
}

/// The `exception` event of an error: its class, message and backtrace.
fn exception_event(
    class: &str,
    message: &str,
    backtrace: Option<&Data>,
    time_ns: u64,
) -> (span::Event, String) {
    let event = span::Event {
        time_unix_nano: time_ns,
        name: "exception".to_owned(),
        attributes: vec![
            kv_str("exception.type", class),
            kv_str("exception.message", message),
            kv_str(
                "exception.stacktrace",
                backtrace_lines(backtrace).join("\n"),
            ),
            kv(
                "appsignal.alert_this_error",
                any(any_value::Value::BoolValue(true)),
            ),
        ],
        ..Default::default()
    };
    (event, class.to_owned())
}

/// The `exception` event of an error kept as a map (a child span's `error` attribute: `class`
/// or `name`, `message`, `backtrace` or `backtrace_json`).
fn map_exception_event(error: &BTreeMap<String, Data>, time_ns: u64) -> (span::Event, String) {
    let class = match entry_text(error, "class") {
        "" => entry_text(error, "name"),
        c => c,
    };
    let backtrace = error
        .get("backtrace")
        .or_else(|| error.get("backtrace_json"));
    exception_event(class, entry_text(error, "message"), backtrace, time_ns)
}

/// The attribute name of a sample-data key, as AppSignal's collector reads it.
fn sample_data_attribute(key: &str) -> String {
    match key {
        "params" => "appsignal.request.payload".to_owned(),
        "query_parameters" => "appsignal.request.query_parameters".to_owned(),
        "session_data" => "appsignal.request.session_data".to_owned(),
        "function_parameters" | "function_params" => "appsignal.function.parameters".to_owned(),
        "custom_data" => "appsignal.custom_data".to_owned(),
        other => format!("appsignal.{other}"),
    }
}

/// `error_causes` of the sample data as AppSignal's collector reads them: one JSON array of
/// `{"name", "message", "lines"}`.
fn error_causes(causes: &Data) -> String {
    let list: Vec<serde_json::Value> = match causes {
        Data::Array(items) => items
            .iter()
            .map(|c| {
                let empty = BTreeMap::new();
                let c = match c {
                    Data::Map(map) => map,
                    _ => &empty,
                };
                let name = match entry_text(c, "name") {
                    "" => entry_text(c, "class"),
                    n => n,
                };
                serde_json::json!({
                    "name": name,
                    "message": entry_text(c, "message"),
                    "lines": backtrace_lines(c.get("lines").or_else(|| c.get("backtrace"))),
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    serde_json::Value::Array(list).to_string()
}

fn root_attributes(sample: &Sample) -> Vec<KeyValue> {
    let mut attributes = vec![
        kv_str("appsignal.namespace", sample.namespace.as_str()),
        kv_str(
            "appsignal.action_name",
            sample.action.as_deref().unwrap_or(""),
        ),
    ];
    for (key, value) in &sample.sample_data {
        match (key.as_str(), value) {
            ("tags", Data::Map(tags)) => {
                for (tag, v) in tags {
                    attributes.push(kv(format!("appsignal.tag.{tag}"), data_value(v)));
                }
            }
            ("error_causes", causes) => {
                attributes.push(kv_str("appsignal.error_causes", error_causes(causes)));
            }
            (key, value) => {
                // Sample data is kept as JSON text (the sample's own shape) or as a value: a JSON string either way.
                let json = match value {
                    Data::String(s) => s.clone(),
                    v => v.to_json(),
                };
                attributes.push(kv_str(sample_data_attribute(key), json));
            }
        }
    }
    for (key, value) in &sample.metadata {
        attributes.push(kv_str(format!("appsignal.metadata.{key}"), value.as_str()));
    }
    for (key, value) in sample.attributes.iter().flatten() {
        attributes.push(kv(key.clone(), data_value(value)));
    }
    attributes
}

struct TraceContext {
    trace_id: Vec<u8>,
    sample_key: String,
    sample_start_ns: u64,
}

fn event_spans(
    ctx: &TraceContext,
    events: &[SampleEvent],
    parent: &[u8],
    path: &str,
    spans: &mut Vec<Span>,
) {
    for (n, event) in events.iter().enumerate() {
        let path = format!("{path}.{n}");
        let span_id = hex_id(event.span_id.as_deref(), 8)
            .unwrap_or_else(|| hash64(2, &[&ctx.sample_key, &path]).to_be_bytes().to_vec());
        let (name, title) = (event.name.as_str(), event.title.as_str());
        let display = if !title.is_empty() && title != name {
            format!("{name} ({title})")
        } else {
            name.to_owned()
        };
        let start_ns = ctx.sample_start_ns + nanos_from_ms(event.start);
        let end_ns = start_ns + nanos_from_ms(event.duration);
        let mut attributes = Vec::new();
        let body = event.body.as_str();
        let is_sql = event.body_format == 1;
        if is_sql {
            attributes.push(kv_str("db.query.text", body));
            if !event.attributes.contains_key("db.system.name") {
                attributes.push(kv_str("db.system.name", "other_sql"));
            }
        } else if !body.is_empty() {
            attributes.push(kv_str("appsignal.body", body));
        }
        for (k, v) in &event.attributes {
            if k != "error" {
                attributes.push(kv(k.clone(), data_value(v)));
            }
        }
        let mut otlp_events = Vec::new();
        let mut status = None;
        if let Some(Data::Map(error)) = event.attributes.get("error") {
            let (exception, class) = map_exception_event(error, end_ns);
            otlp_events.push(exception);
            attributes.push(kv_str("error.type", class));
            status = Some(Status {
                code: status::StatusCode::Error as i32,
                ..Default::default()
            });
        }
        spans.push(Span {
            trace_id: ctx.trace_id.clone(),
            span_id: span_id.clone(),
            parent_span_id: parent.to_vec(),
            name: display,
            kind: span_kind(event.span_kind.as_deref()).unwrap_or(if is_sql {
                span::SpanKind::Client
            } else {
                span::SpanKind::Internal
            }) as i32,
            start_time_unix_nano: start_ns,
            end_time_unix_nano: end_ns.max(start_ns),
            attributes,
            events: otlp_events,
            status,
            ..Default::default()
        });
        event_spans(ctx, &event.children, &span_id, &path, spans);
    }
}

/// The spans of one sample: its root (the transaction or root span) and one child per event,
/// nested as recorded.
pub fn sample_spans(sample: &Sample) -> Vec<Span> {
    let start_ms = sample.start as f64;
    let start_ns = nanos_from_ms(start_ms);
    let end_ns = match sample.duration.unwrap_or(0.0) {
        d if d > 0.0 => start_ns + nanos_from_ms(d),
        _ => nanos_from_ms(sample.end.unwrap_or(0) as f64).max(start_ns),
    };
    let kind = sample.kind.as_str();
    let sample_key = format!("{kind}|{}|{start_ms}", sample.id);
    let trace_id = hex_id(sample.trace_id.as_deref(), 16).unwrap_or_else(|| {
        let mut id = hash64(0, &[&sample_key]).to_be_bytes().to_vec();
        id.extend_from_slice(&hash64(1, &[&sample_key]).to_be_bytes());
        id
    });
    let is_span = sample.kind == SampleKind::Span;
    let span_id = is_span
        .then(|| hex_id(Some(&sample.id), 8))
        .flatten()
        .unwrap_or_else(|| hash64(2, &[&sample_key, "root"]).to_be_bytes().to_vec());
    let parent = hex_id(sample.parent_span_id.clone().flatten().as_deref(), 8).unwrap_or_default();
    let namespace = sample.namespace.as_str();
    let span_name = sample.name.clone().flatten().unwrap_or_default();
    let name = match (sample.action.as_deref().unwrap_or(""), span_name.as_str()) {
        ("", "") => "unknown",
        ("", name) => name,
        (action, _) => action,
    };
    let mut attributes = root_attributes(sample);
    let mut events = Vec::new();
    let mut status = None;
    if let Some(error) = &sample.error {
        let (exception, class) =
            exception_event(&error.class, &error.message, Some(&error.backtrace), end_ns);
        events.push(exception);
        attributes.push(kv_str("error.type", class));
        status = Some(Status {
            code: status::StatusCode::Error as i32,
            ..Default::default()
        });
    }
    let mut spans = vec![Span {
        trace_id: trace_id.clone(),
        span_id: span_id.clone(),
        parent_span_id: parent,
        name: name.to_owned(),
        kind: span_kind(sample.span_kind.as_deref()).unwrap_or(if namespace == "http_request" {
            span::SpanKind::Server
        } else {
            span::SpanKind::Internal
        }) as i32,
        start_time_unix_nano: start_ns,
        end_time_unix_nano: end_ns,
        attributes,
        events,
        status,
        ..Default::default()
    }];
    let ctx = TraceContext {
        trace_id,
        sample_key,
        sample_start_ns: start_ns,
    };
    event_spans(&ctx, &sample.events, &span_id, "e", &mut spans);
    spans
}

// ---------------------------------------------------------------------------------------------
// Logs

/// Our severity numbers (2 debug, 3 info, 5 warn, 6 error, 7 fatal) on OTLP's scale.
fn severity_number(ours: i64) -> i32 {
    match ours {
        ..=2 => 5,
        3 | 4 => 9,
        5 => 13,
        6 => 17,
        _ => 21,
    }
}

pub fn log_record(line: &LogLine) -> LogRecord {
    let time_ns = nanos_from_ms(line.timestamp as f64);
    let mut attributes = vec![kv_str("appsignal.group", line.group.as_str())];
    for (k, v) in &line.attributes {
        attributes.push(kv(k.clone(), data_value(v)));
    }
    LogRecord {
        time_unix_nano: time_ns,
        observed_time_unix_nano: time_ns,
        severity_number: severity_number(i64::from(line.severity_number)),
        severity_text: line.severity.clone(),
        body: string(line.message.as_str()),
        attributes,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::MetricSet;
    use crate::protocol::GaugeValue;
    use serde_json::{json, Value};

    /// A sample from a test's JSON, the fields it leaves out filled with empty values.
    fn sample_of(mut v: Value) -> Sample {
        fn fill(v: &mut Value, defaults: &Value) {
            if let (Value::Object(map), Value::Object(defaults)) = (v, defaults) {
                for (k, d) in defaults {
                    map.entry(k.clone()).or_insert_with(|| d.clone());
                }
            }
        }
        fn fill_events(events: &mut Value) {
            for event in events.as_array_mut().into_iter().flatten() {
                fill(
                    event,
                    &json!({"body": "", "body_format": 0, "children": [], "duration": 0.0,
                            "gc_duration": 0, "group": "", "name": "", "start": 0.0, "title": ""}),
                );
                fill_events(&mut event["children"]);
            }
        }
        fill(
            &mut v,
            &json!({"dropped_events": 0, "events": [], "hostname": "", "id": "",
                    "kind": "transaction", "namespace": "", "revision": "", "start": 0,
                    "environment_metadata": {}, "metadata": {}, "sample_data": {}}),
        );
        fill_events(&mut v["events"]);
        serde_json::from_value(v).unwrap()
    }

    fn key(name: &str, tags: &[(&str, &str)]) -> MetricKey {
        MetricKey {
            name: name.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn window() -> Window {
        let mut metrics = MetricSet::default();
        metrics.counters.insert(key("jobs", &[("queue", "a")]), 3.0);
        metrics.counters.insert(key("jobs", &[("queue", "b")]), 4.0);
        metrics.gauges.insert(
            key("cpu", &[("hostname", "h"), ("state", "user")]),
            GaugeValue {
                value: 25.0,
                at_ms: 1500,
            },
        );
        metrics.gauges.insert(
            key("memory", &[("hostname", "h"), ("state", "used")]),
            GaugeValue {
                value: 1024.0,
                at_ms: 1500,
            },
        );
        let mut sketch = Sketch::new();
        for v in [1.0, 2.0, 3.0, -1.0, 0.0] {
            sketch.add(v);
        }
        metrics.distributions.insert(key("latency", &[]), sketch);
        let sample = json!({
            "kind": "transaction", "id": "t1", "namespace": "background_job", "action": "Job#run",
            "start": 1000, "end": 1010, "duration": 10.0,
            "error": {"class": "E", "message": "m", "backtrace": ["a:1", "b:2"]},
            "events": [{"name": "outer", "title": "", "body": "", "body_format": 0, "start": 1.0,
                        "duration": 5.0, "children": [
                {"name": "sql.x", "title": "Q", "body": "SELECT ?", "body_format": 1,
                 "start": 2.0, "duration": 1.0, "children": []}]}],
            "sample_data": {"tags": {"user": 7}, "custom_data": {"a": 1},
                            "error_causes": [{"name": "C", "message": "why", "backtrace": ["c:3"]}]},
            "metadata": {"path": "/x"}
        });
        Window {
            config: ExportConfig {
                push_api_key: "key".into(),
                app_name: "app".into(),
                environment: "prod".into(),
                hostname: "h".into(),
                ..Default::default()
            },
            config_id: 1,
            segment: "s".repeat(32),
            start_ms: 1000,
            end_ms: 2000,
            metrics,
            batches: 1,
            samples: vec![sample_of(sample)],
            logs: vec![
                serde_json::from_value(json!({"timestamp": 1200, "group": "g",
                "severity": "error", "severity_number": 6, "message": "bad",
                "attributes": {"n": 1}, "format": "plaintext", "hostname": "h"}))
                .unwrap(),
            ],
            counts: Default::default(),
            bytes: 0,
        }
    }

    fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        attrs
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    #[test]
    fn metrics_map_to_delta_sums_gauges_and_exponential_histograms() {
        let report = AgentReport {
            counts: crate::counts::AgentCounts {
                dropped_updates: 2,
                ..Default::default()
            },
            ..AgentReport::default()
        };
        let r = requests(&window(), "export-1", &report, &LiveView::DELTA)
            .metrics
            .unwrap();
        let rm = &r.resource_metrics[0];
        let scope = rm.scope_metrics[0].scope.as_ref().unwrap();
        assert_eq!(
            attr(&scope.attributes, EXPORT_ID_ATTRIBUTE),
            Some(&s("export-1"))
        );
        let metrics = &rm.scope_metrics[0].metrics;
        let by_name = |n: &str| metrics.iter().find(|m| m.name == n).unwrap();
        let Some(metric::Data::Sum(jobs)) = &by_name("jobs").data else {
            panic!("jobs is a sum")
        };
        assert_eq!(jobs.data_points.len(), 2, "one metric, a point per tag set");
        assert!(jobs.is_monotonic);
        assert_eq!(
            jobs.aggregation_temporality,
            AggregationTemporality::Delta as i32
        );
        assert_eq!(jobs.data_points[0].start_time_unix_nano, 1_000_000_000);
        assert_eq!(jobs.data_points[0].time_unix_nano, 2_000_000_000);
        let Some(metric::Data::Gauge(cpu)) = &by_name("system.cpu.utilization").data else {
            panic!("cpu is a gauge")
        };
        assert_eq!(
            cpu.data_points[0].value,
            Some(number_data_point::Value::AsDouble(0.25))
        );
        assert_eq!(
            attr(&cpu.data_points[0].attributes, "cpu.mode"),
            Some(&s("user"))
        );
        assert_eq!(attr(&cpu.data_points[0].attributes, "hostname"), None);
        let Some(metric::Data::Gauge(memory)) = &by_name("system.memory.usage").data else {
            panic!("memory is a gauge")
        };
        assert_eq!(
            attr(&memory.data_points[0].attributes, "system.memory.state"),
            Some(&s("used"))
        );
        let Some(metric::Data::ExponentialHistogram(h)) = &by_name("latency").data else {
            panic!("latency is an exponential histogram")
        };
        let p = &h.data_points[0];
        assert_eq!(
            (p.count, p.sum, p.min, p.max),
            (5, Some(5.0), Some(-1.0), Some(3.0))
        );
        assert_eq!(p.zero_count, 1);
        let positive: u64 = p.positive.as_ref().unwrap().bucket_counts.iter().sum();
        let negative: u64 = p.negative.as_ref().unwrap().bucket_counts.iter().sum();
        assert_eq!((positive, negative), (3, 1));
        assert_eq!(p.scale, crate::sketch::MAX_SCALE);
        let Some(metric::Data::Sum(dropped)) = &by_name("appsignal.agent.dropped_updates").data
        else {
            panic!("agent counts are sums")
        };
        assert_eq!(
            dropped.data_points[0].value,
            Some(number_data_point::Value::AsDouble(2.0))
        );
    }

    #[test]
    fn a_sample_becomes_a_tree_of_spans_with_its_error() {
        let r = requests(&window(), "e", &AgentReport::default(), &LiveView::DELTA)
            .traces
            .unwrap();
        let spans = &r.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 3);
        let (root, outer, sql) = (&spans[0], &spans[1], &spans[2]);
        assert_eq!(root.name, "Job#run");
        assert_eq!(root.kind, span::SpanKind::Internal as i32);
        assert!(root.parent_span_id.is_empty());
        assert_eq!(outer.parent_span_id, root.span_id);
        assert_eq!(sql.parent_span_id, outer.span_id);
        assert!(spans
            .iter()
            .all(|sp| sp.trace_id == root.trace_id && sp.trace_id.len() == 16));
        assert_eq!(sql.name, "sql.x (Q)");
        assert_eq!(sql.kind, span::SpanKind::Client as i32);
        assert_eq!(attr(&sql.attributes, "db.query.text"), Some(&s("SELECT ?")));
        assert_eq!(
            attr(&sql.attributes, "db.system.name"),
            Some(&s("other_sql"))
        );
        assert_eq!(sql.start_time_unix_nano, 1_002_000_000);
        assert_eq!(sql.end_time_unix_nano, 1_003_000_000);
        assert_eq!(root.end_time_unix_nano, 1_010_000_000);
        assert_eq!(
            attr(&root.attributes, "appsignal.tag.user"),
            Some(&any_value::Value::IntValue(7))
        );
        assert_eq!(
            attr(&root.attributes, "appsignal.custom_data"),
            Some(&s(r#"{"a":1}"#))
        );
        assert_eq!(
            attr(&root.attributes, "appsignal.error_causes"),
            Some(&s(r#"[{"lines":["c:3"],"message":"why","name":"C"}]"#))
        );
        assert_eq!(
            attr(&root.attributes, "appsignal.metadata.path"),
            Some(&s("/x"))
        );
        assert_eq!(
            root.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        let exception = &root.events[0];
        assert_eq!(exception.name, "exception");
        assert_eq!(
            attr(&exception.attributes, "exception.stacktrace"),
            Some(&s("a:1\nb:2"))
        );
        // The same window gives the same ids (a replayed window is the same request).
        let again = requests(&window(), "e", &AgentReport::default(), &LiveView::DELTA)
            .traces
            .unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn a_span_sample_keeps_its_ids_and_logs_map_severities() {
        let sample = json!({"kind": "span", "id": "00f067aa0ba902b7",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "parent_span_id": "b7ad6b7169203331",
            "namespace": "web", "action": "GET /", "start": 5, "duration": 1.0,
            "attributes": {"http.route": "/"}, "events": []});
        let spans = sample_spans(&sample_of(sample));
        assert_eq!(
            spans[0].span_id,
            vec![0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(spans[0].trace_id[0], 0x4b);
        assert_eq!(spans[0].parent_span_id[7], 0x31);
        assert_eq!(attr(&spans[0].attributes, "http.route"), Some(&s("/")));
        let logs = requests(&window(), "e", &AgentReport::default(), &LiveView::DELTA)
            .logs
            .unwrap();
        let record = &logs.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(record.severity_number, 17);
        assert_eq!(record.severity_text, "error");
        assert_eq!(record.time_unix_nano, 1_200_000_000);
        assert_eq!(
            attr(&record.attributes, "n"),
            Some(&any_value::Value::IntValue(1))
        );
        assert_eq!([2, 3, 5, 6, 7].map(severity_number), [5, 9, 13, 17, 21]);
    }

    #[test]
    fn the_resource_names_the_app_and_never_carries_the_key() {
        let mut config = window().config;
        let r = resource(&config);
        assert_eq!(attr(&r.attributes, "service.name"), Some(&s("app")));
        assert_eq!(
            attr(&r.attributes, "appsignal.config.revision"),
            Some(&s("unknown"))
        );
        // The key is added when the request is sent, never cached with it.
        assert_eq!(attr(&r.attributes, PUSH_API_KEY_ATTRIBUTE), None);
        assert_eq!(attr(&r.attributes, "service.version"), None);
        config.revision = "abc".into();
        let r = resource(&config);
        assert_eq!(attr(&r.attributes, "service.version"), Some(&s("abc")));
    }

    /// The metrics of `window` under `temporality`, over a cumulative state that counted an earlier
    /// window (start 500 ms): `jobs{queue=a}` 10, `depth` −2 (so non-monotonic), `gone` 1 (not in
    /// `window`), `latency` one value. `window` adds `depth` +1 and `refund` −5 to [`window`]'s.
    fn metrics_with(temporality: Temporality, report: &AgentReport) -> Vec<Metric> {
        use crate::cumulative::{Cumulative, WindowRef, DEFAULT_EXPIRY};
        let mut earlier = MetricSet::default();
        earlier
            .counters
            .insert(key("jobs", &[("queue", "a")]), 10.0);
        earlier.counters.insert(key("depth", &[]), -2.0);
        earlier.counters.insert(key("gone", &[]), 1.0);
        let mut sketch = Sketch::new();
        sketch.add(8.0);
        earlier.distributions.insert(key("latency", &[]), sketch);
        let mut state = Cumulative::new(DEFAULT_EXPIRY);
        let at = |start_ms, metrics| WindowRef {
            app: "app",
            env: "prod",
            start_ms,
            metrics,
        };
        state.add_window(at(500, &earlier), &"1".repeat(32), 900);
        let mut window = window();
        window.metrics.counters.insert(key("depth", &[]), 1.0);
        window.metrics.counters.insert(key("refund", &[]), -5.0);
        let series = state.live_of("app", "prod", &[at(1000, &window.metrics)]);
        let live = LiveView {
            temporality,
            series: &series,
            now_ms: 3000,
        };
        let r = requests(&window, "e", report, &live).metrics.unwrap();
        r.resource_metrics[0].scope_metrics[0].metrics.clone()
    }

    /// A point as (first tag's value or "", start ms, time ms, value).
    type SumPoint = (String, u64, u64, f64);

    /// (temporality, monotonic, points).
    fn sum_of(metrics: &[Metric], name: &str) -> Option<(i32, bool, Vec<SumPoint>)> {
        let m = metrics.iter().find(|m| m.name == name)?;
        let Some(metric::Data::Sum(sum)) = &m.data else {
            panic!("{name} is not a sum: {m:?}")
        };
        let points = sum
            .data_points
            .iter()
            .map(|p| {
                let tag = p.attributes.first().map_or(String::new(), |a| {
                    match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(any_value::Value::StringValue(v)) => v.clone(),
                        _ => String::new(),
                    }
                });
                let Some(number_data_point::Value::AsDouble(v)) = p.value else {
                    panic!("a double")
                };
                (
                    tag,
                    p.start_time_unix_nano / 1_000_000,
                    p.time_unix_nano / 1_000_000,
                    v,
                )
            })
            .collect();
        Some((sum.aggregation_temporality, sum.is_monotonic, points))
    }

    /// (temporality, [(start ms, time ms, count)]).
    fn histogram_of(metrics: &[Metric], name: &str) -> (i32, Vec<(u64, u64, u64)>) {
        let m = metrics.iter().find(|m| m.name == name).unwrap();
        let Some(metric::Data::ExponentialHistogram(h)) = &m.data else {
            panic!("{name} is not a histogram")
        };
        let points = h
            .data_points
            .iter()
            .map(|p| {
                (
                    p.start_time_unix_nano / 1_000_000,
                    p.time_unix_nano / 1_000_000,
                    p.count,
                )
            })
            .collect();
        (h.aggregation_temporality, points)
    }

    fn report_with_drops() -> AgentReport {
        AgentReport {
            counts: crate::counts::AgentCounts {
                dropped_updates: 2,
                ..Default::default()
            },
            ..AgentReport::default()
        }
    }

    const DELTA: i32 = AggregationTemporality::Delta as i32;
    const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;

    fn p(tag: &str, start_ms: u64, time_ms: u64, value: f64) -> SumPoint {
        (tag.to_owned(), start_ms, time_ms, value)
    }

    #[test]
    fn cumulative_sends_every_series_of_the_live_view_from_its_start_at_the_build_time() {
        let m = metrics_with(Temporality::Cumulative, &report_with_drops());
        // Every series of the state, not only the window's; each from its own start.
        assert_eq!(
            sum_of(&m, "jobs"),
            Some((
                CUMULATIVE,
                true,
                vec![p("a", 500, 3000, 13.0), p("b", 1000, 3000, 4.0)]
            ))
        );
        assert_eq!(
            sum_of(&m, "gone"),
            Some((CUMULATIVE, true, vec![p("", 500, 3000, 1.0)]))
        );
        // Non-monotonic counters are non-monotonic cumulative sums (an UpDownCounter's shape).
        assert_eq!(
            sum_of(&m, "depth"),
            Some((CUMULATIVE, false, vec![p("", 500, 3000, -1.0)]))
        );
        assert_eq!(
            sum_of(&m, "refund"),
            Some((CUMULATIVE, false, vec![p("", 1000, 3000, -5.0)]))
        );
        assert_eq!(
            histogram_of(&m, "latency"),
            (CUMULATIVE, vec![(500, 3000, 6)])
        );
        // The agent's own counts: the window's count as a gauge, which cumulative receivers keep.
        let agent = m
            .iter()
            .find(|m| m.name == "appsignal.agent.dropped_updates")
            .unwrap();
        let Some(metric::Data::Gauge(g)) = &agent.data else {
            panic!("a gauge: {agent:?}")
        };
        assert_eq!(
            g.data_points[0].value,
            Some(number_data_point::Value::AsDouble(2.0))
        );
        assert_eq!(g.data_points[0].time_unix_nano, 2_000_000_000);
        // Gauges stay the window's.
        let cpu = m
            .iter()
            .find(|m| m.name == "system.cpu.utilization")
            .unwrap();
        assert!(matches!(cpu.data, Some(metric::Data::Gauge(_))));
    }

    #[test]
    fn lowmemory_sends_monotonic_counters_and_distributions_as_deltas_and_the_others_cumulative() {
        let m = metrics_with(Temporality::LowMemory, &report_with_drops());
        assert_eq!(
            sum_of(&m, "jobs"),
            Some((
                DELTA,
                true,
                vec![p("a", 1000, 2000, 3.0), p("b", 1000, 2000, 4.0)]
            ))
        );
        assert_eq!(sum_of(&m, "gone"), None, "a delta has only the window's");
        assert_eq!(
            sum_of(&m, "depth"),
            Some((CUMULATIVE, false, vec![p("", 500, 3000, -1.0)]))
        );
        assert_eq!(
            sum_of(&m, "refund"),
            Some((CUMULATIVE, false, vec![p("", 1000, 3000, -5.0)]))
        );
        assert_eq!(histogram_of(&m, "latency"), (DELTA, vec![(1000, 2000, 5)]));
        assert_eq!(
            sum_of(&m, "appsignal.agent.dropped_updates"),
            Some((DELTA, true, vec![p("", 1000, 2000, 2.0)]))
        );
    }

    #[test]
    fn delta_sends_the_window_and_marks_non_monotonic_counters() {
        let m = metrics_with(Temporality::Delta, &report_with_drops());
        assert_eq!(
            sum_of(&m, "jobs"),
            Some((
                DELTA,
                true,
                vec![p("a", 1000, 2000, 3.0), p("b", 1000, 2000, 4.0)]
            ))
        );
        assert_eq!(sum_of(&m, "gone"), None);
        // Known as non-monotonic to the state, or by a negative amount in this window.
        assert_eq!(
            sum_of(&m, "depth"),
            Some((DELTA, false, vec![p("", 1000, 2000, 1.0)]))
        );
        assert_eq!(
            sum_of(&m, "refund"),
            Some((DELTA, false, vec![p("", 1000, 2000, -5.0)]))
        );
        assert_eq!(histogram_of(&m, "latency"), (DELTA, vec![(1000, 2000, 5)]));
        assert_eq!(
            sum_of(&m, "appsignal.agent.dropped_updates"),
            Some((DELTA, true, vec![p("", 1000, 2000, 2.0)]))
        );
        // Without a view (a window without counters need not read one), the window decides alone.
        let r = requests(&window(), "e", &AgentReport::default(), &LiveView::DELTA);
        let m = &r.metrics.unwrap().resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(sum_of(m, "jobs").map(|s| (s.0, s.1)), Some((DELTA, true)));
    }
}
