//! Samples: the events, the error and the JSON document of one transaction or root span as it is
//! handed to the agent, and the decision whether to sample at all.
//!
//! Sampling rule: a transaction (or root span) is sampled when it has a (not ignored) error, or
//! took at least [`SLOW_THRESHOLD_NS`] (1 s), or the sampling rate ([`super::set_sample_rate`],
//! default 0.0) says so.
//!
//! One state renders as two documents ([`Shape`]): the **sample** handed to the agent (SQL bodies
//! sanitised here, where the data is about to leave the process) and the in-process **view**
//! returned by `appsignal_transaction_to_json` (bodies as the caller gave them, and the field names
//! the language packages read back).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::apm::{filter, misc, ns_to_ms, sql, truncate, ApmConfig, MAX_BODY};
use crate::data::Data;
use crate::sample::{Sample, SampleError, SampleEvent, SampleKind};

/// Which document a state is rendered as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The sample handed to `recorder::submit_sample` (documented under "Sample JSON" in docs/apm.md).
    Sample,
    /// What `appsignal_transaction_to_json` returns: the shape the Ruby gem's and the Elixir
    /// package's test helpers read (every event in one flat list: [`flat_view`]).
    View,
}

pub use crate::sample::{cut_tag_values, event_group, MAX_TAG_VALUE_CHARS};

/// At or above this duration a transaction is slow and always sampled: 1 s.
pub const SLOW_THRESHOLD_NS: i64 = 1_000_000_000;

/// Whether to sample: errors and slow ones always; otherwise when `random` (uniform in [0, 1))
/// falls under `rate`.
pub fn should_sample(has_error: bool, duration_ns: i64, rate: f64, random: f64) -> bool {
    has_error || duration_ns >= SLOW_THRESHOLD_NS || random < rate
}

/// An error as reported: class, message and the backtrace as given (normally an array of strings).
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorInfo {
    pub class: String,
    pub message: String,
    pub backtrace: Data,
}

impl ErrorInfo {
    /// The sample's error: `class`, `message`, `backtrace` as given (an array).
    pub fn to_sample(&self) -> SampleError {
        SampleError {
            backtrace: self.backtrace.clone(),
            class: self.class.clone(),
            message: self.message.clone(),
        }
    }

    /// The error as the language packages read it back: `name`, `message`, and the backtrace as a
    /// string holding its JSON under `backtrace_key` (`backtrace` for transactions,
    /// `backtrace_json` for spans).
    pub fn view_json(&self, backtrace_key: &str) -> Value {
        let mut error = json!({"name": self.class, "message": self.message});
        error[backtrace_key] = Value::String(self.backtrace.to_json());
        error
    }
}

/// An event's body as it was recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    /// Text as the caller gave it (at most 64 KiB); with body format 1 it is SQL and is sanitised
    /// only in the sample.
    Text(String),
    /// A data body with body format 1, rendered as JSON; in the sample its strings are sanitised.
    Data(Data),
    /// Text that is already safe to send (a span's SQL attribute, sanitised when it was set).
    Sanitized(String),
}

impl EventBody {
    /// The body as recorded (data rendered as JSON), at most 64 KiB.
    pub fn raw(&self) -> String {
        match self {
            EventBody::Text(text) | EventBody::Sanitized(text) => text.clone(),
            EventBody::Data(data) => truncate(data.to_json(), MAX_BODY),
        }
    }

    /// The body as it may leave the process: SQL (format 1) sanitised, at most 64 KiB.
    pub fn sanitized(&self, body_format: i32) -> String {
        match self {
            EventBody::Text(text) if body_format == SQL_BODY_FORMAT => sql::sanitize(text),
            EventBody::Data(data) if body_format == SQL_BODY_FORMAT => {
                let mut copy = data.clone();
                sanitize_strings(&mut copy);
                truncate(copy.to_json(), MAX_BODY)
            }
            other => other.raw(),
        }
    }
}

/// Body format 1: the body is SQL.
const SQL_BODY_FORMAT: i32 = 1;

fn sanitize_strings(data: &mut Data) {
    match data {
        Data::String(s) => *s = sql::sanitize(s),
        Data::Array(items) => items.iter_mut().for_each(sanitize_strings),
        Data::Map(map) => map.values_mut().for_each(sanitize_strings),
        _ => {}
    }
}

/// One finished event: a node of the events tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub title: String,
    pub body: EventBody,
    pub body_format: i32,
    /// Nanoseconds from the start of the transaction (or root span).
    pub start_ns: i64,
    pub duration_ns: i64,
    /// Garbage-collection time during the event, in milliseconds.
    pub gc_duration_ms: i64,
    /// Span attributes of a child span turned into an event (empty for transaction events).
    pub attributes: BTreeMap<String, Data>,
    pub children: Vec<Event>,
}

