//! Spans, as the Elixir package records them: root spans (one per request or job in this process)
//! and child spans, with attributes, sample data and an error.
//!
//! - A **root span** (`Span::root`, or `Span::from_traceparent` for a request that carries a W3C
//!   `traceparent`) is reported like a transaction when closed: the per-action metrics of
//!   [`crate::apm::transaction`] with the span's namespace and its name as the action
//!   (`"unknown"` when it has none), and a sample (`"kind": "span"`) when it has a (not ignored)
//!   error, is slow or is picked by the sampling rate. Ignore rules apply as for transactions.
//! - A **child span** becomes an event of its root's sample when it is closed before the root is.
//!   The events of a root are a flat list in close order (no nesting), at most
//!   [`crate::apm::transaction::MAX_EVENTS`]; a child closed after its root is not recorded. The
//!   event's name is the child's `appsignal:category` attribute if set, else its name; its body
//!   the `appsignal:body` attribute (format 1 when it was set as SQL); other attributes, and the
//!   child's error, go into the event's `attributes`. A child's error does not make the root an
//!   error.
//! - Every span holds an `Arc` of what its root shares (trace id, start time, collected events),
//!   so spans can be freed in any order. A span's state is behind a mutex: concurrent calls on
//!   one span (BEAM schedulers) are safe. After `close`, setters are ignored with a (rate-limited)
//!   log line; creating children still works and `to_json` is the empty string.
//! - Ids: the full W3C ids are kept (samples, `traceparent`, OTLP); the interface returns their
//!   short forms ([`short_id`]: the last 16 of the trace id's 32 hex digits, the last 8 of a span
//!   id's 16).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use crate::apm::sample::{self, ErrorInfo, Event, EventBody, SampleView, Shape};
use crate::apm::transaction::{report_action, BODY_FORMAT_SQL, MAX_EVENTS};
use crate::apm::{
    bounded_insert, config, filter, misc, now_ns, random_hex, sql, truncate, warn_limited,
    MAX_BODY, MAX_TEXT,
};
use crate::data::Data;
use crate::recorder;

/// Namespace of a span made from a `traceparent` until `set_namespace`: such spans come from
/// incoming HTTP requests.
pub const TRACEPARENT_NAMESPACE: &str = "web";
/// Attribute naming a child span's event (like a transaction event name, `query.ecto`).
pub const CATEGORY_ATTRIBUTE: &str = "appsignal:category";
/// Attribute holding a child span's event body.
pub const BODY_ATTRIBUTE: &str = "appsignal:body";

/// Hex digits of the trace id as the interface returns it to the packages (`span_to_json`).
pub const SHORT_TRACE_ID_LEN: usize = 16;
/// Hex digits of the span id as the interface returns it (`span_id`, `span_to_json`).
pub const SHORT_SPAN_ID_LEN: usize = 8;

/// The last `len` characters of a hex id: the form the interface returns. Internally, in
/// `traceparent`, in samples and in OTLP the full W3C ids (32 and 16 hex digits) are kept.
pub fn short_id(id: &str, len: usize) -> &str {
    id.get(id.len().saturating_sub(len)..).unwrap_or(id)
}

