//! Samples: the events, the error and the JSON document of one transaction or root span as it is
//! handed to the agent, and the decision whether to sample at all.
//!
//! Sampling rule: a transaction (or root span) is sampled when it has a (not ignored) error, or
//! took at least [`SLOW_THRESHOLD_NS`] (1 s), or the sampling rate ([`super::set_sample_rate`],
//! default 0.0) says so.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::apm::{filter, misc, ns_to_ms, ApmConfig};
use crate::data::Data;

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
    pub fn to_json(&self) -> Value {
        json!({
            "class": self.class,
            "message": self.message,
            "backtrace": self.backtrace.to_json_value(),
        })
    }
}

/// One finished event: a node of the events tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub title: String,
    /// Already sanitised when `body_format` is 1 (SQL).
    pub body: String,
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

    pub fn to_json(&self) -> Value {
        let mut event = json!({
            "name": self.name,
            "group": self.group(),
            "title": self.title,
            "body": self.body,
            "body_format": self.body_format,
            "start": ns_to_ms(self.start_ns),
            "duration": ns_to_ms(self.duration_ns),
            "gc_duration": self.gc_duration_ms,
            "children": self.children.iter().map(Event::to_json).collect::<Vec<_>>(),
        });
        if !self.attributes.is_empty() {
            event["attributes"] = data_map_json(&self.attributes);
        }
        event
    }

    /// This event and all its descendants.
    pub fn count(&self) -> usize {
        1 + self.children.iter().map(Event::count).sum::<usize>()
    }
}

pub fn event_group(name: &str) -> &str {
    match name.split_once('.') {
        Some((_, rest)) if !rest.is_empty() => rest,
        _ => name,
    }
}

/// Total duration (ns) per event group over a whole tree. Nested events of the same group both
/// count (durations include children).
pub fn group_durations(events: &[Event]) -> BTreeMap<String, i64> {
    let mut totals = BTreeMap::new();
    let mut stack: Vec<&Event> = events.iter().collect();
    while let Some(event) = stack.pop() {
        let total = totals.entry(event.group().to_string()).or_insert(0i64);
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

    /// The JSON document: the shape of a sample (documented in docs/apm.md). Sample data is
    /// filtered here, so nothing unfiltered leaves through a sample or a `*_to_json`.
    pub fn render(&self, config: &ApmConfig) -> Value {
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
            "error": self.error.map(ErrorInfo::to_json),
            "events": self.events.iter().map(Event::to_json).collect::<Vec<_>>(),
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
            body: String::new(),
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
        let json = view.render(&config);
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
