//! OTLP spans (`POST /v1/traces`) turned into samples of the shape the agent builds for its own
//! root spans (`"kind": "span"`, docs/apm.md "Sample JSON"), so that they go out through the
//! Push API and OTLP exporters like every other sample. Pure: no I/O, no clock.
//!
//! Per request, spans are grouped by trace id. A span whose parent is not in the request (or that
//! has none) is the root of a sample; its descendants become the sample's events, nested as
//! received (siblings ordered by start time). Namespace: attribute `appsignal.namespace`, else
//! `web` for a SERVER span and `background` otherwise; action: `appsignal.action_name`, else the
//! span's name. An `exception` event, or status ERROR, is the root's error (a child's goes into
//! its event's `error` attribute). `appsignal.tag.*` attributes and the resource's `service.name`
//! become the sample's tags; other attributes stay attributes (SQL in `db.query.text` or
//! `db.statement` is sanitised; a child's becomes its event's body). The leader configuration's
//! ignore rules apply.
//!
//! Bounds (everything in a request is untrusted): at most [`MAX_SPANS_PER_REQUEST`] spans; at
//! most [`MAX_EVENTS`] events per sample (more are counted in `dropped_events`); nesting deeper
//! than [`MAX_DEPTH`] is flattened into the span at that depth; attribute values are cut at
//! [`MAX_BODY`] bytes, names and keys at [`MAX_TEXT`], maps and arrays at [`MAX_KEYS`] items and
//! [`MAX_VALUE_DEPTH`] levels; a span's attributes at [`MAX_KEYS`]. Spans without a valid trace
//! or span id, with a span id seen before in their trace, or whose parents form a cycle are
//! rejected and counted; nothing recurses deeper than [`MAX_DEPTH`].

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};

use crate::apm::transaction::{BODY_FORMAT_SQL, MAX_EVENTS};
use crate::apm::{bounded_insert, filter, sql, ApmConfig, MAX_BODY, MAX_KEYS, MAX_TEXT};
use crate::data::Data;
use crate::sample::{
    cut_tag_values, event_group, ns_to_ms, Sample, SampleError, SampleEvent, SampleKind,
};

/// Spans read from one request; the others are rejected.
pub const MAX_SPANS_PER_REQUEST: usize = 10_000;
/// Levels of events below a sample's root; the descendants of a span at this depth become its
/// direct children. Keeps the sample's JSON well within serde_json's nesting limit (128).
pub const MAX_DEPTH: usize = 32;
/// Levels of arrays and maps kept in an attribute value; deeper values are left out.
pub const MAX_VALUE_DEPTH: usize = 3;

/// Attribute naming a root's namespace.
pub const NAMESPACE_ATTRIBUTE: &str = "appsignal.namespace";
/// Attribute naming a root's action.
pub const ACTION_ATTRIBUTE: &str = "appsignal.action_name";
/// Prefix of attributes that become the sample's tags.
pub const TAG_PREFIX: &str = "appsignal.tag.";
/// Attributes holding a query (current and older semantic conventions): sanitised.
const SQL_ATTRIBUTES: [&str; 2] = ["db.query.text", "db.statement"];

/// What one request gave.
#[derive(Debug, Default)]
pub struct Mapped {
    /// Each sample and the number of spans in it.
    pub samples: Vec<(Sample, u64)>,
    /// Spans rejected for what they are (ids, cycles, limits).
    pub rejected: u64,
    /// Why the first rejected span was rejected.
    pub reason: Option<String>,
    /// Spans of samples left out by the configuration's ignore rules (accepted, not reported).
    pub ignored: u64,
}

impl Mapped {
    fn reject(&mut self, n: u64, why: impl FnOnce() -> String) {
        self.rejected = self.rejected.saturating_add(n);
        if n > 0 && self.reason.is_none() {
            self.reason = Some(why());
        }
    }
}

/// One span read from the request, with its ids checked.
struct Received {
    span: Span,
    trace_id: [u8; 16],
    span_id: u64,
    parent: Option<u64>,
    /// Index into the request's services (the resource's `service.name`).
    service: usize,
}

