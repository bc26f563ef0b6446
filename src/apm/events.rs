//! What a transaction records on the app thread: the caller's bytes, copied as they are into one
//! growing buffer (event names, titles and bodies; the transaction's id, namespace and action), and
//! one fixed-size record per finished event, in the order events finish. Nothing is checked,
//! sanitised or rendered here. Text is read back ([`Recording::text`], [`Recording::events`]) where
//! it is used: on the sender thread for the sample and the metrics, in `to_json` for the view; only
//! then is invalid UTF-8 replaced and text cut at its limit, with the same result as doing it on the
//! way in (see [`KEPT_BEYOND`]).
//!
//! The buffers of a recording that is dropped go back to a small process-wide pool, from which the
//! next transaction takes them: a steady stream of transactions does not allocate per event, nor
//! hand freed memory from the sender thread to the app thread through `malloc`. The pool is only
//! ever taken with `try_lock`, so a lock held across a `fork()` cannot block the child.
//!
//! Nesting: a finished event's record follows those of the events finished inside it and counts
//! them (`descendants`), so the tree is rebuilt from the flat list without pointers.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::apm::sample::{event_group, Event, EventBody};
use crate::apm::{truncate, MAX_BODY, MAX_TEXT};
use crate::data::Data;

/// Most events kept per transaction (nested ones included); further ones are counted in the
/// sample's `dropped_events`.
pub const MAX_EVENTS: usize = 2_000;

/// Deepest nesting of started events kept; deeper ones are counted as dropped. It keeps the
/// sample JSON within the nesting limits of JSON parsers (serde_json's is 128) and the stack.
pub const MAX_DEPTH: usize = 50;

/// Body format 1: the body is SQL; it is sanitised in the sample (where it leaves the process),
/// never in `to_json`.
pub const BODY_FORMAT_SQL: i32 = 1;

/// Bytes kept beyond a text's limit. Text is cut to its limit (at a character boundary) after
/// invalid UTF-8 was replaced; the replacement of the bytes at one position depends on at most the
/// 4 bytes from there, and every input byte gives at least one output byte, so the first `limit + 4`
/// bytes decide the first `limit` bytes of the text: keeping only those changes nothing.
pub const KEPT_BEYOND: usize = 4;

/// An event body as the caller passes it.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// Text (SQL with body format 1).
    Text(&'a str),
    /// Text as the caller's bytes; invalid UTF-8 is replaced when it is read.
    Bytes(&'a [u8]),
    /// Data, rendered as JSON; with body format 1 its strings are sanitised in the sample.
    Data(Option<&'a Data>),
}

/// Where a text is in the recording's buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TextRef {
    at: u32,
    len: u32,
}

#[derive(Debug, Clone, Copy)]
enum RecordedBody {
    Text(TextRef),
    /// An index into [`Recording::data_bodies`].
    Data(u32),
}

/// One finished event.
#[derive(Debug, Clone, Copy)]
struct Record {
    name: TextRef,
    title: TextRef,
    body: RecordedBody,
    body_format: i32,
    /// The records right before this one that are nested in it (at any depth).
    descendants: u32,
    start_ns: i64,
    duration_ns: i64,
    gc_duration_ms: i64,
}

/// A started event.
#[derive(Debug, Clone, Copy)]
struct Open {
    start_ns: i64,
    gc_ms: i64,
    /// How many records there were when it started: the later ones are nested in it.
    first: usize,
    /// The lengths of `bytes` and `data_bodies` when it started: what the nested records use.
    bytes_at: usize,
    data_at: usize,
}

/// The texts of the transaction itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Id = 0,
    Namespace = 1,
    Action = 2,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Recording {
    /// The transaction's own texts ([`Field`]), each at most once.
    fields: Vec<u8>,
    field: [Option<TextRef>; 3],
    /// The events' texts.
    bytes: Vec<u8>,
    records: Vec<Record>,
    open: Vec<Open>,
    data_bodies: Vec<Data>,
    /// `start` calls beyond the depth bound, each closed by one `finish` that is then dropped.
    overflow_depth: usize,
    dropped: u64,
}

/// Appends `text` to `buffer`.
#[inline]
fn push(buffer: &mut Vec<u8>, text: &[u8]) -> TextRef {
    let at = buffer.len();
    match (u32::try_from(at), u32::try_from(at + text.len())) {
        (Ok(at), Ok(_)) => {
            buffer.extend_from_slice(text);
            TextRef {
                at,
                len: text.len() as u32,
            }
        }
        // Beyond 4 GiB of text (not reachable within the event limits): kept empty.
        _ => TextRef::default(),
    }
}

/// A text as it is reported: invalid UTF-8 replaced, cut to `limit` bytes at a character boundary.
fn read(buffer: &[u8], text: TextRef, limit: usize) -> Cow<'_, str> {
    let at = text.at as usize;
    let bytes = buffer.get(at..at + text.len as usize).unwrap_or(&[]);
    // The check alone is much cheaper than the lossy conversion when (as nearly always) it passes.
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    };
    match text {
        Cow::Borrowed(s) if s.len() <= limit => Cow::Borrowed(s),
        other => Cow::Owned(truncate(other.into_owned(), limit)),
    }
}

