//! Transactions: what the Ruby gem and the Elixir package record per request or job. A
//! transaction owns its event tree, error, sample data and metadata; `complete` turns it into the
//! per-action metrics and, when sampled, a sample handed to the agent.
//!
//! Per-action metrics (all tagged `namespace` and `action`; `action` is `"unknown"` when none was
//! set): counter `transaction_count` (1 per transaction), counter `transaction_error_count` (1 when
//! it has a not-ignored error), distribution `transaction_duration` (ms), distribution
//! `transaction_queue_time` (ms, when a queue start was set), and distribution `event_duration`
//! (ms, tagged `namespace`, `action`, `group`: the total time of the group's events in this
//! transaction, one value per group per transaction).
//!
//! A `Transaction` is `Sync`: its state is behind a mutex, so calls from several threads are safe
//! (they are serialised). After `complete` every call is ignored with a (rate-limited) log line.
//!
//! The app thread only records: the caller's bytes are copied into the transaction's
//! [`Recording`] (no UTF-8 check, no per-event allocation), `complete` marks the state completed
//! and hands a reference to it to the agent; the sender thread reads the texts back, applies the
//! ignore rules, builds the per-action metrics and the sample (filtering, SQL sanitising, JSON)
//! before anything leaves the process, and usually frees it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use crate::apm::events::{Field, Recording};
use crate::apm::sample::{self, ErrorInfo, Event, SampleView};
use crate::apm::{
    bounded_insert, config, filter, misc, monotonic_ns, now_ns, ns_to_ms, tags, truncate,
    warn_limited, MAX_BODY, MAX_TEXT,
};
use crate::data::Data;
use crate::recorder;

pub use crate::apm::events::{Body, BODY_FORMAT_SQL, MAX_DEPTH, MAX_EVENTS};

/// Hands the per-action metrics of one finished transaction or root span to the agent.
pub(crate) fn report_action(
    namespace: &str,
    action: &str,
    duration_ns: i64,
    has_error: bool,
    queue_time_ms: Option<f64>,
    group_durations: impl IntoIterator<Item = (impl AsRef<str>, i64)>,
) {
    let action_tags = tags(&[("action", action), ("namespace", namespace)]);
    recorder::increment_counter(b"transaction_count", 1.0, Some(&action_tags));
    if has_error {
        recorder::increment_counter(b"transaction_error_count", 1.0, Some(&action_tags));
    }
    recorder::add_distribution_value(
        b"transaction_duration",
        ns_to_ms(duration_ns),
        Some(&action_tags),
    );
    if let Some(queue_time) = queue_time_ms {
        recorder::add_distribution_value(b"transaction_queue_time", queue_time, Some(&action_tags));
    }
    for (group, total_ns) in group_durations {
        let group_tags = tags(&[
            ("action", action),
            ("group", group.as_ref()),
            ("namespace", namespace),
        ]);
        recorder::add_distribution_value(b"event_duration", ns_to_ms(total_ns), Some(&group_tags));
    }
}

#[derive(Clone)]
struct State {
    /// The id, namespace and action, and the events.
    rec: Recording,
    start_ns: i64,
    /// [`monotonic_ns`] at the start.
    started: i64,
    end_ns: Option<i64>,
    gc_start_ms: i64,
    gc_duration_ms: Option<i64>,
    queue_start_ms: Option<i64>,
    error: Option<ErrorInfo>,
    sample_data: BTreeMap<String, Data>,
    metadata: BTreeMap<String, String>,
    allocations_at_start: u64,
    allocations_at_end: Option<u64>,
    /// The decision `finish` returned.
    sampled: bool,
    completed: bool,
}

/// The texts of a state as they are reported, read back from its recording.
struct Texts<'a> {
    id: Cow<'a, str>,
    namespace: Cow<'a, str>,
    action: Option<Cow<'a, str>>,
    events: Vec<Event>,
}

impl State {
    /// Epoch nanoseconds now, on this transaction's monotonic clock.
    #[inline]
    fn now(&self) -> i64 {
        let elapsed = monotonic_ns().wrapping_sub(self.started).max(0);
        self.start_ns.saturating_add(elapsed)
    }