/// The samples of one request (see the module documentation).
pub fn samples(request: ExportTraceServiceRequest, config: &ApmConfig) -> Mapped {
    let mut mapped = Mapped::default();
    let mut services: Vec<Option<String>> = Vec::new();
    let mut spans: Vec<Received> = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans.resource.as_ref().and_then(|r| {
            r.attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) if !s.is_empty() => Some(cut(s, MAX_TEXT)),
                    _ => None,
                })
        });
        let service_index = services.len();
        services.push(service);
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                if spans.len() >= MAX_SPANS_PER_REQUEST {
                    mapped.reject(1, || {
                        format!("more than {MAX_SPANS_PER_REQUEST} spans in one request")
                    });
                    continue;
                }
                match read_ids(&span) {
                    Some((trace_id, span_id, parent)) => spans.push(Received {
                        span,
                        trace_id,
                        span_id,
                        parent,
                        service: service_index,
                    }),
                    None => mapped.reject(1, || {
                        "a span without a valid trace id (16 bytes, not all zero), span id (8 bytes, not all zero) or parent span id (empty or 8 bytes)".to_owned()
                    }),
                }
            }
        }
    }
    // Traces in the order they first appear.
    let mut traces: Vec<Vec<usize>> = Vec::new();
    let mut trace_index: HashMap<[u8; 16], usize> = HashMap::new();
    for (i, received) in spans.iter().enumerate() {
        let t = *trace_index.entry(received.trace_id).or_insert_with(|| {
            traces.push(Vec::new());
            traces.len() - 1
        });
        traces[t].push(i);
    }
    for trace in traces {
        map_trace(&spans, &trace, &services, config, &mut mapped);
    }
    mapped
}

/// Trace id, span id and parent (`None`: none, or all zero) of a span with valid ids.
fn read_ids(span: &Span) -> Option<([u8; 16], u64, Option<u64>)> {
    let trace_id: [u8; 16] = span.trace_id.as_slice().try_into().ok()?;
    let span_id = u64::from_be_bytes(span.span_id.as_slice().try_into().ok()?);
    if trace_id == [0; 16] || span_id == 0 {
        return None;
    }
    let parent = match span.parent_span_id.len() {
        0 => None,
        8 => Some(u64::from_be_bytes(
            span.parent_span_id.as_slice().try_into().ok()?,
        ))
        .filter(|p| *p != 0),
        _ => return None,
    };
    Some((trace_id, span_id, parent))
}

fn map_trace(
    spans: &[Received],
    trace: &[usize],
    services: &[Option<String>],
    config: &ApmConfig,
    mapped: &mut Mapped,
) {
    let mut by_id: HashMap<u64, usize> = HashMap::with_capacity(trace.len());
    let mut kept = Vec::with_capacity(trace.len());
    for &i in trace {
        match by_id.entry(spans[i].span_id) {
            // The first span of an id is kept.
            Entry::Occupied(_) => {
                mapped.reject(1, || "a span id seen twice in one trace".to_owned())
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
                kept.push(i);
            }
        }
    }
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for &i in &kept {
        match spans[i].parent.and_then(|p| by_id.get(&p)) {
            Some(&parent) => children.entry(parent).or_default().push(i),
            None => roots.push(i),
        }
    }
    for list in children.values_mut() {
        // Stable: spans that start together stay in the order received.
        crate::sort::sort_by_key(list, |&c| spans[c].span.start_time_unix_nano);
    }
    let mut reached = 0u64;
    for root in roots {
        let mut builder = Builder {
            spans,
            children: &children,
            root_start_ns: nanos(spans[root].span.start_time_unix_nano),
            events: 0,
            dropped: 0,
            reached: 1,
        };
        let events = builder.children_of(root, 0);
        reached += builder.reached;
        let span_count = builder.reached;
        let dropped = builder.dropped;
        mapped.reject(dropped, || {
            format!("more than {MAX_EVENTS} spans under one root (counted in the sample's dropped_events)")
        });
        let received = &spans[root];
        let service = services.get(received.service).and_then(Option::as_deref);
        match root_sample(received, service, events, dropped, config) {
            Some(sample) => mapped.samples.push((sample, span_count - dropped)),
            None => mapped.ignored = mapped.ignored.saturating_add(span_count - dropped),
        }
    }
    // A span reached from no root has an ancestor that is its own ancestor.
    let unreached = kept.len() as u64 - reached;
    mapped.reject(unreached, || "spans whose parents form a cycle".to_owned());
}

struct Builder<'a> {
    spans: &'a [Received],
    children: &'a HashMap<usize, Vec<usize>>,
    root_start_ns: i64,
    /// Events rendered so far in this sample.
    events: usize,
    /// Spans left out (over MAX_EVENTS).
    dropped: u64,
    /// Spans of this sample seen (the root, rendered and dropped ones).
    reached: u64,
}