/// Spare buffers of dropped recordings (see the module documentation).
struct Spare {
    fields: Vec<u8>,
    bytes: Vec<u8>,
    records: Vec<Record>,
    open: Vec<Open>,
}

static SPARES: Mutex<Vec<Spare>> = Mutex::new(Vec::new());
/// Spare buffers kept; more are freed. The sender thread processes a flush period's transactions
/// at once, so this many transactions per period (100 ms) reuse buffers.
const SPARES_MAX: usize = 64;
/// Buffers larger than these (a transaction with large bodies or many events) are freed rather
/// than kept for the next one: the spares hold at most 64 × 12 KiB.
const SPARE_BYTES_MAX: usize = 8 * 1024;
const SPARE_RECORDS_MAX: usize = 64;

impl Default for Recording {
    fn default() -> Self {
        Recording::new()
    }
}

impl Recording {
    /// An empty recording, with spare buffers when there are some.
    pub fn new() -> Recording {
        let spare = SPARES.try_lock().ok().and_then(|mut spares| spares.pop());
        let Spare {
            fields,
            bytes,
            records,
            open,
        } = spare.unwrap_or_else(|| Spare {
            fields: Vec::with_capacity(64),
            bytes: Vec::with_capacity(1024),
            records: Vec::with_capacity(16),
            open: Vec::with_capacity(4),
        });
        Recording {
            fields,
            field: [None; 3],
            bytes,
            records,
            open,
            data_bodies: Vec::new(),
            overflow_depth: 0,
            dropped: 0,
        }
    }

    /// Copies text (at most `limit` bytes of it will be read back, see [`KEPT_BEYOND`]).
    #[inline]
    fn push_text(&mut self, text: &[u8], limit: usize) -> TextRef {
        let text = &text[..text.len().min(limit + KEPT_BEYOND)];
        push(&mut self.bytes, text)
    }

    /// Sets one of the transaction's own texts (its old value is removed: setting it again and
    /// again does not grow the buffer).
    pub fn set_field(&mut self, field: Field, text: &[u8]) {
        let text = &text[..text.len().min(MAX_TEXT + KEPT_BEYOND)];
        if let Some(old) = self.field[field as usize].take() {
            let (at, len) = (old.at as usize, old.len as usize);
            if text.len() == len {
                self.fields[at..at + len].copy_from_slice(text);
                self.field[field as usize] = Some(old);
                return;
            }
            self.fields.drain(at..at + len);
            for other in self.field.iter_mut().flatten() {
                if other.at > old.at {
                    other.at -= old.len;
                }
            }
        }
        self.field[field as usize] = Some(push(&mut self.fields, text));
    }