/// A parsed W3C `traceparent` header.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceParent {
    pub trace_id: String,
    pub parent_span_id: String,
    pub flags: u8,
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` (lowercase hex, surrounding
/// whitespace allowed). Version `ff`, all-zero ids and malformed parts are invalid. A future
/// version (not `00`) may append `-…` fields, which are ignored.
pub fn parse_traceparent(header: &str) -> Option<TraceParent> {
    let mut parts = header.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if !is_lower_hex(version, 2) || version == "ff" {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if !is_lower_hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
        return None;
    }
    if !is_lower_hex(parent, 16) || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    if !is_lower_hex(flags, 2) {
        return None;
    }
    Some(TraceParent {
        trace_id: trace_id.to_string(),
        parent_span_id: parent.to_string(),
        flags: u8::from_str_radix(flags, 16).ok()?,
    })
}

/// What a root span shares with its children.
struct RootShared {
    trace_id: String,
    start_ns: i64,
    closed: AtomicBool,
    events: Mutex<ChildEvents>,
}

#[derive(Default)]
struct ChildEvents {
    events: Vec<Event>,
    dropped: u64,
}

struct State {
    span_id: String,
    parent_span_id: Option<String>,
    is_root: bool,
    name: Option<String>,
    namespace: String,
    start_ns: i64,
    end_ns: Option<i64>,
    attributes: BTreeMap<String, Data>,
    /// Attribute keys whose values were set as SQL (already sanitised).
    sql_attributes: Vec<String>,
    sample_data: BTreeMap<String, Data>,
    error: Option<ErrorInfo>,
    allocations_at_start: u64,
    allocations_at_end: Option<u64>,
}

/// A root or child span.
pub struct Span {
    /// Shared with the sender thread once a root span is closed (see [`RootClosed`]).
    state: Arc<Mutex<State>>,
    root: Arc<RootShared>,
}

/// A closed root span and its collected child events, processed on the sender thread: the ignore
/// rules, the sampling decision, the per-action metrics and the sample (filtering, sanitising, JSON).
struct RootClosed {
    span: Span,
    collected: ChildEvents,
}

impl crate::metrics::Record for RootClosed {
    fn process(self: Arc<Self>) {
        // The queue held the only reference.
        let Some(RootClosed { span, collected }) = Arc::into_inner(self) else {
            return;
        };
        let report = {
            let state = span.lock();
            span.root_report(&state, collected)
        };
        if let Some((namespace, action, duration_ns, has_error, events, sample)) = report {
            let groups = sample::group_durations(&events);
            report_action(&namespace, &action, duration_ns, has_error, None, groups);
            if let Some(sample) = sample {
                recorder::submit_sample(sample);
            }
        }
    }
}

static USED_AFTER_CLOSE: AtomicI64 = AtomicI64::new(0);
static BAD_TRACEPARENT: AtomicI64 = AtomicI64::new(0);

impl Span {
    fn new(
        root: Arc<RootShared>,
        parent_span_id: Option<String>,
        is_root: bool,
        namespace: String,
        start_ns: i64,
    ) -> Span {
        Span {
            state: Arc::new(Mutex::new(State {
                span_id: random_hex(8),
                parent_span_id,
                is_root,
                name: None,
                namespace,
                start_ns,
                end_ns: None,
                attributes: BTreeMap::new(),
                sql_attributes: Vec::new(),
                sample_data: BTreeMap::new(),
                error: None,
                allocations_at_start: misc::allocation_count(),
                allocations_at_end: None,
            })),
            root,
        }
    }

    fn new_root(namespace: &str, start_ns: i64, trace: Option<TraceParent>) -> Span {
        let (trace_id, parent) = match trace {
            Some(t) => (t.trace_id, Some(t.parent_span_id)),
            None => (random_hex(16), None),
        };
        let root = Arc::new(RootShared {
            trace_id,
            start_ns,
            closed: AtomicBool::new(false),
            events: Mutex::new(ChildEvents::default()),
        });
        Span::new(
            root,
            parent,
            true,
            truncate(namespace.to_string(), MAX_TEXT),
            start_ns,
        )
    }

    /// A new root span starting now (or at `start_ns`, epoch nanoseconds).
    pub fn root(namespace: &str, start_ns: Option<i64>) -> Span {
        Span::new_root(namespace, start_ns.unwrap_or_else(now_ns), None)
    }

    /// A root span continuing the trace of a `traceparent` header: same trace id, the header's
    /// span as parent. An invalid header gives a new trace (and a log line).
    pub fn from_traceparent(header: &str) -> Span {
        let trace = parse_traceparent(header);
        if trace.is_none() {
            warn_limited(
                &BAD_TRACEPARENT,
                "appsignal_create_span_from_traceparent: invalid traceparent; a new trace was started",
            );
        }
        Span::new_root(TRACEPARENT_NAMESPACE, now_ns(), trace)
    }

    /// A child of this span starting now (or at `start_ns`), in the same trace and root. Only the
    /// root carries the namespace: a child's is empty until `set_namespace`.
    pub fn child(&self, start_ns: Option<i64>) -> Span {
        let parent_id = self.lock().span_id.clone();
        Span::new(
            Arc::clone(&self.root),
            Some(parent_id),
            false,
            String::new(),
            start_ns.unwrap_or_else(now_ns),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` unless the span is closed (then logs and ignores the call).
    fn with_open(&self, function: &str, f: impl FnOnce(&mut State)) {
        let mut state = self.lock();
        if state.end_ns.is_some() {
            warn_limited(
                &USED_AFTER_CLOSE,
                &format!("{function}: the span was already closed; ignored"),
            );
            return;
        }
        f(&mut state);
    }

    /// The span id as the interface returns it: the last 8 of its 16 hex digits.
    pub fn id(&self) -> String {
        short_id(&self.lock().span_id, SHORT_SPAN_ID_LEN).to_owned()
    }

    /// The full W3C span id (16 hex digits), as in samples, `traceparent` and OTLP.
    pub fn full_id(&self) -> String {
        self.lock().span_id.clone()
    }

    /// The full W3C trace id (32 hex digits).
    pub fn trace_id(&self) -> String {
        self.root.trace_id.clone()
    }

    pub fn set_name(&self, name: &str) {
        self.with_open("appsignal_set_span_name", |s| {
            s.name = Some(truncate(name.to_string(), MAX_TEXT));
        });
    }

    /// Sets the name only if none was set yet.
    pub fn set_name_if_nil(&self, name: &str) {
        self.with_open("appsignal_set_span_name_if_nil", |s| {
            if s.name.is_none() {
                s.name = Some(truncate(name.to_string(), MAX_TEXT));
            }
        });
    }

    pub fn set_namespace(&self, namespace: &str) {
        self.with_open("appsignal_set_span_namespace", |s| {
            s.namespace = truncate(namespace.to_string(), MAX_TEXT);
        });
    }

    /// Sets an attribute (a later call with the same key replaces it). Strings are cut at 64 KiB.
    pub fn set_attribute(&self, key: &str, value: Data) {
        let value = match value {
            Data::String(text) => Data::String(truncate(text, MAX_BODY)),
            other => other,
        };
        self.with_open("appsignal_set_span_attribute", |s| {
            let key = truncate(key.to_string(), MAX_TEXT);
            s.sql_attributes.retain(|k| *k != key);
            bounded_insert(&mut s.attributes, key, value);
        });
    }

    /// Sets an attribute to a SQL query, sanitised.
    pub fn set_sql_attribute(&self, key: &str, query: &str) {
        let value = Data::String(truncate(sql::sanitize(query), MAX_BODY));
        self.with_open("appsignal_set_span_attribute_sql_string", |s| {
            let key = truncate(key.to_string(), MAX_TEXT);
            if bounded_insert(&mut s.attributes, key.clone(), value)
                && !s.sql_attributes.contains(&key)
            {
                s.sql_attributes.push(key);
            }
        });
    }

    /// Sets sample data under `key` (filtered like a transaction's when rendered; `tags` values
    /// cut like a transaction's).
    pub fn set_sample_data(&self, key: &str, data: Option<&Data>) {
        let Some(data) = sample_data_value(key, data) else {
            return;
        };
        self.with_open("appsignal_set_span_sample_data", |s| {
            bounded_insert(
                &mut s.sample_data,
                truncate(key.to_string(), MAX_TEXT),
                data,
            );
        });
    }

    /// Sets sample data under `key` only if that key has none yet.
    pub fn set_sample_data_if_nil(&self, key: &str, data: Option<&Data>) {
        let Some(data) = sample_data_value(key, data) else {
            return;
        };
        self.with_open("appsignal_set_span_sample_data_if_nil", |s| {
            let key = truncate(key.to_string(), MAX_TEXT);
            if !s.sample_data.contains_key(&key) {
                bounded_insert(&mut s.sample_data, key, data);
            }
        });
    }

    /// Sets the span's error (a later call replaces it).
    pub fn add_error(&self, name: &str, message: &str, backtrace: Option<&Data>) {
        self.with_open("appsignal_add_span_error", |s| {
            s.error = Some(ErrorInfo {
                class: truncate(name.to_string(), MAX_TEXT),
                message: truncate(message.to_string(), MAX_BODY),
                backtrace: backtrace.cloned().unwrap_or_else(Data::new_array),
            });
        });
    }

    /// Closes the span now (or at `end_ns`). A root span hands itself to the sender thread, which
    /// reports its metrics and maybe a sample; a child becomes an event of its root. A second close
    /// is ignored with a log line.
    pub fn close(&self, end_ns: Option<i64>) {
        let end = end_ns.unwrap_or_else(now_ns);
        let mut state = self.lock();
        if state.end_ns.is_some() {
            warn_limited(
                &USED_AFTER_CLOSE,
                "appsignal_close_span: the span was already closed; ignored",
            );
            return;
        }
        state.end_ns = Some(end.max(state.start_ns));
        state.allocations_at_end = Some(misc::allocation_count());
        if state.is_root {
            self.root.closed.store(true, Ordering::SeqCst);
            let collected = {
                let mut events = self.root.events.lock().unwrap_or_else(|e| e.into_inner());
                std::mem::take(&mut *events)
            };
            drop(state);
            recorder::submit_record(Arc::new(RootClosed {
                span: Span {
                    state: Arc::clone(&self.state),
                    root: Arc::clone(&self.root),
                },
                collected,
            }));
        } else if !self.root.closed.load(Ordering::SeqCst) {
            let event = child_event(&state, self.root.start_ns);
            drop(state);
            let mut events = self.root.events.lock().unwrap_or_else(|e| e.into_inner());
            if events.events.len() >= MAX_EVENTS {
                events.dropped += 1;
            } else {
                events.events.push(event);
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn root_report(
        &self,
        s: &State,
        collected: ChildEvents,
    ) -> Option<(
        String,
        String,
        i64,
        bool,
        Vec<Event>,
        Option<crate::sample::Sample>,
    )> {
        let config = config();
        let action = s.name.clone().unwrap_or_else(|| "unknown".to_string());
        if filter::is_ignored(&s.namespace, Some(&action), &config) {
            return None;
        }
        let error = s
            .error
            .as_ref()
            .filter(|e| !filter::is_error_ignored(&e.class, &config));
        let duration_ns = s.end_ns.unwrap_or(s.start_ns) - s.start_ns;
        let rate = crate::apm::sample_rate();
        // Drawing a random number is a system call: only when the rate can pick this one.
        let random = if rate > 0.0 {
            crate::apm::random_unit()
        } else {
            1.0
        };
        let sampled = sample::should_sample(error.is_some(), duration_ns, rate, random);
        let sample = sampled.then(|| {
            let mut view = self.view(s, &collected.events, collected.dropped);
            view.error = error;
            view.action = Some(&action);
            let mut sample = view.to_sample(&config);
            add_span_fields(&mut sample, s, &self.root.trace_id);
            sample
        });
        Some((
            s.namespace.clone(),
            action.clone(),
            duration_ns,
            error.is_some(),
            collected.events,
            sample,
        ))
    }

    fn view<'a>(&self, s: &'a State, events: &'a [Event], dropped: u64) -> SampleView<'a> {
        SampleView {
            kind: "span",
            id: &s.span_id,
            namespace: &s.namespace,
            action: s.name.as_deref(),
            start_ns: s.start_ns,
            end_ns: s.end_ns,
            queue_start_ms: None,
            gc_duration_ms: None,
            error: s.error.as_ref(),
            events,
            dropped_events: dropped,
            sample_data: &s.sample_data,
            metadata: &EMPTY_METADATA,
            allocation_count: Some(
                s.allocations_at_end
                    .unwrap_or_else(misc::allocation_count)
                    .saturating_sub(s.allocations_at_start),
            ),
        }
    }

    /// The span's current state as JSON, in the shape the Elixir package reads back (documented
    /// in docs/apm.md): short ids, `""` for what is unset, `start_time_seconds` /
    /// `start_time_nanoseconds`, typed attributes, sample data values as JSON strings (filtered),
    /// the error as `{name, message, backtrace_json}`. For an open root, `events` holds the
    /// children closed so far. A closed span gives the empty string: it is done, and a package
    /// asking "closed?" through `to_json` sees that.
    pub fn to_json(&self) -> String {
        let config = config();
        let s = self.lock();
        if s.end_ns.is_some() {
            return String::new();
        }
        let (events, dropped) = if s.is_root {
            let events = self.root.events.lock().unwrap_or_else(|e| e.into_inner());
            let rendered: Vec<serde_json::Value> = events
                .events
                .iter()
                .map(|e| e.to_json(Shape::View))
                .collect();
            (rendered, events.dropped)
        } else {
            (Vec::new(), 0)
        };
        let sample_data: serde_json::Map<String, serde_json::Value> = s
            .sample_data
            .iter()
            .map(|(k, v)| {
                let filtered = filter::filter_sample_data(k, v, &config);
                (k.clone(), serde_json::Value::String(filtered.to_json()))
            })
            .collect();
        let start_seconds = s.start_ns.div_euclid(1_000_000_000);
        let start_nanoseconds = s.start_ns.rem_euclid(1_000_000_000);
        let allocation_count = misc::allocation_count().saturating_sub(s.allocations_at_start);
        serde_json::json!({
            "trace_id": short_id(&self.root.trace_id, SHORT_TRACE_ID_LEN),
            "span_id": short_id(&s.span_id, SHORT_SPAN_ID_LEN),
            "parent_span_id": s
                .parent_span_id
                .as_deref()
                .map_or("", |p| short_id(p, SHORT_SPAN_ID_LEN)),
            "name": s.name.as_deref().unwrap_or(""),
            "namespace": s.namespace,
            "root": s.is_root,
            "closed": false,
            "start_time_seconds": start_seconds,
            "start_time_nanoseconds": start_nanoseconds,
            "attributes": sample::data_map_json(&s.attributes),
            "sample_data": sample_data,
            "error": s.error.as_ref().map(|e| e.view_json("backtrace_json")),
            "events": events,
            "dropped_events": dropped,
            "allocation_count": allocation_count,
        })
        .to_string()
    }
}

/// The value to store as sample data under `key` (a copy; `tags` values cut).
fn sample_data_value(key: &str, data: Option<&Data>) -> Option<Data> {
    let mut data = data?.clone();
    if key == "tags" {
        sample::cut_tag_values(&mut data);
    }
    Some(data)
}

static EMPTY_METADATA: BTreeMap<String, String> = BTreeMap::new();

fn add_span_fields(sample: &mut crate::sample::Sample, s: &State, trace_id: &str) {
    sample.trace_id = Some(trace_id.to_owned());
    sample.parent_span_id = Some(s.parent_span_id.clone());
    sample.name = Some(s.name.clone());
    sample.attributes = Some(s.attributes.clone());
}

/// A closed child span as an event of its root.
fn child_event(s: &State, root_start_ns: i64) -> Event {
    let mut attributes = s.attributes.clone();
    let category = match attributes.remove(CATEGORY_ATTRIBUTE) {
        Some(Data::String(c)) if !c.is_empty() => Some(c),
        _ => None,
    };
    let body_is_sql = s.sql_attributes.iter().any(|k| k == BODY_ATTRIBUTE);
    let body = match attributes.remove(BODY_ATTRIBUTE) {
        // Set with set_sql_attribute: sanitised then.
        Some(Data::String(b)) if body_is_sql => EventBody::Sanitized(b),
        Some(Data::String(b)) => EventBody::Text(b),
        Some(other) => EventBody::Text(truncate(other.to_json(), MAX_BODY)),
        None => EventBody::Text(String::new()),
    };
    if let Some(error) = &s.error {
        let mut e = Data::new_map();
        e.map_set("class".into(), Data::String(error.class.clone()));
        e.map_set("message".into(), Data::String(error.message.clone()));
        e.map_set("backtrace".into(), error.backtrace.clone());
        attributes.insert("error".into(), e);
    }
    let name = category.unwrap_or_else(|| s.name.clone().unwrap_or_else(|| "unknown".into()));
    let title = if name.as_str() == s.name.as_deref().unwrap_or("") {
        String::new()
    } else {
        s.name.clone().unwrap_or_default()
    };
    Event {
        name,
        title,
        body,
        body_format: if body_is_sql { BODY_FORMAT_SQL } else { 0 },
        start_ns: s.start_ns.saturating_sub(root_start_ns),
        duration_ns: s
            .end_ns
            .unwrap_or(s.start_ns)
            .saturating_sub(s.start_ns)
            .max(0),
        gc_duration_ms: 0,
        attributes,
        children: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apm::test_support;
    use crate::recorder::Recorded;

    fn json(span: &Span) -> serde_json::Value {
        serde_json::from_str(&span.to_json()).unwrap()
    }

    fn samples_named(action: &str) -> Vec<serde_json::Value> {
        recorder::recorded()
            .into_iter()
            .filter_map(|r| match r {
                Recorded::Sample(s) if s["action"] == action => Some(s),
                _ => None,
            })
            .collect()
    }

    fn counters_named(action: &str) -> usize {
        recorder::recorded()
            .into_iter()
            .filter(|r| matches!(r, Recorded::Counter { name, tags: Some(t), .. }
                if name == "transaction_count" && t.to_json().contains(&format!("\"action\":\"{action}\""))))
            .count()
    }

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn traceparent_parsing() {
        let tp = parse_traceparent(TP).unwrap();
        assert_eq!(tp.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(tp.parent_span_id, "b7ad6b7169203331");
        assert_eq!(tp.flags, 1);
        assert!(parse_traceparent(&format!("  {TP}\n")).is_some());
        assert!(
            parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-extra")
                .is_some()
        );
        for bad in [
            "",
            "garbage",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0é",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn spans_from_traceparent_continue_the_trace() {
        test_support::setup();
        let span = Span::from_traceparent(TP);
        let j = json(&span);
        // The view's ids are the short forms; the full ones stay inside.
        assert_eq!(j["trace_id"], "8448eb211c80319c");
        assert_eq!(span.trace_id(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(j["parent_span_id"], "69203331");
        assert_eq!(j["namespace"], "web");
        assert_eq!(j["root"], true);
        let bad = Span::from_traceparent("nonsense");
        let j = json(&bad);
        assert_eq!(j["trace_id"].as_str().unwrap().len(), 16);
        assert_eq!(j["parent_span_id"], "");
        assert_eq!(j["name"], "");
        assert_eq!(bad.id().len(), 8);
        assert_eq!(bad.full_id().len(), 16);
        assert!(bad.full_id().ends_with(&bad.id()));
        assert_eq!(j["span_id"], bad.id());
    }

    #[test]
    fn children_become_events_of_the_root_sample() {
        test_support::setup();
        let root = Span::root("web", Some(1_000_000_000));
        root.set_name("SpanCtrl#index");
        let child = root.child(Some(1_100_000_000));
        child.set_name("Repo.all");
        child.set_attribute(CATEGORY_ATTRIBUTE, Data::String("query.ecto".into()));
        child.set_sql_attribute(BODY_ATTRIBUTE, "SELECT * FROM users WHERE id = 7");
        child.set_attribute("rows", Data::Integer(3));
        let grandchild = child.child(Some(1_200_000_000));
        grandchild.set_name("http.request");
        grandchild.add_error("Timeout", "slow", None);
        grandchild.close(Some(1_300_000_000));
        child.close(Some(1_400_000_000));
        assert_eq!(json(&root)["events"].as_array().unwrap().len(), 2);
        // Only the root carries the namespace (an unclosed child is not recorded).
        let probe = root.child(None);
        assert_eq!(json(&probe)["namespace"], "");
        assert_eq!(json(&probe)["parent_span_id"], root.id());
        drop(probe);
        root.add_error(
            "RuntimeError",
            "boom",
            Some(&Data::Array(vec![Data::String("lib/a.ex:1".into())])),
        );
        let mut params = Data::new_map();
        params.map_set("password".into(), Data::String("p".into()));
        root.set_sample_data("params", Some(&params));
        root.set_sample_data_if_nil("params", Some(&Data::new_map()));
        root.close(Some(2_500_000_000));
        let samples = samples_named("SpanCtrl#index");
        assert_eq!(samples.len(), 1);
        let s = &samples[0];
        assert_eq!(s["kind"], "span");
        assert_eq!(s["id"].as_str().unwrap().len(), 16);
        assert_eq!(s["trace_id"].as_str().unwrap().len(), 32);
        assert!(s["parent_span_id"].is_null());
        assert_eq!(s["duration"], 1500.0);
        assert_eq!(s["error"]["class"], "RuntimeError");
        assert_eq!(s["sample_data"]["params"]["password"], "[FILTERED]");
        let events = s["events"].as_array().unwrap();
        assert_eq!(events[0]["name"], "http.request");
        assert_eq!(events[0]["attributes"]["error"]["class"], "Timeout");
        assert_eq!(events[1]["name"], "query.ecto");
        assert_eq!(events[1]["title"], "Repo.all");
        assert_eq!(events[1]["body"], "SELECT * FROM users WHERE id = ?");
        assert_eq!(events[1]["body_format"], 1);
        assert_eq!(events[1]["start"], 100.0);
        assert_eq!(events[1]["duration"], 300.0);
        assert_eq!(events[1]["attributes"]["rows"], 3);
        assert_eq!(counters_named("SpanCtrl#index"), 1);

        // Closing a child after its root records nothing; closing twice is ignored.
        let late = root.child(None);
        late.close(None);
        root.close(None);
        assert_eq!(counters_named("SpanCtrl#index"), 1);
    }

    #[test]
    fn the_view_has_the_shape_the_elixir_package_reads() {
        test_support::setup();
        let root = Span::root("web", Some(1_588_930_137_508_176_000));
        let j = json(&root);
        assert_eq!(j["start_time_seconds"], 1_588_930_137i64);
        assert_eq!(j["start_time_nanoseconds"], 508_176_000);
        assert_eq!(j["name"], "");
        assert_eq!(j["parent_span_id"], "");
        assert_eq!(j["closed"], false);
        assert!(j["error"].is_null());
        let mut params = Data::new_map();
        params.map_set("key".into(), Data::String("value".into()));
        params.map_set("password".into(), Data::String("secret".into()));
        root.set_sample_data("params", Some(&params));
        root.add_error(
            "RuntimeError",
            "boom",
            Some(&Data::Array(vec![Data::String("lib/a.ex:1".into())])),
        );
        root.set_attribute("s", Data::String("text".into()));
        root.set_attribute("i", Data::Integer(i64::MAX));
        root.set_attribute(
            "big",
            Data::String("bigint:123456789012345678901234567890".into()),
        );
        let j = json(&root);
        assert_eq!(
            j["sample_data"]["params"],
            r#"{"key":"value","password":"[FILTERED]"}"#
        );
        assert_eq!(j["error"]["name"], "RuntimeError");
        assert_eq!(j["error"]["message"], "boom");
        assert_eq!(j["error"]["backtrace_json"], r#"["lib/a.ex:1"]"#);
        assert_eq!(j["attributes"]["s"], "text");
        assert_eq!(j["attributes"]["i"], i64::MAX);
        assert_eq!(
            j["attributes"]["big"],
            "bigint:123456789012345678901234567890"
        );
        assert_eq!(j["span_id"], root.id());
    }

    #[test]
    fn if_nil_setters_keep_the_first_value() {
        test_support::setup();
        let span = Span::root("background", None);
        span.set_name_if_nil("First");
        span.set_name_if_nil("Second");
        span.set_sample_data_if_nil("custom_data", Some(&Data::Integer(1)));
        span.set_sample_data_if_nil("custom_data", Some(&Data::Integer(2)));
        span.set_attribute("b", Data::Bool(true));
        span.set_attribute("d", Data::Float(1.5));
        let j = json(&span);
        assert_eq!(j["name"], "First");
        assert_eq!(j["sample_data"]["custom_data"], "1");
        assert_eq!(j["attributes"]["b"], true);
        assert_eq!(j["attributes"]["d"], 1.5);
    }

    #[test]
    fn a_fast_root_without_error_counts_without_a_sample_and_setters_after_close_are_ignored() {
        test_support::setup();
        let span = Span::root("background", None);
        span.set_name("SpanFast#job");
        span.close(None);
        span.set_name("Changed");
        assert_eq!(span.to_json(), "", "a closed span's JSON is empty");
        assert_eq!(counters_named("SpanFast#job"), 1);
        assert!(samples_named("SpanFast#job").is_empty());
    }

    #[test]
    fn a_slow_root_is_sampled_and_ignored_names_are_not_reported() {
        test_support::setup();
        let span = Span::root("web", Some(0));
        span.set_name("SpanSlow#x");
        span.close(Some(sample::SLOW_THRESHOLD_NS));
        assert_eq!(samples_named("SpanSlow#x").len(), 1);

        let ignored = Span::root("web", Some(0));
        ignored.set_name("Ignored#action");
        ignored.add_error("E", "m", None);
        ignored.close(Some(5));
        assert!(samples_named("Ignored#action").is_empty());
        assert_eq!(counters_named("Ignored#action"), 0);
    }

    #[test]
    fn spans_can_be_freed_in_any_order_and_used_from_threads() {
        test_support::setup();
        let root = Span::root("web", None);
        root.set_name("SpanOrder#x");
        let child = root.child(None);
        drop(root);
        child.set_name("still fine");
        assert_eq!(json(&child)["name"], "still fine");
        assert_eq!(json(&child)["closed"], false);
        child.close(None);
        assert_eq!(child.to_json(), "");

        let root = Arc::new(Span::root("web", None));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let root = Arc::clone(&root);
                std::thread::spawn(move || {
                    for j in 0..50 {
                        root.set_attribute(&format!("k{i}_{j}"), Data::Integer(j));
                        let c = root.child(None);
                        c.close(None);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let j = json(&root);
        assert_eq!(j["attributes"].as_object().unwrap().len(), 200);
        assert_eq!(j["events"].as_array().unwrap().len(), 200);
    }
}