    /// The error unless its class is ignored.
    fn reported_error(&self, config: &crate::apm::ApmConfig) -> Option<&ErrorInfo> {
        self.error
            .as_ref()
            .filter(|e| !filter::is_error_ignored(&e.class, config))
    }

    fn namespace(&self) -> Cow<'_, str> {
        self.rec.field(Field::Namespace).unwrap_or_default()
    }

    fn action(&self) -> Option<Cow<'_, str>> {
        self.rec.field(Field::Action)
    }

    fn is_ignored(&self, config: &crate::apm::ApmConfig) -> bool {
        if config.ignore_namespaces.is_empty() && config.ignore_actions.is_empty() {
            return false; // without reading the texts back
        }
        filter::is_ignored(&self.namespace(), self.action().as_deref(), config)
    }

    /// The texts, and the events when `events` (else none).
    fn texts(&self, events: bool) -> Texts<'_> {
        Texts {
            id: self.rec.field(Field::Id).unwrap_or_default(),
            namespace: self.namespace(),
            action: self.action(),
            events: if events {
                self.rec.events()
            } else {
                Vec::new()
            },
        }
    }

    fn view<'a>(&'a self, texts: &'a Texts<'a>) -> SampleView<'a> {
        SampleView {
            kind: "transaction",
            id: &texts.id,
            namespace: &texts.namespace,
            action: texts.action.as_deref(),
            start_ns: self.start_ns,
            end_ns: self.end_ns,
            queue_start_ms: self.queue_start_ms,
            gc_duration_ms: self.gc_duration_ms,
            error: self.error.as_ref(),
            events: &texts.events,
            dropped_events: self.rec.dropped(),
            sample_data: &self.sample_data,
            metadata: &self.metadata,
            allocation_count: Some(
                self.allocations_at_end
                    .unwrap_or_else(misc::allocation_count)
                    .saturating_sub(self.allocations_at_start),
            ),
        }
    }
}

/// One transaction. Create with [`Transaction::start`]; everything else takes `&self`.
pub struct Transaction {
    /// Shared with the sender thread once completed (the state is the record it processes).
    state: Arc<Mutex<State>>,
}

/// A completed transaction, processed on the sender thread.
impl crate::metrics::Record for Mutex<State> {
    fn process(self: Arc<Self>) {
        let config = config();
        let state = self.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*state;
        if s.is_ignored(&config) {
            return;
        }
        let error = s.reported_error(&config);
        let sampled = s.sampled || error.is_some();
        // The events are built as a tree only for a sample; the metrics need their groups only.
        let texts = s.texts(sampled);
        let sample = sampled.then(|| {
            let mut view = s.view(&texts);
            view.error = error;
            // The SQL sanitiser runs here, on the sender thread, as the sample is built.
            view.to_sample(&config)
        });
        let view = s.view(&texts);
        report_action(
            &texts.namespace,
            texts.action.as_deref().unwrap_or("unknown"),
            view.duration_ns().unwrap_or(0),
            error.is_some(),
            view.queue_time_ms(),
            s.rec.group_durations(),
        );
        if let Some(sample) = sample {
            recorder::submit_sample(sample);
        }
    }
}

static USED_AFTER_COMPLETE: AtomicI64 = AtomicI64::new(0);

#[cold]
fn used_after_complete(function: &str) {
    warn_limited(
        &USED_AFTER_COMPLETE,
        &format!("{function}: the transaction was already completed; ignored"),
    );
}
static UNBALANCED: AtomicI64 = AtomicI64::new(0);

impl Transaction {
    /// Starts a transaction now. `gc_ms` is the process's total GC time so far (ms). An empty
    /// `id` gets a random one. Texts are taken as bytes (invalid UTF-8 is replaced where they are
    /// read back, as everywhere else).
    pub fn start(id: impl AsRef<[u8]>, namespace: impl AsRef<[u8]>, gc_ms: i64) -> Transaction {
        let mut rec = Recording::new();
        match id.as_ref() {
            [] => rec.set_field(Field::Id, crate::apm::random_hex(16).as_bytes()),
            id => rec.set_field(Field::Id, id),
        }
        rec.set_field(Field::Namespace, namespace.as_ref());
        Transaction {
            state: Arc::new(Mutex::new(State {
                rec,
                start_ns: now_ns(),
                started: monotonic_ns(),
                end_ns: None,
                gc_start_ms: gc_ms,
                gc_duration_ms: None,
                queue_start_ms: None,
                error: None,
                sample_data: BTreeMap::new(),
                metadata: BTreeMap::new(),
                allocations_at_start: misc::allocation_count(),
                allocations_at_end: None,
                sampled: false,
                completed: false,
            })),
        }
    }