    /// One of the transaction's own texts, as reported (see [`Self::text`]); `None` when not set.
    pub fn field(&self, field: Field) -> Option<Cow<'_, str>> {
        self.field[field as usize].map(|text| read(&self.fields, text, MAX_TEXT))
    }

    /// An event's text as it was recorded (the caller's bytes, within the kept length).
    fn raw(&self, text: TextRef) -> &[u8] {
        let at = text.at as usize;
        self.bytes.get(at..at + text.len as usize).unwrap_or(&[])
    }

    /// An event's text as it is reported: invalid UTF-8 replaced, cut to `limit` bytes at a
    /// character boundary.
    fn text(&self, text: TextRef, limit: usize) -> Cow<'_, str> {
        read(&self.bytes, text, limit)
    }

    fn push_body(&mut self, body: Body<'_>) -> RecordedBody {
        match body {
            Body::Text(text) => RecordedBody::Text(self.push_text(text.as_bytes(), MAX_BODY)),
            Body::Bytes(bytes) => RecordedBody::Text(self.push_text(bytes, MAX_BODY)),
            Body::Data(None) => RecordedBody::Text(TextRef::default()),
            Body::Data(Some(data)) => {
                self.data_bodies.push(data.clone());
                RecordedBody::Data(self.data_bodies.len() as u32 - 1)
            }
        }
    }

    pub fn start(&mut self, now_ns: i64, gc_ms: i64) {
        if self.open.len() >= MAX_DEPTH || self.overflow_depth > 0 {
            self.overflow_depth += 1;
            return;
        }
        self.open.push(Open {
            start_ns: now_ns,
            gc_ms,
            first: self.records.len(),
            bytes_at: self.bytes.len(),
            data_at: self.data_bodies.len(),
        });
    }

    /// Closes the innermost open event. Returns false when none is open (unbalanced finish).
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &mut self,
        now_ns: i64,
        gc_ms: i64,
        name: &[u8],
        title: &[u8],
        body: Body<'_>,
        body_format: i32,
    ) -> bool {
        if self.overflow_depth > 0 {
            self.overflow_depth -= 1;
            self.dropped += 1;
            return true;
        }
        let Some(open) = self.open.pop() else {
            return false;
        };
        let descendants = self.records.len() - open.first;
        if self.records.len() >= MAX_EVENTS {
            // It no longer fits: it and what is nested in it are dropped, with their text.
            self.records.truncate(open.first);
            self.bytes.truncate(open.bytes_at);
            self.data_bodies.truncate(open.data_at);
            self.dropped += 1 + descendants as u64;
            return true;
        }
        let record = Record {
            name: self.push_text(name, MAX_TEXT),
            title: self.push_text(title, MAX_TEXT),
            body: self.push_body(body),
            body_format,
            descendants: descendants as u32,
            start_ns: open.start_ns,
            duration_ns: now_ns.saturating_sub(open.start_ns).max(0),
            gc_duration_ms: gc_ms.saturating_sub(open.gc_ms).max(0),
        };
        self.records.push(record);
        true
    }

    /// An already finished event: it ended at `now_ns` and lasted `duration_ns`.
    pub fn record(
        &mut self,
        now_ns: i64,
        duration_ns: i64,
        name: &[u8],
        title: &[u8],
        body: Body<'_>,
        body_format: i32,
    ) {
        if self.records.len() >= MAX_EVENTS {
            self.dropped += 1;
            return;
        }
        let duration_ns = duration_ns.max(0);
        let record = Record {
            name: self.push_text(name, MAX_TEXT),
            title: self.push_text(title, MAX_TEXT),
            body: self.push_body(body),
            body_format,
            descendants: 0,
            start_ns: now_ns.saturating_sub(duration_ns).max(0),
            duration_ns,
            gc_duration_ms: 0,
        };
        self.records.push(record);
    }

    /// The finished events that are not inside a still open one, as a tree.
    pub fn events(&self) -> Vec<Event> {
        let end = self.open.first().map_or(self.records.len(), |o| o.first);
        // Subtrees built so far, with their sizes in records.
        let mut built: Vec<(Event, usize)> = Vec::new();
        for record in &self.records[..end] {
            let mut children = Vec::new();
            let mut nested = 0;
            while nested < record.descendants as usize {
                let Some((child, size)) = built.pop() else {
                    break;
                };
                nested += size;
                children.push(child);
            }
            children.reverse();
            built.push((self.event(record, children), nested + 1));
        }
        built.into_iter().map(|(event, _)| event).collect()
    }

    /// Total duration (ns) per event group of the events [`Self::events`] returns, as
    /// [`crate::apm::sample::group_durations`] counts them over that tree, without building it.
    pub fn group_durations(&self) -> BTreeMap<Cow<'_, str>, i64> {
        let end = self.open.first().map_or(self.records.len(), |o| o.first);
        let mut totals = BTreeMap::new();
        // Events of one kind usually follow each other: the same name is read back once.
        let mut last: Option<(TextRef, Cow<'_, str>)> = None;
        for record in &self.records[..end] {
            let same = last
                .as_ref()
                .is_some_and(|(name, _)| self.raw(*name) == self.raw(record.name));
            if !same {
                let group = match self.text(record.name, MAX_TEXT) {
                    Cow::Borrowed(name) => Cow::Borrowed(event_group(name)),
                    Cow::Owned(name) => Cow::Owned(event_group(&name).to_owned()),
                };
                last = Some((record.name, group));
            }
            if let Some((_, group)) = &last {
                let total: &mut i64 = totals.entry(group.clone()).or_insert(0);
                *total = total.saturating_add(record.duration_ns);
            }
        }
        totals
    }

    fn event(&self, record: &Record, children: Vec<Event>) -> Event {
        let body = match record.body {
            RecordedBody::Text(text) => EventBody::Text(self.text(text, MAX_BODY).into_owned()),
            RecordedBody::Data(i) => match &self.data_bodies[i as usize] {
                data if record.body_format == BODY_FORMAT_SQL => EventBody::Data(data.clone()),
                data => EventBody::Text(truncate(data.to_json(), MAX_BODY)),
            },
        };
        Event {
            name: self.text(record.name, MAX_TEXT).into_owned(),
            title: self.text(record.title, MAX_TEXT).into_owned(),
            body,
            body_format: record.body_format,
            start_ns: record.start_ns,
            duration_ns: record.duration_ns,
            gc_duration_ms: record.gc_duration_ms,
            attributes: Default::default(),
            children,
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn open_count(&self) -> usize {
        self.open.len() + self.overflow_depth
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if self.bytes.capacity() > SPARE_BYTES_MAX
            || self.fields.capacity() > SPARE_BYTES_MAX
            || self.records.capacity() > SPARE_RECORDS_MAX
        {
            return;
        }
        let Ok(mut spares) = SPARES.try_lock() else {
            return;
        };
        if spares.len() < SPARES_MAX {
            let mut spare = Spare {
                fields: std::mem::take(&mut self.fields),
                bytes: std::mem::take(&mut self.bytes),
                records: std::mem::take(&mut self.records),
                open: std::mem::take(&mut self.open),
            };
            spare.fields.clear();
            spare.bytes.clear();
            spare.records.clear();
            spare.open.clear();
            spares.push(spare);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apm::sample::group_durations;

    #[test]
    fn texts_read_back_as_if_replaced_and_cut_on_the_way_in() {
        let samples: [&[u8]; 6] = [
            b"plain",
            "h\u{e9}llo w\u{f6}rld \u{1f600}\u{1f600}".as_bytes(),
            b"\xff\xfe\xfd bad \xe2\x82 cut \xf0\x9f\x98",
            b"\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80",
            b"\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9",
            b"",
        ];
        let mut recording = Recording::new();
        for sample in samples {
            for limit in 0..sample.len() + 6 {
                let expected = truncate(String::from_utf8_lossy(sample).into_owned(), limit);
                let text = recording.push_text(sample, limit);
                assert_eq!(recording.text(text, limit), expected, "{sample:?} {limit}");
            }
        }
        let long = recording.push_text(&[b'x'; 100], 10);
        assert_eq!(
            long.len as usize,
            10 + KEPT_BEYOND,
            "only what can be read back is kept"
        );
    }

    #[test]
    fn fields_are_replaced_without_growing() {
        let mut r = Recording::new();
        assert_eq!(r.field(Field::Action), None);
        r.set_field(Field::Id, b"id-1");
        r.set_field(Field::Namespace, b"web");
        for action in ["A#a", "Longer#action", "B#b", "B#c", "\u{e9}"] {
            r.set_field(Field::Action, action.as_bytes());
            assert_eq!(r.field(Field::Action).as_deref(), Some(action));
        }
        r.set_field(Field::Id, b"a much longer id than before");
        r.set_field(Field::Namespace, b"\xffjobs");
        assert_eq!(
            r.field(Field::Id).as_deref(),
            Some("a much longer id than before")
        );
        assert_eq!(r.field(Field::Namespace).as_deref(), Some("\u{fffd}jobs"));
        assert_eq!(r.field(Field::Action).as_deref(), Some("\u{e9}"));
        assert_eq!(r.fields.len(), 28 + 5 + 2, "each field once");
        r.set_field(Field::Action, &[b'a'; 5000]);
        assert_eq!(r.field(Field::Action).unwrap().len(), MAX_TEXT);
    }

    #[test]
    fn the_tree_is_rebuilt_from_the_flat_records() {
        let mut r = Recording::new();
        // a { b { c } d } e, and f still open around g.
        r.start(0, 0);
        r.start(1, 0);
        r.record(3, 1, b"c.x", b"", Body::Text(""), 0);
        r.finish(4, 0, b"b.x", b"", Body::Text(""), 0);
        r.start(5, 0);
        r.finish(6, 0, b"d.x", b"", Body::Bytes(b"D"), 0);
        r.finish(7, 0, b"a.x", b"", Body::Text(""), 0);
        r.record(9, 1, b"e.x", b"", Body::Data(None), 0);
        r.start(10, 0);
        r.record(11, 1, b"g.x", b"", Body::Text(""), 0);
        let events = r.events();
        let shape: Vec<(String, Vec<(String, usize)>)> = events
            .iter()
            .map(|e| {
                let children = e
                    .children
                    .iter()
                    .map(|c| (c.name.clone(), c.children.len()))
                    .collect();
                (e.name.clone(), children)
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("a.x".into(), vec![("b.x".into(), 1), ("d.x".into(), 0)]),
                ("e.x".into(), vec![])
            ]
        );
        assert_eq!(events[0].children[0].children[0].name, "c.x");
        assert_eq!(events[0].children[1].body, EventBody::Text("D".into()));
        assert_eq!(events[0].duration_ns, 7);
        assert_eq!(r.open_count(), 1);
        let from_tree: Vec<(String, i64)> = group_durations(&events)
            .into_iter()
            .map(|(g, d)| (g.to_string(), d))
            .collect();
        let from_records: Vec<(String, i64)> = r
            .group_durations()
            .into_iter()
            .map(|(g, d)| (g.into_owned(), d))
            .collect();
        assert_eq!(from_records, from_tree);
        assert_eq!(
            from_records,
            vec![("x".to_string(), 7 + 3 + 1 + 1 + 1)],
            "g, inside the open f, is not counted"
        );
    }

    #[test]
    fn group_durations_read_each_run_of_one_name_once_and_agree_with_the_tree() {
        let mut r = Recording::new();
        for (name, duration) in [
            (&b"sql.active_record"[..], 1),
            (b"sql.active_record", 2),
            (b"instantiation.active_record", 4),
            (b"render.\xff", 8),
            (b"render.\xfe", 16),
            (b"sql.active_record", 32),
        ] {
            r.record(100, duration, name, b"", Body::Text(""), 0);
        }
        let from_records: BTreeMap<String, i64> = r
            .group_durations()
            .into_iter()
            .map(|(g, d)| (g.into_owned(), d))
            .collect();
        let events = r.events();
        let from_tree: BTreeMap<String, i64> = group_durations(&events)
            .into_iter()
            .map(|(g, d)| (g.to_string(), d))
            .collect();
        assert_eq!(from_records, from_tree);
        assert_eq!(from_records["active_record"], 1 + 2 + 4 + 32);
        assert_eq!(from_records["\u{fffd}"], 8 + 16);
    }

    #[test]
    fn a_parent_that_no_longer_fits_is_dropped_with_its_text() {
        let mut r = Recording::new();
        r.record(1, 1, b"first.x", b"", Body::Text("kept"), 0);
        let (records, bytes) = (r.records.len(), r.bytes.len());
        r.start(2, 0);
        for _ in 1..MAX_EVENTS {
            r.record(3, 1, b"child.x", b"title", Body::Text("SELECT 1"), 1);
        }
        assert!(r.finish(4, 0, b"parent.x", b"", Body::Text(""), 0));
        assert_eq!((r.records.len(), r.bytes.len()), (records, bytes));
        assert_eq!(r.dropped(), MAX_EVENTS as u64);
        assert_eq!(r.events().len(), 1);
        assert_eq!(r.events()[0].body, EventBody::Text("kept".into()));
    }
}