impl<'a> Builder<'a> {
    fn kids(&self, i: usize) -> &'a [usize] {
        let children: &'a HashMap<usize, Vec<usize>> = self.children;
        children.get(&i).map_or(&[], Vec::as_slice)
    }

    /// The events of `i`'s children; `depth` is `i`'s depth below the root (0 for the root).
    fn children_of(&mut self, i: usize, depth: usize) -> Vec<SampleEvent> {
        if depth + 1 < MAX_DEPTH {
            let kids = self.kids(i);
            kids.iter()
                .filter_map(|&c| self.event(c, depth + 1))
                .collect()
        } else {
            // Flattened: every descendant as a direct child, in depth-first order.
            let mut out = Vec::new();
            let mut stack: Vec<usize> = self.kids(i).iter().rev().copied().collect();
            while let Some(c) = stack.pop() {
                self.reached += 1;
                if self.events >= MAX_EVENTS {
                    self.dropped += 1;
                } else {
                    self.events += 1;
                    out.push(self.event_json(c));
                }
                stack.extend(self.kids(c).iter().rev().copied());
            }
            out
        }
    }

    /// The event of span `i` with its children, or `None` when the sample is full (then `i` and
    /// its descendants are counted as dropped).
    fn event(&mut self, i: usize, depth: usize) -> Option<SampleEvent> {
        if self.events >= MAX_EVENTS {
            let mut stack = vec![i];
            while let Some(c) = stack.pop() {
                self.reached += 1;
                self.dropped += 1;
                stack.extend_from_slice(self.kids(c));
            }
            return None;
        }
        self.reached += 1;
        self.events += 1;
        let mut event = self.event_json(i);
        event.children = self.children_of(i, depth);
        Some(event)
    }

    /// The event of span `i` without its children.
    fn event_json(&self, i: usize) -> SampleEvent {
        let received = &self.spans[i];
        let span = &received.span;
        let mut attributes = attributes(&span.attributes);
        let mut body = None;
        for key in SQL_ATTRIBUTES {
            if let Some(Data::String(query)) = attributes.remove(key) {
                body.get_or_insert(query);
            }
        }
        if let Some(error) = error(span, &attributes) {
            let mut e = Data::new_map();
            e.map_set("class".into(), Data::String(error.class));
            e.map_set("message".into(), Data::String(error.message));
            e.map_set("backtrace".into(), error.backtrace);
            attributes.insert("error".into(), e);
        }
        let start_ns = nanos(span.start_time_unix_nano);
        let name = name(span);
        SampleEvent {
            attributes,
            // Sanitised already (see `attributes`).
            body_format: if body.is_some() { BODY_FORMAT_SQL } else { 0 },
            body: body.unwrap_or_default(),
            children: Vec::new(),
            duration: ns_to_ms(
                nanos(span.end_time_unix_nano)
                    .saturating_sub(start_ns)
                    .max(0),
            ),
            gc_duration: 0,
            group: event_group(&name).to_owned(),
            span_id: Some(hex(&received.span_id.to_be_bytes())),
            span_kind: Some(kind_name(span.kind).to_owned()),
            start: ns_to_ms(start_ns.saturating_sub(self.root_start_ns).max(0)),
            title: String::new(),
            name,
        }
    }
}