impl Event {
    /// The event group: what follows the first dot of the name (`sql.active_record` →
    /// `active_record`); a name without a dot (or ending in its only dot) is its own group.
    pub fn group(&self) -> &str {
        event_group(&self.name)
    }

    /// The event and its children. In the sample the body is sanitised (format 1); in the view it
    /// is as recorded and every event has `"count": 1`.
    pub fn to_json(&self, shape: Shape) -> Value {
        let mut event = self.fields_json(shape);
        event["children"] = self.children.iter().map(|c| c.to_json(shape)).collect();
        event
    }

    /// The event's own fields, without its children.
    fn fields_json(&self, shape: Shape) -> Value {
        let body = match shape {
            Shape::Sample => self.body.sanitized(self.body_format),
            Shape::View => self.body.raw(),
        };
        let mut event = json!({
            "name": self.name,
            "group": self.group(),
            "title": self.title,
            "body": body,
            "body_format": self.body_format,
            "start": ns_to_ms(self.start_ns),
            "duration": ns_to_ms(self.duration_ns),
            "gc_duration": self.gc_duration_ms,
        });
        if shape == Shape::View {
            event["count"] = 1.into();
        }
        if !self.attributes.is_empty() {
            event["attributes"] = data_map_json(&self.attributes);
        }
        event
    }

    /// The event and its children as they leave the process: the body sanitised (format 1).
    pub fn to_sample(&self) -> SampleEvent {
        SampleEvent {
            attributes: self.attributes.clone(),
            body: self.body.sanitized(self.body_format),
            body_format: self.body_format,
            children: self.children.iter().map(Event::to_sample).collect(),
            duration: ns_to_ms(self.duration_ns),
            gc_duration: self.gc_duration_ms,
            group: self.group().to_owned(),
            name: self.name.clone(),
            span_id: None,
            span_kind: None,
            start: ns_to_ms(self.start_ns),
            title: self.title.clone(),
        }
    }

    /// This event and all its descendants.
    pub fn count(&self) -> usize {
        1 + self.children.iter().map(Event::count).sum::<usize>()
    }
}

/// The events of a tree as one flat list, the view's `events` (docs/apm.md, `transaction_to_json`):
/// every event, in the order they started, each with its fields in the view shape (no `children`)
/// and `parent_index`, the position in this list of the event it is nested in (`-1` at the top).
///
/// The order is the tree's pre-order with siblings by start time (equal starts in the order they
/// were recorded): a parent always comes before what is nested in it, so `parent_index` is always
/// smaller than the event's own index. Events nested in one another and run one after another on
/// one thread start in that order anyway; only a `record_event` whose duration reaches back before
/// the start of its enclosing event is listed after that event although its computed start is
/// earlier.
pub fn flat_view(events: &[Event]) -> Vec<Value> {
    /// Siblings by start time; `sort_by_key` is stable, so equal starts keep the recorded order.
    fn by_start(events: &[Event]) -> Vec<&Event> {
        let mut sorted: Vec<&Event> = events.iter().collect();
        sorted.sort_by_key(|e| e.start_ns);
        sorted
    }
    let mut flat = Vec::with_capacity(events.iter().map(Event::count).sum());
    // Events still to list, with their parent's index, the next one on top: an explicit stack
    // rather than recursion (the nesting is bounded, but the stack need not depend on it).
    let mut pending: Vec<(&Event, i64)> = by_start(events)
        .into_iter()
        .rev()
        .map(|e| (e, -1))
        .collect();
    while let Some((event, parent_index)) = pending.pop() {
        let index = flat.len() as i64;
        let mut json = event.fields_json(Shape::View);
        json["parent_index"] = parent_index.into();
        flat.push(json);
        pending.extend(
            by_start(&event.children)
                .into_iter()
                .rev()
                .map(|c| (c, index)),
        );
    }
    flat
}

/// Total duration (ns) per event group over a whole tree. Nested events of the same group both
/// count (durations include children).
pub fn group_durations(events: &[Event]) -> BTreeMap<&str, i64> {
    let mut totals = BTreeMap::new();
    let mut stack: Vec<&Event> = events.iter().collect();
    while let Some(event) = stack.pop() {
        let total = totals.entry(event.group()).or_insert(0i64);
        *total = total.saturating_add(event.duration_ns);
        stack.extend(event.children.iter());
    }
    totals
}

pub(crate) fn data_map_json(map: &BTreeMap<String, Data>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), v.to_json_value()))
            .collect(),
    )
}