    /// Runs `f` on the state unless the transaction was completed (then logs and returns None).
    #[inline]
    fn with_open<R>(&self, function: &str, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.completed {
            used_after_complete(function);
            return None;
        }
        Some(f(&mut state))
    }

    pub fn id(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.rec.field(Field::Id).unwrap_or_default().into_owned()
    }

    pub fn start_event(&self, gc_ms: i64) {
        self.with_open("appsignal_start_event", |s| {
            let now = s.now() - s.start_ns;
            s.rec.start(now, gc_ms);
        });
    }

    /// Finishes the innermost started event. Without one, logs and ignores the call.
    pub fn finish_event(
        &self,
        name: impl AsRef<[u8]>,
        title: impl AsRef<[u8]>,
        body: Body<'_>,
        body_format: i32,
        gc_ms: i64,
    ) {
        let balanced = self.with_open("appsignal_finish_event", |s| {
            let now = s.now() - s.start_ns;
            s.rec
                .finish(now, gc_ms, name.as_ref(), title.as_ref(), body, body_format)
        });
        if balanced == Some(false) {
            warn_limited(
                &UNBALANCED,
                "appsignal_finish_event: no event was started; ignored",
            );
        }
    }

    /// Adds a finished event that ended now and lasted `duration_ns` nanoseconds (negative: 0).
    /// `_gc_ms` is accepted for call compatibility; the event's GC time is reported as 0.
    pub fn record_event(
        &self,
        name: impl AsRef<[u8]>,
        title: impl AsRef<[u8]>,
        body: Body<'_>,
        body_format: i32,
        duration_ns: i64,
        _gc_ms: i64,
    ) {
        self.with_open("appsignal_record_event", |s| {
            let now = s.now() - s.start_ns;
            s.rec.record(
                now,
                duration_ns,
                name.as_ref(),
                title.as_ref(),
                body,
                body_format,
            );
        });
    }

    /// Sets the error (a later call replaces it). `backtrace` is normally an array of strings.
    pub fn set_error(&self, class: &str, message: &str, backtrace: Option<&Data>) {
        self.with_open("appsignal_set_transaction_error", |s| {
            s.error = Some(ErrorInfo {
                class: truncate(class.to_string(), MAX_TEXT),
                message: truncate(message.to_string(), MAX_BODY),
                backtrace: backtrace.cloned().unwrap_or_else(Data::new_array),
            });
        });
    }

    /// Sets sample data under `key` (`params`, `session_data`, `environment`, `tags`,
    /// `custom_data`, `error_causes`, …), replacing what was there. NULL data is ignored. String
    /// values of `tags` are cut at 10,000 characters (see [`sample::cut_tag_values`]).
    pub fn set_sample_data(&self, key: &str, data: Option<&Data>) {
        let Some(data) = data else { return };
        let mut data = data.clone();
        if key == "tags" {
            sample::cut_tag_values(&mut data);
        }
        self.with_open("appsignal_set_transaction_sample_data", |s| {
            bounded_insert(
                &mut s.sample_data,
                truncate(key.to_string(), MAX_TEXT),
                data,
            );
        });
    }

    pub fn set_action(&self, action: impl AsRef<[u8]>) {
        self.with_open("appsignal_set_transaction_action", |s| {
            s.rec.set_field(Field::Action, action.as_ref());
        });
    }

    pub fn set_namespace(&self, namespace: impl AsRef<[u8]>) {
        self.with_open("appsignal_set_transaction_namespace", |s| {
            s.rec.set_field(Field::Namespace, namespace.as_ref());
        });
    }

    /// When the request entered the queue (ms since the epoch, e.g. from `X-Request-Start`).
    /// 0 or negative clears it.
    pub fn set_queue_start(&self, ms_epoch: i64) {
        self.with_open("appsignal_set_transaction_queue_start", |s| {
            s.queue_start_ms = (ms_epoch > 0).then_some(ms_epoch);
        });
    }