/// The sample of a root span and its events; `None` when the ignore rules leave it out.
fn root_sample(
    received: &Received,
    service: Option<&str>,
    events: Vec<SampleEvent>,
    dropped: u64,
    config: &ApmConfig,
) -> Option<Sample> {
    let span = &received.span;
    let mut attributes = attributes(&span.attributes);
    let text_attribute =
        |attributes: &mut BTreeMap<String, Data>, key: &str| match attributes.remove(key) {
            Some(Data::String(s)) if !s.is_empty() => Some(cut(&s, MAX_TEXT)),
            _ => None,
        };
    let namespace = text_attribute(&mut attributes, NAMESPACE_ATTRIBUTE).unwrap_or_else(|| {
        if span.kind == SpanKind::Server as i32 {
            "web".to_owned()
        } else {
            "background".to_owned()
        }
    });
    let action = text_attribute(&mut attributes, ACTION_ATTRIBUTE).unwrap_or_else(|| name(span));
    if filter::is_ignored(&namespace, Some(&action), config) {
        return None;
    }
    let error = error(span, &attributes).filter(|e| !filter::is_error_ignored(&e.class, config));
    let mut tags: BTreeMap<String, Data> = BTreeMap::new();
    let tag_keys: Vec<String> = attributes
        .keys()
        .filter(|k| k.starts_with(TAG_PREFIX))
        .cloned()
        .collect();
    for key in tag_keys {
        if let Some(value) = attributes.remove(&key) {
            tags.insert(key[TAG_PREFIX.len()..].to_owned(), value);
        }
    }
    if let Some(service) = service {
        bounded_insert(
            &mut tags,
            "service.name".to_owned(),
            Data::String(service.to_owned()),
        );
    }
    let mut sample_data = BTreeMap::new();
    if !tags.is_empty() {
        let mut tags = Data::Map(tags);
        cut_tag_values(&mut tags);
        sample_data.insert(
            "tags".to_owned(),
            filter::filter_sample_data("tags", &tags, config),
        );
    }
    let start_ns = nanos(span.start_time_unix_nano);
    let end_ns = nanos(span.end_time_unix_nano).max(start_ns);
    Some(Sample {
        action: Some(action),
        allocation_count: None,
        attributes: Some(attributes),
        dropped_events: dropped,
        duration: Some(ns_to_ms(end_ns.saturating_sub(start_ns).max(0))),
        end: Some(end_ns / 1_000_000),
        // The leader's own process metadata says nothing about the process that sent the trace.
        environment_metadata: BTreeMap::new(),
        error,
        events,
        gc_duration: None,
        hostname: config.hostname.clone(),
        id: hex(&received.span_id.to_be_bytes()),
        kind: SampleKind::Span,
        metadata: BTreeMap::new(),
        name: Some(Some(name(span))),
        namespace,
        parent_span_id: Some(received.parent.map(|p| hex(&p.to_be_bytes()))),
        queue_start: None,
        queue_time: None,
        revision: config.revision.clone(),
        sample_data,
        span_kind: Some(kind_name(span.kind).to_owned()),
        start: start_ns / 1_000_000,
        trace_id: Some(hex(&received.trace_id)),
    })
}

/// The span's error: its first `exception` event (`exception.type`, `exception.message`,
/// `exception.stacktrace` as backtrace lines), else status ERROR (the status message). The class
/// falls back to the span's `error.type` attribute, then `Error`.
fn error(span: &Span, attributes: &BTreeMap<String, Data>) -> Option<SampleError> {
    let fallback_class = || match attributes.get("error.type") {
        Some(Data::String(s)) if !s.is_empty() => s.clone(),
        _ => "Error".to_owned(),
    };
    if let Some(event) = span.events.iter().find(|e| e.name == "exception") {
        let text = |key: &str, max: usize| {
            event
                .attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(cut(s, max)),
                    _ => None,
                })
                .unwrap_or_default()
        };
        let class = match text("exception.type", MAX_TEXT) {
            c if c.is_empty() => fallback_class(),
            c => c,
        };
        let backtrace = text("exception.stacktrace", MAX_BODY)
            .lines()
            .map(|l| Data::String(l.to_owned()))
            .collect();
        return Some(SampleError {
            class,
            message: text("exception.message", MAX_BODY),
            backtrace: Data::Array(backtrace),
        });
    }
    let status = span.status.as_ref()?;
    (status.code == StatusCode::Error as i32).then(|| SampleError {
        class: fallback_class(),
        message: cut(&status.message, MAX_BODY),
        backtrace: Data::Array(Vec::new()),
    })
}

/// A span's attributes (at most [`MAX_KEYS`]; a repeated key keeps its last value). Query
/// attributes are sanitised here, before anything else sees them.
fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, Data> {
    let mut out = BTreeMap::new();
    for kv in kvs {
        let key = cut(&kv.key, MAX_TEXT);
        if out.len() >= MAX_KEYS && !out.contains_key(&key) {
            // Full: a new key would not be kept, so its value is not converted either.
            continue;
        }
        let Some(mut value) = kv.value.as_ref().and_then(|v| value(v, 0)) else {
            continue;
        };
        if SQL_ATTRIBUTES.contains(&kv.key.as_str()) {
            if let Data::String(query) = &value {
                value = Data::String(sql::sanitize(query));
            }
        }
        bounded_insert(&mut out, key, value);
    }
    out
}