/// Everything a sample (or a handle's `*_to_json`) shows, borrowed from a transaction or span.
pub struct SampleView<'a> {
    /// `"transaction"` or `"span"`.
    pub kind: &'static str,
    pub id: &'a str,
    pub namespace: &'a str,
    pub action: Option<&'a str>,
    pub start_ns: i64,
    pub end_ns: Option<i64>,
    pub queue_start_ms: Option<i64>,
    pub gc_duration_ms: Option<i64>,
    pub error: Option<&'a ErrorInfo>,
    pub events: &'a [Event],
    pub dropped_events: u64,
    pub sample_data: &'a BTreeMap<String, Data>,
    pub metadata: &'a BTreeMap<String, String>,
    pub allocation_count: Option<u64>,
}

impl SampleView<'_> {
    pub fn duration_ns(&self) -> Option<i64> {
        self.end_ns
            .map(|end| end.saturating_sub(self.start_ns).max(0))
    }

    /// Queue time in ms: from the queue start to the start, when the queue start is before it.
    pub fn queue_time_ms(&self) -> Option<f64> {
        let queue_start = self.queue_start_ms?;
        let start_ms = self.start_ns / 1_000_000;
        (queue_start > 0 && queue_start <= start_ms).then(|| (start_ms - queue_start) as f64)
    }

    /// The sample as it leaves the process (docs/apm.md, "Sample JSON"). Sample data is
    /// filtered here, so nothing unfiltered leaves through a sample.
    pub fn to_sample(&self, config: &ApmConfig) -> Sample {
        Sample {
            action: self.action.map(str::to_owned),
            allocation_count: self.allocation_count,
            attributes: None,
            dropped_events: self.dropped_events,
            duration: self.duration_ns().map(ns_to_ms),
            end: self.end_ns.map(|e| e / 1_000_000),
            environment_metadata: misc::environment_metadata(),
            error: self.error.map(ErrorInfo::to_sample),
            // The sample keeps the tree (the Push API and the OTLP span tree read it).
            events: self.events.iter().map(Event::to_sample).collect(),
            gc_duration: self.gc_duration_ms,
            hostname: config.hostname.clone(),
            id: self.id.to_owned(),
            kind: if self.kind == "span" {
                SampleKind::Span
            } else {
                SampleKind::Transaction
            },
            metadata: self.metadata.clone(),
            name: None,
            namespace: self.namespace.to_owned(),
            parent_span_id: None,
            queue_start: self.queue_start_ms,
            queue_time: self.queue_time_ms(),
            revision: config.revision.clone(),
            sample_data: {
                // Inserted one by one: `collect` into a map would add a copy of the sort algorithm.
                let mut filtered = BTreeMap::new();
                for (k, v) in self.sample_data {
                    filtered.insert(k.clone(), filter::filter_sample_data(k, v, config));
                }
                filtered
            },
            span_kind: None,
            start: self.start_ns / 1_000_000,
            trace_id: None,
        }
    }

    /// The view (`appsignal_transaction_to_json`, documented in docs/apm.md; the sample is
    /// [`SampleView::to_sample`]). Sample data is filtered here, so nothing unfiltered leaves
    /// through a `*_to_json`.
    pub fn render_view(&self, config: &ApmConfig) -> Value {
        let sample_data: Map<String, Value> = self
            .sample_data
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    filter::filter_sample_data(k, v, config).to_json_value(),
                )
            })
            .collect();
        let metadata: Map<String, Value> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let environment_metadata: Map<String, Value> = misc::environment_metadata()
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        json!({
            "kind": self.kind,
            "id": self.id,
            "namespace": self.namespace,
            "action": self.action,
            "start": self.start_ns / 1_000_000,
            "end": self.end_ns.map(|e| e / 1_000_000),
            "duration": self.duration_ns().map(ns_to_ms),
            "queue_start": self.queue_start_ms,
            "queue_time": self.queue_time_ms(),
            "gc_duration": self.gc_duration_ms,
            "error": self.error.map(|e| e.view_json("backtrace")),
            // The view lists every event at the top, where the packages look events up.
            "events": flat_view(self.events),
            "dropped_events": self.dropped_events,
            "sample_data": sample_data,
            "metadata": metadata,
            "environment_metadata": environment_metadata,
            "allocation_count": self.allocation_count,
            "revision": config.revision,
            "hostname": config.hostname,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, duration_ns: i64, children: Vec<Event>) -> Event {
        Event {
            name: name.into(),
            title: String::new(),
            body: EventBody::Text(String::new()),
            body_format: 0,
            start_ns: 0,
            duration_ns,
            gc_duration_ms: 0,
            attributes: BTreeMap::new(),
            children,
        }
    }

    #[test]
    fn groups_follow_the_first_dot() {
        assert_eq!(event_group("sql.active_record"), "active_record");
        assert_eq!(
            event_group("render.partial.action_view"),
            "partial.action_view"
        );
        assert_eq!(event_group("custom"), "custom");
        assert_eq!(event_group("odd."), "odd.");
        assert_eq!(event_group(""), "");
    }

    #[test]
    fn group_durations_walk_the_whole_tree() {
        let tree = vec![
            event(
                "process_action.action_controller",
                10,
                vec![
                    event("sql.active_record", 3, vec![]),
                    event("sql.active_record", 4, vec![]),
                ],
            ),
            event(
                "render.action_view",
                2,
                vec![event("sql.active_record", 1, vec![])],
            ),
        ];
        let totals = group_durations(&tree);
        assert_eq!(totals["active_record"], 8);
        assert_eq!(totals["action_controller"], 10);
        assert_eq!(totals["action_view"], 2);
        assert_eq!(tree[0].count(), 3);
    }

    fn starting(name: &str, start_ns: i64, children: Vec<Event>) -> Event {
        Event {
            start_ns,
            ..event(name, 1, children)
        }
    }

    #[test]
    fn the_view_lists_every_event_in_start_order_with_its_parent() {
        // Children as the recording gives them: in the order they finished.
        let tree = vec![
            starting(
                "a",
                10,
                vec![
                    starting("b", 20, vec![starting("c", 21, vec![])]),
                    starting("d", 30, vec![]),
                    // Recorded last, but its duration says it started before b.
                    starting("e", 15, vec![]),
                    // Recorded with a duration that reaches back before a's start.
                    starting("f", 5, vec![]),
                ],
            ),
            starting("g", 40, vec![]),
            // Same start as g, finished after it.
            starting("h", 40, vec![]),
        ];
        let flat = flat_view(&tree);
        let listed: Vec<(&str, i64)> = flat
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap(),
                    e["parent_index"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            vec![
                ("a", -1),
                ("f", 0),
                ("e", 0),
                ("b", 0),
                ("c", 3),
                ("d", 0),
                ("g", -1),
                ("h", -1),
            ]
        );
        for (i, e) in flat.iter().enumerate() {
            assert!(e["parent_index"].as_i64().unwrap() < i as i64, "{e}");
            assert!(e.get("children").is_none());
            assert_eq!(e["count"], 1);
        }
        assert!(flat_view(&[]).is_empty());
    }

    #[test]
    fn sampling_rule() {
        assert!(should_sample(true, 0, 0.0, 0.5));
        assert!(should_sample(false, SLOW_THRESHOLD_NS, 0.0, 0.5));
        assert!(!should_sample(false, SLOW_THRESHOLD_NS - 1, 0.0, 0.0));
        assert!(should_sample(false, 0, 1.0, 0.999));
        assert!(should_sample(false, 0, 0.5, 0.25));
        assert!(!should_sample(false, 0, 0.5, 0.75));
    }

    #[test]
    fn render_filters_and_computes_times() {
        let config = ApmConfig {
            filter_parameters: vec!["password".into()],
            revision: "r1".into(),
            hostname: "h1".into(),
            ..ApmConfig::default()
        };
        let mut params = Data::new_map();
        params.map_set("password".into(), Data::String("p".into()));
        let mut sample_data = BTreeMap::new();
        sample_data.insert("params".to_string(), params);
        let metadata = BTreeMap::new();
        let error = ErrorInfo {
            class: "E".into(),
            message: "m".into(),
            backtrace: Data::Array(vec![Data::String("a.rb:1".into())]),
        };
        let events = vec![event("sql.active_record", 2_000_000, vec![])];
        let view = SampleView {
            kind: "transaction",
            id: "t1",
            namespace: "web",
            action: Some("A#b"),
            start_ns: 10_000_000_000,
            end_ns: Some(10_500_000_000),
            queue_start_ms: Some(9_900),
            gc_duration_ms: Some(3),
            error: Some(&error),
            events: &events,
            dropped_events: 0,
            sample_data: &sample_data,
            metadata: &metadata,
            allocation_count: Some(7),
        };
        let json = serde_json::to_value(view.to_sample(&config)).unwrap();
        assert_eq!(json["duration"], 500.0);
        assert_eq!(json["queue_time"], 100.0);
        assert_eq!(json["start"], 10_000);
        assert_eq!(json["sample_data"]["params"]["password"], "[FILTERED]");
        assert_eq!(json["error"]["backtrace"][0], "a.rb:1");
        assert_eq!(json["events"][0]["group"], "active_record");
        assert_eq!(json["events"][0]["duration"], 2.0);
        assert_eq!(json["revision"], "r1");
        assert_eq!(json["hostname"], "h1");
        assert_eq!(json["allocation_count"], 7);
    }
}