    pub fn set_metadata(&self, key: &str, value: &str) {
        self.with_open("appsignal_set_transaction_metadata", |s| {
            bounded_insert(
                &mut s.metadata,
                truncate(key.to_string(), MAX_TEXT),
                truncate(value.to_string(), MAX_BODY),
            );
        });
    }

    /// Ends the transaction now (a second call moves the end) and decides whether to sample it:
    /// true when it has a not-ignored error, is slow, or the sampling rate picks it — and it is
    /// not ignored by namespace or action.
    pub fn finish(&self, gc_ms: i64) -> bool {
        let config = config();
        self.with_open("appsignal_finish_transaction", |s| {
            finish_state(s, gc_ms, &config);
            s.sampled
        })
        .unwrap_or(false)
    }

    /// Completes the transaction: per-action metrics (unless ignored) and, when `finish` said to
    /// sample (or it now has an error), the sample, both built on the sender thread. Without a
    /// prior `finish`, it is finished now with no GC time. Every later call on this transaction is
    /// ignored.
    pub fn complete(&self) {
        let done = self.with_open("appsignal_complete_transaction", |s| {
            if s.end_ns.is_none() {
                finish_state(s, s.gc_start_ms, &config());
            }
            s.completed = true;
            let open = s.rec.open_count();
            if open > 0 {
                tracing::debug!(
                    "transaction {} completed with {open} unfinished events",
                    s.rec.field(Field::Id).unwrap_or_default()
                );
            }
        });
        if done.is_some() {
            recorder::submit_record(Arc::clone(&self.state) as Arc<dyn crate::metrics::Record>);
        }
    }

    /// A copy of this transaction under `new_id` (events, error, data, times, the sampling
    /// decision); the copy is completed separately. None when this one is already completed.
    pub fn duplicate(&self, new_id: &str) -> Option<Transaction> {
        self.with_open("appsignal_duplicate_transaction", |s| {
            let mut copy = s.clone();
            match new_id.as_bytes() {
                [] => copy
                    .rec
                    .set_field(Field::Id, crate::apm::random_hex(16).as_bytes()),
                id => copy.rec.set_field(Field::Id, id),
            }
            Transaction {
                state: Arc::new(Mutex::new(copy)),
            }
        })
    }

    /// The current state as JSON, in the view shape (bodies as given, `error.name`, the backtrace
    /// as a JSON string, every event in one flat list with `count` and `parent_index`; filtered)
    /// plus `finished`, `sampled`, `completed` and `open_events`.
    pub fn to_json(&self) -> String {
        let config = config();
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let texts = state.texts(true);
        let mut json = state.view(&texts).render_view(&config);
        json["finished"] = state.end_ns.is_some().into();
        json["sampled"] = state.sampled.into();
        json["completed"] = state.completed.into();
        json["open_events"] = state.rec.open_count().into();
        json.to_string()
    }
}