/// An attribute value as data, within the bounds of the module documentation.
fn value(v: &AnyValue, depth: usize) -> Option<Data> {
    Some(match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Data::String(cut(s, MAX_BODY)),
        any_value::Value::BoolValue(b) => Data::Bool(*b),
        any_value::Value::IntValue(i) => Data::Integer(*i),
        any_value::Value::DoubleValue(d) if d.is_finite() => Data::Float(*d),
        any_value::Value::DoubleValue(d) => Data::String(d.to_string()),
        any_value::Value::BytesValue(b) => Data::String(hex(&b[..b.len().min(MAX_BODY / 2)])),
        any_value::Value::ArrayValue(a) if depth < MAX_VALUE_DEPTH => Data::Array(
            a.values
                .iter()
                .take(MAX_KEYS)
                .filter_map(|v| value(v, depth + 1))
                .collect(),
        ),
        any_value::Value::KvlistValue(l) if depth < MAX_VALUE_DEPTH => {
            let mut map = BTreeMap::new();
            for kv in l.values.iter().take(MAX_KEYS) {
                if let Some(v) = kv.value.as_ref().and_then(|v| value(v, depth + 1)) {
                    map.insert(cut(&kv.key, MAX_TEXT), v);
                }
            }
            Data::Map(map)
        }
        _ => return None,
    })
}

fn name(span: &Span) -> String {
    if span.name.is_empty() {
        "unknown".to_owned()
    } else {
        cut(&span.name, MAX_TEXT)
    }
}

/// The span kind in lower case (`server`, `client`, …), as the sample's `span_kind`.
pub fn kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        _ => "internal",
    }
}

/// Epoch nanoseconds as the sample's `i64` (saturating).
fn nanos(ns: u64) -> i64 {
    i64::try_from(ns).unwrap_or(i64::MAX)
}