fn finish_state(s: &mut State, gc_ms: i64, config: &crate::apm::ApmConfig) {
    let end = s.now();
    s.end_ns = Some(end);
    s.gc_duration_ms = Some(gc_ms.saturating_sub(s.gc_start_ms).max(0));
    s.allocations_at_end = Some(misc::allocation_count());
    let ignored = s.is_ignored(config);
    let has_error = s.reported_error(config).is_some();
    let rate = crate::apm::sample_rate();
    // Drawing a random number is a system call: only when the rate can pick this one.
    let random = if rate > 0.0 {
        crate::apm::random_unit()
    } else {
        1.0
    };
    s.sampled = !ignored && sample::should_sample(has_error, end - s.start_ns, rate, random);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apm::test_support;
    use crate::recorder::Recorded;

    fn json(txn: &Transaction) -> serde_json::Value {
        serde_json::from_str(&txn.to_json()).unwrap()
    }

    fn recorded_for(action: &str) -> Vec<Recorded> {
        recorder::recorded()
            .into_iter()
            .filter(|r| match r {
                Recorded::Counter { tags, .. } | Recorded::Distribution { tags, .. } => tags
                    .as_ref()
                    .is_some_and(|t| t.to_json().contains(&format!("\"action\":\"{action}\""))),
                Recorded::Sample(s) => s["action"] == action,
                Recorded::Log(_) => false,
            })
            .collect()
    }

    fn samples_for(action: &str) -> Vec<serde_json::Value> {
        recorded_for(action)
            .into_iter()
            .filter_map(|r| match r {
                Recorded::Sample(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    fn metric_names(action: &str) -> Vec<String> {
        recorded_for(action)
            .into_iter()
            .filter_map(|r| match r {
                Recorded::Counter { name, .. } | Recorded::Distribution { name, .. } => Some(name),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_view_lists_nested_events_flat_in_start_order_and_the_sample_keeps_the_tree() {
        test_support::setup();
        let txn = Transaction::start("t-tree", "web", 0);
        txn.set_action("Tree#show");
        txn.start_event(0);
        txn.start_event(0);
        txn.finish_event(
            "sql.active_record",
            "User Load",
            Body::Text("SELECT * FROM users WHERE id = 5"),
            1,
            2,
        );
        // Duration 0: it starts when it is recorded, after the SQL event.
        txn.record_event("cache.read", "", Body::Text("k"), 0, 0, 0);
        txn.finish_event("process_action.action_controller", "", Body::Text(""), 0, 5);
        txn.record_event("render.action_view", "show", Body::Text("x"), 0, -3, 0);
        let j = json(&txn);
        let events = j["events"].as_array().unwrap();
        let listed: Vec<(&str, i64)> = events
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
                ("process_action.action_controller", -1),
                ("sql.active_record", 0),
                ("cache.read", 0),
                ("render.action_view", -1),
            ]
        );
        assert!(events.iter().all(|e| e.get("children").is_none()));
        assert_eq!(events[0]["gc_duration"], 5);
        // The in-process view shows the body as given; the sample sanitises it.
        assert_eq!(events[1]["body"], "SELECT * FROM users WHERE id = 5");
        assert_eq!(events[1]["count"], 1);
        assert_eq!(events[1]["group"], "active_record");
        assert_eq!(events[1]["gc_duration"], 2);
        assert_eq!(events[3]["duration"], 0.0);
        assert_eq!(j["open_events"], 0);

        txn.set_error("E", "m", None);
        txn.complete();
        let s = &samples_for("Tree#show")[0];
        let top = s["events"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["name"], "process_action.action_controller");
        let children = top[0]["children"].as_array().unwrap();
        assert_eq!(children.len(), 2);
        assert_eq!(children[0]["name"], "sql.active_record");
        assert_eq!(children[0]["body"], "SELECT * FROM users WHERE id = ?");
        assert_eq!(children[1]["name"], "cache.read");
        assert!(top[0].get("parent_index").is_none());
    }

    #[test]
    fn texts_from_bytes_are_replaced_and_cut_where_they_are_read() {
        test_support::setup();
        let txn = Transaction::start(b"t-bytes\xff", b"web", 0);
        txn.set_action(b"Bytes#\xe9");
        txn.start_event(0);
        let long_name = [b'n'; 2 * MAX_TEXT];
        txn.finish_event(
            &long_name[..],
            b"t\xc3",
            Body::Bytes(b"SELECT '\xff' FROM t"),
            1,
            0,
        );
        let j = json(&txn);
        assert_eq!(j["id"], "t-bytes\u{fffd}");
        assert_eq!(j["action"], "Bytes#\u{fffd}");
        let event = &j["events"][0];
        assert_eq!(event["name"].as_str().unwrap().len(), MAX_TEXT);
        assert_eq!(event["title"], "t\u{fffd}");
        assert_eq!(event["body"], "SELECT '\u{fffd}' FROM t");
        txn.set_error("E", "m", None);
        txn.complete();
        let s = &samples_for("Bytes#\u{fffd}")[0];
        assert_eq!(s["events"][0]["body"], "SELECT ? FROM t");
    }

    #[test]
    fn unbalanced_finish_is_ignored() {
        test_support::setup();
        let txn = Transaction::start("t-unbalanced", "web", 0);
        txn.finish_event("a.b", "", Body::Text(""), 0, 0);
        assert_eq!(json(&txn)["events"].as_array().unwrap().len(), 0);
        txn.start_event(0);
        assert_eq!(json(&txn)["open_events"], 1);
    }

    #[test]
    fn events_are_bounded() {
        test_support::setup();
        let txn = Transaction::start("t-bounded", "web", 0);
        txn.start_event(0);
        for _ in 0..MAX_EVENTS + 10 {
            txn.record_event("a.b", "", Body::Text(""), 0, 1, 0);
        }
        // The parent no longer fits: it and its children are dropped.
        txn.finish_event("parent.x", "", Body::Text(""), 0, 0);
        let j = json(&txn);
        assert_eq!(j["events"].as_array().unwrap().len(), 0);
        assert_eq!(j["dropped_events"], (MAX_EVENTS + 10 + 1) as u64);

        let txn = Transaction::start("t-bounded2", "web", 0);
        for _ in 0..MAX_EVENTS + 5 {
            txn.record_event("a.b", "", Body::Text(""), 0, 1, 0);
        }
        for _ in 0..MAX_DEPTH + 3 {
            txn.start_event(0);
        }
        for _ in 0..MAX_DEPTH + 3 {
            txn.finish_event("deep.x", "", Body::Text(""), 0, 0);
        }
        let j = json(&txn);
        assert_eq!(j["events"].as_array().unwrap().len(), MAX_EVENTS);
        assert_eq!(j["dropped_events"], (5 + MAX_DEPTH + 3) as u64);
        assert_eq!(j["open_events"], 0);
    }

    #[test]
    fn nesting_is_bounded_and_the_json_stays_parseable() {
        test_support::setup();
        let txn = Transaction::start("t-deep", "web", 0);
        txn.set_action("Deep#x");
        for _ in 0..MAX_DEPTH + 7 {
            txn.start_event(0);
        }
        for _ in 0..MAX_DEPTH + 7 {
            txn.finish_event("deep.x", "", Body::Text(""), 0, 0);
        }
        let j = json(&txn);
        assert_eq!(j["dropped_events"], 7);
        // The view: one chain, each event nested in the one before it.
        let parents: Vec<i64> = j["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["parent_index"].as_i64().unwrap())
            .collect();
        assert_eq!(parents, (-1..MAX_DEPTH as i64 - 1).collect::<Vec<_>>());
        // The sample: a tree that deep, within the JSON parsers' nesting limits.
        txn.set_error("E", "m", None);
        txn.complete();
        let s = &samples_for("Deep#x")[0];
        let mut depth = 0;
        let mut node = &s["events"];
        while let Some(first) = node.get(0) {
            depth += 1;
            node = &first["children"];
        }
        assert_eq!(depth, MAX_DEPTH);
    }

    #[test]
    fn data_bodies_render_as_json_and_sql_strings_are_sanitised_in_the_sample_only() {
        test_support::setup();
        let txn = Transaction::start("t-data-body", "web", 0);
        let mut body = Data::new_map();
        body.map_set(
            "query".into(),
            Data::String("SELECT 1 WHERE a = 'x'".into()),
        );
        txn.start_event(0);
        txn.finish_event("query.mongo", "", Body::Data(Some(&body)), 1, 0);
        txn.start_event(0);
        txn.finish_event("query.mongo", "", Body::Data(Some(&body)), 0, 0);
        let j = json(&txn);
        assert_eq!(
            j["events"][0]["body"],
            r#"{"query":"SELECT 1 WHERE a = 'x'"}"#
        );
        assert_eq!(
            j["events"][1]["body"],
            r#"{"query":"SELECT 1 WHERE a = 'x'"}"#
        );
        txn.set_action("DataBody#sample");
        txn.set_error("E", "m", None);
        txn.complete();
        let s = &samples_for("DataBody#sample")[0];
        assert_eq!(
            s["events"][0]["body"],
            r#"{"query":"SELECT ? WHERE a = ?"}"#
        );
        assert_eq!(
            s["events"][1]["body"],
            r#"{"query":"SELECT 1 WHERE a = 'x'"}"#
        );
        assert!(s["events"][0].get("count").is_none());
    }

    #[test]
    fn the_view_has_the_shape_the_packages_read_and_the_sample_keeps_its_own() {
        test_support::setup();
        let txn = Transaction::start("t-shapes", "web", 0);
        txn.set_action("Shapes#show");
        txn.record_event("sql.active_record", "", Body::Text("SELECT 1"), 1, 5, 0);
        txn.set_error(
            "RuntimeError",
            "boom",
            Some(&Data::Array(vec![
                Data::String("a.rb:1".into()),
                Data::String("b.rb:2".into()),
            ])),
        );
        let mut tags = Data::new_map();
        let long_key = "k".repeat(10_050);
        tags.map_set(long_key.clone(), Data::String("é".repeat(10_001)));
        tags.map_set("short".into(), Data::String("x".repeat(10_000)));
        tags.map_set("n".into(), Data::Integer(3));
        txn.set_sample_data("tags", Some(&tags));
        let j = json(&txn);
        assert_eq!(j["error"]["name"], "RuntimeError");
        assert_eq!(j["error"]["message"], "boom");
        assert_eq!(j["error"]["backtrace"], r#"["a.rb:1","b.rb:2"]"#);
        assert!(j["error"].get("class").is_none());
        let event = &j["events"][0];
        assert_eq!(event["body"], "SELECT 1");
        assert_eq!(event["title"], "");
        assert_eq!(event["body_format"], 1);
        assert_eq!(event["count"], 1);
        let cut = j["sample_data"]["tags"][&long_key].as_str().unwrap();
        assert_eq!(cut, format!("{}...", "é".repeat(10_000)));
        assert_eq!(
            j["sample_data"]["tags"]["short"].as_str().unwrap().len(),
            10_000
        );
        assert_eq!(j["sample_data"]["tags"]["n"], 3);
        txn.complete();
        let s = &samples_for("Shapes#show")[0];
        assert_eq!(s["error"]["class"], "RuntimeError");
        assert_eq!(s["error"]["backtrace"][1], "b.rb:2");
        assert_eq!(s["events"][0]["body"], "SELECT ?");
        assert_eq!(s["sample_data"]["tags"][&long_key], cut);
    }

    #[test]
    fn an_error_makes_a_sample_with_metrics() {
        test_support::setup();
        // Read before the start, so that a millisecond passing in between cannot shorten the queue.
        let before_start_ms = crate::apm::now_ns() / 1_000_000;
        let txn = Transaction::start("t-error", "web", 10);
        txn.set_action("Errors#show");
        txn.set_queue_start(before_start_ms - 50);
        txn.start_event(10);
        txn.finish_event("sql.active_record", "", Body::Text("SELECT 'a'"), 1, 12);
        txn.set_error(
            "RuntimeError",
            "boom",
            Some(&Data::Array(vec![Data::String("app.rb:3".into())])),
        );
        let mut params = Data::new_map();
        params.map_set("password".into(), Data::String("hunter2".into()));
        params.map_set("id".into(), Data::Integer(1));
        txn.set_sample_data("params", Some(&params));
        txn.set_metadata("path", "/errors/1");
        assert!(txn.finish(15));
        txn.complete();
        let names = metric_names("Errors#show");
        assert_eq!(
            names,
            vec![
                "transaction_count",
                "transaction_error_count",
                "transaction_duration",
                "transaction_queue_time",
                "event_duration"
            ]
        );
        let samples = samples_for("Errors#show");
        assert_eq!(samples.len(), 1);
        let s = &samples[0];
        assert_eq!(s["kind"], "transaction");
        assert_eq!(s["id"], "t-error");
        assert_eq!(s["error"]["class"], "RuntimeError");
        assert_eq!(s["error"]["backtrace"][0], "app.rb:3");
        assert_eq!(s["sample_data"]["params"]["password"], "[FILTERED]");
        assert_eq!(s["sample_data"]["params"]["id"], 1);
        assert_eq!(s["events"][0]["body"], "SELECT ?");
        assert_eq!(s["metadata"]["path"], "/errors/1");
        assert_eq!(s["gc_duration"], 5);
        assert_eq!(s["revision"], "abc123");
        assert_eq!(s["hostname"], "test-host");
        assert!(s["queue_time"].as_f64().unwrap() >= 50.0);
    }

    #[test]
    fn a_fast_transaction_without_error_counts_but_is_not_sampled() {
        test_support::setup();
        let txn = Transaction::start("t-fast", "background", 0);
        txn.set_action("Fast#job");
        assert!(!txn.finish(0));
        txn.complete();
        assert_eq!(
            metric_names("Fast#job"),
            vec!["transaction_count", "transaction_duration"]
        );
        assert!(samples_for("Fast#job").is_empty());
    }

    #[test]
    fn ignored_actions_and_namespaces_record_nothing() {
        test_support::setup();
        let txn = Transaction::start("t-ign", "web", 0);
        txn.set_action("Ignored#action");
        txn.set_error("RuntimeError", "x", None);
        assert!(!txn.finish(0));
        txn.complete();
        assert!(recorded_for("Ignored#action").is_empty());

        let txn = Transaction::start("t-ign-ns", "ignored_namespace", 0);
        txn.set_action("IgnoredNs#action");
        txn.set_error("RuntimeError", "x", None);
        assert!(!txn.finish(0));
        txn.complete();
        assert!(recorded_for("IgnoredNs#action").is_empty());
    }

    #[test]
    fn ignored_errors_count_without_the_error() {
        test_support::setup();
        let txn = Transaction::start("t-ign-err", "web", 0);
        txn.set_action("IgnoredErr#show");
        txn.set_error("IgnoredError", "x", None);
        assert!(!txn.finish(0));
        txn.complete();
        assert_eq!(
            metric_names("IgnoredErr#show"),
            vec!["transaction_count", "transaction_duration"]
        );
        assert!(samples_for("IgnoredErr#show").is_empty());
    }

    #[test]
    fn calls_after_complete_are_ignored() {
        test_support::setup();
        let txn = Transaction::start("t-after", "web", 0);
        txn.set_action("After#complete");
        txn.complete();
        txn.set_action("Changed#action");
        txn.start_event(0);
        txn.complete();
        assert!(!txn.finish(0));
        assert!(txn.duplicate("x").is_none());
        let j = json(&txn);
        assert_eq!(j["action"], "After#complete");
        assert_eq!(j["completed"], true);
        assert_eq!(
            metric_names("After#complete"),
            vec!["transaction_count", "transaction_duration"]
        );
        assert!(metric_names("Changed#action").is_empty());
    }

    #[test]
    fn duplicate_copies_everything_but_the_id() {
        test_support::setup();
        let txn = Transaction::start("t-orig", "web", 0);
        txn.set_action("Dup#action");
        txn.record_event("a.b", "", Body::Text(""), 0, 5, 0);
        let copy = txn.duplicate("t-copy").unwrap();
        copy.set_error("E", "m", None);
        let (a, b) = (json(&txn), json(&copy));
        assert_eq!(b["id"], "t-copy");
        assert_eq!(b["action"], "Dup#action");
        assert_eq!(b["events"], a["events"]);
        assert!(a["error"].is_null());
        assert_eq!(b["error"]["name"], "E");
        copy.complete();
        txn.complete();
        assert_eq!(samples_for("Dup#action").len(), 1);
    }

    #[test]
    fn environment_metadata_and_allocations_reach_the_sample() {
        test_support::setup();
        misc::set_environment_metadata("txn_test_runtime", "ruby 3.3");
        let txn = Transaction::start("t-env", "web", 0);
        txn.set_action("Env#show");
        misc::track_allocation();
        misc::track_allocation();
        txn.set_error("E", "m", None);
        txn.finish(0);
        txn.complete();
        let s = &samples_for("Env#show")[0];
        assert_eq!(s["environment_metadata"]["txn_test_runtime"], "ruby 3.3");
        assert!(s["allocation_count"].as_u64().unwrap() >= 2);
    }

    #[test]
    fn complete_without_finish_still_reports() {
        test_support::setup();
        let txn = Transaction::start("", "web", 0);
        txn.set_action("NoFinish#x");
        txn.set_error("E", "m", None);
        txn.complete();
        let s = &samples_for("NoFinish#x")[0];
        assert_eq!(s["id"].as_str().unwrap().len(), 32);
        assert!(s["duration"].as_f64().is_some());
    }

    #[test]
    fn concurrent_calls_on_one_transaction_are_safe() {
        test_support::setup();
        let txn = std::sync::Arc::new(Transaction::start("t-threads", "web", 0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let txn = std::sync::Arc::clone(&txn);
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        txn.record_event("a.b", "", Body::Text(""), 0, 1, 0);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(json(&txn)["events"].as_array().unwrap().len(), 400);
    }
}