/// At most `max` bytes of `s`, cut at a character boundary, without copying the rest.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Status};
    use serde_json::json;
    use serde_json::Value;

    const T0: u64 = 1_767_225_600_000_000_000;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    fn trace_id(n: u8) -> Vec<u8> {
        let mut id = vec![0xab; 16];
        id[15] = n;
        id
    }

    /// A span of trace `trace`, started and ended `start_ms`/`end_ms` after T0.
    fn span(
        trace: u8,
        id: u64,
        parent: u64,
        name: &str,
        kind: SpanKind,
        (start_ms, end_ms): (u64, u64),
        attributes: Vec<KeyValue>,
    ) -> Span {
        Span {
            trace_id: trace_id(trace),
            span_id: id.to_be_bytes().to_vec(),
            parent_span_id: if parent == 0 {
                Vec::new()
            } else {
                parent.to_be_bytes().to_vec()
            },
            name: name.into(),
            kind: kind as i32,
            start_time_unix_nano: T0 + start_ms * 1_000_000,
            end_time_unix_nano: T0 + end_ms * 1_000_000,
            attributes,
            ..Default::default()
        }
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", s("shop-py"))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn map(spans: Vec<Span>) -> (Mapped, Vec<Value>) {
        map_with(spans, &ApmConfig::default())
    }

    fn map_with(spans: Vec<Span>, config: &ApmConfig) -> (Mapped, Vec<Value>) {
        let mapped = samples(request(spans), config);
        let parsed = mapped
            .samples
            .iter()
            .map(|(sample, _)| serde_json::to_value(sample).unwrap())
            .collect();
        (mapped, parsed)
    }

    fn exception(class: &str, message: &str, stack: &str) -> span::Event {
        span::Event {
            name: "exception".into(),
            time_unix_nano: T0,
            attributes: vec![
                kv("exception.type", s(class)),
                kv("exception.message", s(message)),
                kv("exception.stacktrace", s(stack)),
            ],
            ..Default::default()
        }
    }

    /// Root SERVER span, a SQL child, a child with an exception and its own child; in the order an
    /// SDK exports them (as they end).
    fn checkout() -> Vec<Span> {
        let mut charge = span(
            1,
            3,
            1,
            "charge card",
            SpanKind::Internal,
            (40, 200),
            vec![],
        );
        charge.events = vec![exception(
            "PaymentDeclined",
            "card declined",
            "Traceback\n  pay.py:3\nPaymentDeclined",
        )];
        charge.status = Some(Status {
            code: StatusCode::Error as i32,
            ..Default::default()
        });
        vec![
            span(
                1,
                4,
                3,
                "POST api.payments",
                SpanKind::Client,
                (50, 190),
                vec![kv("http.request.method", s("POST"))],
            ),
            span(
                1,
                2,
                1,
                "SELECT users",
                SpanKind::Client,
                (10, 30),
                vec![
                    kv(
                        "db.query.text",
                        s("SELECT * FROM users WHERE email = 'a@b.c'"),
                    ),
                    kv("db.system.name", s("postgresql")),
                ],
            ),
            charge,
            span(
                1,
                1,
                0,
                "GET /checkout",
                SpanKind::Server,
                (0, 250),
                vec![
                    kv("http.route", s("/checkout")),
                    kv("http.response.status_code", any_value::Value::IntValue(200)),
                    kv("appsignal.tag.user", s("u-17")),
                ],
            ),
        ]
    }

    #[test]
    fn a_trace_becomes_one_sample_with_its_spans_nested_as_events() {
        let (mapped, samples) = map(checkout());
        assert_eq!((mapped.rejected, mapped.ignored), (0, 0));
        assert_eq!(mapped.samples.len(), 1);
        assert_eq!(mapped.samples[0].1, 4, "spans in the sample");
        let sample = &samples[0];
        assert_eq!(sample["kind"], "span");
        assert_eq!(sample["id"], "0000000000000001");
        assert_eq!(sample["trace_id"], hex(&trace_id(1)));
        assert!(sample["parent_span_id"].is_null());
        assert_eq!(sample["namespace"], "web");
        assert_eq!(sample["action"], "GET /checkout");
        assert_eq!(sample["name"], "GET /checkout");
        assert_eq!(sample["span_kind"], "server");
        assert_eq!(sample["start"], (T0 / 1_000_000) as i64);
        assert_eq!(sample["duration"], 250.0);
        assert!(sample["error"].is_null());
        assert_eq!(
            sample["sample_data"]["tags"],
            json!({"user": "u-17", "service.name": "shop-py"})
        );
        assert_eq!(
            sample["attributes"],
            json!({"http.route": "/checkout", "http.response.status_code": 200})
        );
        assert_eq!(sample["environment_metadata"], json!({}));
        let events = sample["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        // Siblings by start time; the SQL moved to the body, sanitised.
        let sql = &events[0];
        assert_eq!(sql["name"], "SELECT users");
        assert_eq!(sql["span_id"], "0000000000000002");
        assert_eq!(sql["span_kind"], "client");
        assert_eq!(sql["body"], "SELECT * FROM users WHERE email = ?");
        assert_eq!(sql["body_format"], 1);
        assert_eq!(sql["attributes"], json!({"db.system.name": "postgresql"}));
        assert_eq!(
            (sql["start"].as_f64(), sql["duration"].as_f64()),
            (Some(10.0), Some(20.0))
        );
        let charge = &events[1];
        assert_eq!(charge["name"], "charge card");
        assert_eq!(charge["attributes"]["error"]["class"], "PaymentDeclined");
        assert_eq!(charge["attributes"]["error"]["message"], "card declined");
        assert_eq!(
            charge["attributes"]["error"]["backtrace"],
            json!(["Traceback", "  pay.py:3", "PaymentDeclined"])
        );
        let post = &charge["children"][0];
        assert_eq!(post["name"], "POST api.payments");
        assert_eq!(post["span_id"], "0000000000000004");
        assert_eq!(post["start"], 50.0);
        assert_eq!(post["children"], json!([]));
    }

    #[test]
    fn namespace_action_and_a_status_error_come_from_the_root() {
        let mut root = span(
            2,
            9,
            0,
            "nightly report",
            SpanKind::Internal,
            (0, 5),
            vec![
                kv(NAMESPACE_ATTRIBUTE, s("cron")),
                kv(ACTION_ATTRIBUTE, s("Reports#nightly")),
                kv("error.type", s("IOError")),
            ],
        );
        root.status = Some(Status {
            code: StatusCode::Error as i32,
            message: "disk full".into(),
        });
        let (_, samples) = map(vec![root.clone()]);
        let sample = &samples[0];
        assert_eq!(sample["namespace"], "cron");
        assert_eq!(sample["action"], "Reports#nightly");
        assert_eq!(sample["name"], "nightly report");
        assert_eq!(
            sample["error"],
            json!({"class": "IOError", "message": "disk full", "backtrace": []})
        );
        assert_eq!(sample["attributes"], json!({"error.type": "IOError"}));
        // Without the attributes: background, the name as action; the exception event wins.
        root.attributes.clear();
        root.events = vec![exception("", "boom", "")];
        let (_, samples) = map(vec![root]);
        assert_eq!(samples[0]["namespace"], "background");
        assert_eq!(samples[0]["action"], "nightly report");
        assert_eq!(samples[0]["error"]["class"], "Error");
        assert_eq!(samples[0]["error"]["message"], "boom");
    }

    #[test]
    fn a_span_whose_parent_is_not_in_the_request_is_a_root_of_its_own() {
        let orphan = span(3, 7, 0x77, "late child", SpanKind::Internal, (0, 1), vec![]);
        let mut spans = checkout();
        spans.insert(1, orphan);
        let (mapped, samples) = map(spans);
        assert_eq!(mapped.samples.len(), 2);
        let late = samples.iter().find(|s| s["name"] == "late child").unwrap();
        assert_eq!(late["parent_span_id"], "0000000000000077");
        assert_eq!(late["trace_id"], hex(&trace_id(3)));
        assert_eq!(late["namespace"], "background");
    }

    #[test]
    fn bad_ids_duplicates_and_cycles_are_rejected_and_the_rest_kept() {
        let mut bad_trace = span(
            4,
            1,
            0,
            "short trace id",
            SpanKind::Internal,
            (0, 1),
            vec![],
        );
        bad_trace.trace_id.truncate(8);
        let mut zero_span = span(4, 1, 0, "zero span id", SpanKind::Internal, (0, 1), vec![]);
        zero_span.span_id = vec![0; 8];
        let mut bad_parent = span(4, 2, 0, "odd parent", SpanKind::Internal, (0, 1), vec![]);
        bad_parent.parent_span_id = vec![1, 2, 3];
        let spans = vec![
            bad_trace,
            zero_span,
            bad_parent,
            span(5, 1, 0, "root", SpanKind::Internal, (0, 9), vec![]),
            span(5, 1, 0, "same id", SpanKind::Internal, (0, 9), vec![]),
            // 2 -> 3 -> 2 and 4 -> 4: no way to a root.
            span(5, 2, 3, "cycle a", SpanKind::Internal, (1, 2), vec![]),
            span(5, 3, 2, "cycle b", SpanKind::Internal, (1, 2), vec![]),
            span(5, 4, 4, "own parent", SpanKind::Internal, (1, 2), vec![]),
            span(5, 5, 1, "child", SpanKind::Internal, (1, 2), vec![]),
        ];
        let (mapped, samples) = map(spans);
        assert_eq!(mapped.rejected, 7);
        assert!(mapped.reason.unwrap().contains("valid trace id"));
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0]["name"], "root");
        assert_eq!(samples[0]["events"][0]["name"], "child");
        assert_eq!(mapped.samples[0].1, 2);
    }

    #[test]
    fn limits_hold_for_spans_depth_events_and_values() {
        // More spans than a request may hold: the rest are rejected.
        let many: Vec<Span> = (1..=MAX_SPANS_PER_REQUEST as u64 + 3)
            .map(|i| span(6, i, 0, "r", SpanKind::Internal, (0, 1), vec![]))
            .collect();
        let (mapped, _) = map(many);
        assert_eq!(mapped.rejected, 3);
        assert_eq!(mapped.samples.len(), MAX_SPANS_PER_REQUEST);

        // A chain deeper than MAX_DEPTH: flattened below it; the JSON parses (serde_json's
        // nesting limit) and maps to OTLP spans with every id.
        let chain: Vec<Span> = (1..=200u64)
            .map(|i| {
                span(
                    7,
                    i,
                    i - 1,
                    &format!("s{i}"),
                    SpanKind::Internal,
                    (i, 300),
                    vec![],
                )
            })
            .collect();
        let (mapped, samples) = map(chain);
        assert_eq!((mapped.rejected, mapped.samples[0].1), (0, 200));
        let mut node = &samples[0]["events"][0];
        for _ in 1..MAX_DEPTH - 1 {
            node = &node["children"][0];
        }
        assert_eq!(node["children"].as_array().unwrap().len(), 200 - MAX_DEPTH);
        assert_eq!(
            crate::otlp::mapping::sample_spans(&mapped.samples[0].0).len(),
            200
        );

        // More events than a sample holds.
        let mut wide: Vec<Span> = (2..=MAX_EVENTS as u64 + 11)
            .map(|i| span(8, i, 1, "e", SpanKind::Internal, (1, 2), vec![]))
            .collect();
        wide.push(span(8, 1, 0, "root", SpanKind::Internal, (0, 3), vec![]));
        let (mapped, samples) = map(wide);
        assert_eq!(mapped.rejected, 10);
        assert_eq!(samples[0]["dropped_events"], 10);
        assert_eq!(samples[0]["events"].as_array().unwrap().len(), MAX_EVENTS);

        // Values: long text cut, deep values left out, at most MAX_KEYS attributes.
        let mut deep = AnyValue {
            value: Some(s("leaf")),
        };
        for _ in 0..10 {
            deep = AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue {
                    values: vec![deep],
                })),
            };
        }
        let mut attributes = vec![
            kv("long", s(&"é".repeat(MAX_BODY))),
            kv("deep", deep.value.unwrap()),
            kv(
                "map",
                any_value::Value::KvlistValue(KeyValueList {
                    values: vec![kv("k", any_value::Value::DoubleValue(f64::NAN))],
                }),
            ),
            kv("bytes", any_value::Value::BytesValue(vec![0xde, 0xad])),
        ];
        attributes
            .extend((0..300).map(|i| kv(&format!("a{i:03}"), any_value::Value::BoolValue(true))));
        let (_, samples) = map(vec![span(
            9,
            1,
            0,
            "r",
            SpanKind::Internal,
            (0, 1),
            attributes,
        )]);
        let attrs = samples[0]["attributes"].as_object().unwrap();
        assert_eq!(attrs.len(), MAX_KEYS);
        assert_eq!(attrs["long"].as_str().unwrap().len(), MAX_BODY);
        assert_eq!(attrs["deep"], json!([[[]]]));
        assert_eq!(attrs["map"], json!({"k": "NaN"}));
        assert_eq!(attrs["bytes"], "dead");
    }

    #[test]
    fn ignore_rules_of_the_leaders_configuration_apply() {
        let config = ApmConfig {
            ignore_namespaces: vec!["web".into()],
            ignore_errors: vec!["PaymentDeclined".into()],
            ..ApmConfig::default()
        };
        let (mapped, samples) = map_with(checkout(), &config);
        assert_eq!((mapped.ignored, mapped.rejected, samples.len()), (4, 0, 0));
        let mut root = span(1, 1, 0, "job", SpanKind::Consumer, (0, 1), vec![]);
        root.events = vec![exception("PaymentDeclined", "no", "")];
        let (_, samples) = map_with(vec![root], &config);
        assert!(samples[0]["error"].is_null());
    }

    #[test]
    fn the_otlp_export_gives_back_the_ids_parents_kinds_and_error() {
        let (mapped, _) = map(checkout());
        let spans = crate::otlp::mapping::sample_spans(&mapped.samples[0].0);
        assert_eq!(spans.len(), 4);
        let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
        let root = by_name("GET /checkout");
        assert_eq!(root.kind, SpanKind::Server as i32);
        assert_eq!(root.span_id, 1u64.to_be_bytes());
        assert_eq!(root.trace_id, trace_id(1));
        assert!(root.parent_span_id.is_empty());
        assert_eq!(by_name("SELECT users").kind, SpanKind::Client as i32);
        let charge = by_name("charge card");
        assert_eq!(charge.parent_span_id, 1u64.to_be_bytes());
        assert_eq!(charge.events[0].name, "exception");
        assert_eq!(
            charge.status.as_ref().unwrap().code,
            StatusCode::Error as i32
        );
        assert_eq!(
            by_name("POST api.payments").parent_span_id,
            3u64.to_be_bytes()
        );
        assert!(spans.iter().all(|s| s.trace_id == trace_id(1)));
    }

    #[test]
    fn flipped_and_cut_bytes_of_a_request_never_panic_the_mapping() {
        use prost::Message;
        let valid = request(checkout()).encode_to_vec();
        for i in 0..valid.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bytes = valid.clone();
                bytes[i] ^= flip;
                for cut in [&bytes[..], &bytes[..i]] {
                    if let Ok(r) = ExportTraceServiceRequest::decode(cut) {
                        for (sample, _) in samples(r, &ApmConfig::default()).samples {
                            crate::otlp::mapping::sample_spans(&sample);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn json_bodies_decode_with_hex_ids() {
        let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "name": "GET /", "kind": 2, "startTimeUnixNano": "1767225600000000000",
            "endTimeUnixNano": "1767225600100000000", "status": {"code": 2, "message": "m"}
        }]}]}]});
        let request = crate::intake::otlp_json::trace_request(body.to_string().as_bytes()).unwrap();
        let (mapped, samples) = {
            let mapped = samples(request, &ApmConfig::default());
            let parsed: Vec<Value> = mapped
                .samples
                .iter()
                .map(|(sample, _)| serde_json::to_value(sample).unwrap())
                .collect();
            (mapped, parsed)
        };
        assert_eq!(mapped.rejected, 0);
        assert_eq!(samples[0]["id"], "eee19b7ec3c1b174");
        assert_eq!(samples[0]["namespace"], "web");
        assert_eq!(samples[0]["duration"], 100.0);
        assert_eq!(samples[0]["error"]["message"], "m");
    }
}
