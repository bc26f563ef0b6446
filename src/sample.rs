//! What a sample and a log line are once they leave the thread that built them: typed values that
//! `apm` and the OTLP intake produce, that cross the socket and the journal as CBOR structures, and
//! that the Push API payload and the OTLP mapping read by field.
//!
//! Their serde form is the JSON the Push API document carries (docs/apm.md, "Sample JSON"): the
//! fields are declared in the alphabetical order in which that document lists them, so that
//! `serde_json` writes a sample exactly as it was written when samples were JSON text, and reads
//! that text back (protocol 2 carried samples and log lines as JSON text: see
//! [`Sample::from_json`]). `serde_cbor` writes the same structure as CBOR maps; [`FromCbor`]
//! reads it back with every bound checked while reading.
//!
//! Bounds, checked where a value is made ([`Sample::check`], [`LogLine::check`], on the sender
//! thread for samples) and again where one is read: texts at most [`MAX_TEXT_BYTES`], dynamic
//! values ([`Data`]) nested at most [`MAX_DATA_DEPTH`] levels with at most [`MAX_ITEMS`] items per
//! map or array, events nested at most [`MAX_EVENT_DEPTH`] levels and at most [`MAX_EVENTS`] per
//! sample. The nesting bounds keep a whole batch within the CBOR reader's 127 levels, so that a
//! sample that is too deep is one dropped sample, never an unreadable batch.
//!
//! Imports nothing above the bottom floor: `data` (the dynamic value) and `cbor` (the reader).

use std::collections::BTreeMap;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use crate::cbor::{self, required, FromCbor, Kind, Reader};
use crate::data::Data;

/// Longest text (a body, a message, a key) read or kept: the size of the largest record.
pub const MAX_TEXT_BYTES: usize = 1024 * 1024;
/// Levels of arrays and maps in one dynamic value (a param, an attribute, a backtrace).
pub const MAX_DATA_DEPTH: usize = 20;
/// Items of one map or array in a dynamic value, entries of a metadata map, events in a sample.
pub const MAX_ITEMS: usize = 100_000;
/// Levels of nested events (the APM's nesting bound is 50, the OTLP intake's 32).
pub const MAX_EVENT_DEPTH: usize = 50;
/// Events in one sample, all levels together (the APM keeps at most 2,000).
pub const MAX_EVENTS: usize = 10_000;

/// Longest tag value kept, in characters; a longer one is cut and ends in `...`.
pub const MAX_TAG_VALUE_CHARS: usize = 10_000;

/// Cuts every string value of a `tags` map longer than [`MAX_TAG_VALUE_CHARS`] characters to its
/// first 10,000 characters followed by `...`. Keys are kept whole; other data is left alone.
pub fn cut_tag_values(tags: &mut Data) {
    let Data::Map(map) = tags else { return };
    for value in map.values_mut() {
        if let Data::String(text) = value {
            if let Some((cut, _)) = text.char_indices().nth(MAX_TAG_VALUE_CHARS) {
                text.truncate(cut);
                text.push_str("...");
            }
        }
    }
}

/// The event group: what follows the first dot of the name (`sql.active_record` →
/// `active_record`); a name without a dot (or ending in its only dot) is its own group.
pub fn event_group(name: &str) -> &str {
    // A byte search: `split_once` costs more than the rest of the grouping on short names.
    match name.bytes().position(|b| b == b'.') {
        Some(dot) if dot + 1 < name.len() => &name[dot + 1..],
        _ => name,
    }
}

/// Nanoseconds as the fractional milliseconds a sample shows.
pub fn ns_to_ms(ns: i64) -> f64 {
    ns as f64 / 1_000_000.0
}

/// What kind of unit of work a sample is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleKind {
    Transaction,
    Span,
}

impl SampleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SampleKind::Transaction => "transaction",
            SampleKind::Span => "span",
        }
    }
}

/// One transaction or root span with its events. Field names are the JSON keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub action: Option<String>,
    pub allocation_count: Option<u64>,
    /// A root span's attributes (always there for spans, `{}` when it has none); absent on
    /// transactions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<BTreeMap<String, Data>>,
    pub dropped_events: u64,
    /// Milliseconds (fractional).
    pub duration: Option<f64>,
    /// Milliseconds since the epoch.
    pub end: Option<i64>,
    pub environment_metadata: BTreeMap<String, String>,
    pub error: Option<SampleError>,
    pub events: Vec<SampleEvent>,
    pub gc_duration: Option<i64>,
    pub hostname: String,
    pub id: String,
    pub kind: SampleKind,
    pub metadata: BTreeMap<String, String>,
    /// A root span's name (`Some(None)`: null); absent on transactions.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub name: Option<Option<String>>,
    pub namespace: String,
    /// A root span's parent (`Some(None)`: null, a trace's root); absent on transactions.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub parent_span_id: Option<Option<String>>,
    pub queue_start: Option<i64>,
    /// Milliseconds (fractional).
    pub queue_time: Option<f64>,
    pub revision: String,
    /// Filtered already (params, session data, environment, tags, custom data, …).
    pub sample_data: BTreeMap<String, Data>,
    /// The OTLP span kind of a sample from the OTLP intake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_kind: Option<String>,
    /// Milliseconds since the epoch.
    pub start: i64,
    /// A root span's trace id (32 hex digits); absent on transactions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// A field that is there, maybe as null: `Some(None)` for null (absent is `None`, by default).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A sample's error: class, message and the backtrace as given (normally an array of strings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleError {
    pub backtrace: Data,
    pub class: String,
    pub message: String,
}

/// A node of a sample's event tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleEvent {
    /// A child span's attributes (left out when empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, Data>,
    /// Sanitised already when it is SQL (`body_format` 1).
    pub body: String,
    pub body_format: i32,
    pub children: Vec<SampleEvent>,
    /// Milliseconds (fractional).
    pub duration: f64,
    /// Milliseconds.
    pub gc_duration: i64,
    pub group: String,
    pub name: String,
    /// The span id (16 hex digits) of an event from the OTLP intake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_kind: Option<String>,
    /// Milliseconds (fractional) from the sample's start.
    pub start: f64,
    pub title: String,
}

/// One `appsignal_log` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub attributes: BTreeMap<String, Data>,
    /// `plaintext`, `logfmt` or `json`: the format applied to the message.
    pub format: String,
    pub group: String,
    pub hostname: String,
    pub message: String,
    /// `debug`, `info`, `warn`, `error` or `fatal`.
    pub severity: String,
    pub severity_number: i32,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
}

/// Why a sample or log line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

/// Walks a value against the bounds and estimates its CBOR size (an upper bound: every item's
/// head counted at 9 bytes).
struct Check {
    bytes: usize,
    events: usize,
}

const HEAD: usize = 9;

impl Check {
    fn text(&mut self, s: &str) -> Result<(), Invalid> {
        if s.len() > MAX_TEXT_BYTES {
            return Err(Invalid(format!("a text of {} bytes", s.len())));
        }
        self.bytes += HEAD + s.len();
        Ok(())
    }

    fn field(&mut self, name: &str) {
        self.bytes += 1 + name.len() + HEAD;
    }

    fn data(&mut self, value: &Data, depth: usize) -> Result<(), Invalid> {
        self.bytes += HEAD;
        match value {
            Data::String(s) => self.text(s)?,
            Data::Array(items) => {
                self.nested(depth, items.len())?;
                for item in items {
                    self.data(item, depth + 1)?;
                }
            }
            Data::Map(map) => {
                self.nested(depth, map.len())?;
                for (key, item) in map {
                    self.text(key)?;
                    self.data(item, depth + 1)?;
                }
            }
            Data::Null | Data::Bool(_) | Data::Integer(_) | Data::Float(_) => {}
        }
        Ok(())
    }

    fn nested(&self, depth: usize, items: usize) -> Result<(), Invalid> {
        if depth >= MAX_DATA_DEPTH {
            return Err(Invalid(format!(
                "a value nested deeper than {MAX_DATA_DEPTH}"
            )));
        }
        if items > MAX_ITEMS {
            return Err(Invalid(format!("{items} items, at most {MAX_ITEMS}")));
        }
        Ok(())
    }

    fn data_map(&mut self, map: &BTreeMap<String, Data>) -> Result<(), Invalid> {
        self.nested(0, map.len())?;
        for (key, value) in map {
            self.text(key)?;
            self.data(value, 1)?;
        }
        Ok(())
    }

    fn text_map(&mut self, map: &BTreeMap<String, String>) -> Result<(), Invalid> {
        self.nested(0, map.len())?;
        for (key, value) in map {
            self.text(key)?;
            self.text(value)?;
        }
        Ok(())
    }

    fn event(&mut self, event: &SampleEvent, depth: usize) -> Result<(), Invalid> {
        self.events += 1;
        if self.events > MAX_EVENTS {
            return Err(Invalid(format!("more than {MAX_EVENTS} events")));
        }
        if depth > MAX_EVENT_DEPTH {
            return Err(Invalid(format!(
                "events nested deeper than {MAX_EVENT_DEPTH}"
            )));
        }
        self.bytes += 12 * (HEAD + 12);
        self.data_map(&event.attributes)?;
        for text in [&event.body, &event.group, &event.name, &event.title] {
            self.text(text)?;
        }
        for text in [&event.span_id, &event.span_kind].into_iter().flatten() {
            self.text(text)?;
        }
        for child in &event.children {
            self.event(child, depth + 1)?;
        }
        Ok(())
    }
}

impl Sample {
    /// Checks the bounds (see the module documentation); `Ok` holds an upper bound of the
    /// sample's CBOR size.
    pub fn check(&self) -> Result<usize, Invalid> {
        let mut c = Check {
            bytes: 0,
            events: 0,
        };
        c.bytes += 24 * (HEAD + 20);
        for text in [&self.hostname, &self.id, &self.namespace, &self.revision] {
            c.text(text)?;
        }
        let optional = [
            &self.action,
            &self.span_kind,
            &self.trace_id,
            self.name.as_ref().unwrap_or(&None),
            self.parent_span_id.as_ref().unwrap_or(&None),
        ];
        for text in optional.into_iter().flatten() {
            c.text(text)?;
        }
        if let Some(attributes) = &self.attributes {
            c.data_map(attributes)?;
        }
        c.text_map(&self.environment_metadata)?;
        c.text_map(&self.metadata)?;
        c.data_map(&self.sample_data)?;
        if let Some(error) = &self.error {
            c.text(&error.class)?;
            c.text(&error.message)?;
            c.field("backtrace");
            c.data(&error.backtrace, 1)?;
        }
        for event in &self.events {
            c.event(event, 1)?;
        }
        Ok(c.bytes)
    }

    /// A sample from its JSON text (how protocol 2 carried it), checked.
    pub fn from_json(text: &str) -> Result<Sample, Invalid> {
        let sample: Sample = from_json_text(text)?;
        sample.check()?;
        Ok(sample)
    }

    /// The sample's JSON text (how protocol 2 carries it).
    pub fn to_json(&self) -> String {
        // Writing into a `String` cannot fail: every key is text and floats are written as null
        // when they are not finite.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl LogLine {
    /// Checks the bounds; `Ok` holds an upper bound of the line's CBOR size.
    pub fn check(&self) -> Result<usize, Invalid> {
        let mut c = Check {
            bytes: 8 * (HEAD + 16),
            events: 0,
        };
        for text in [
            &self.format,
            &self.group,
            &self.hostname,
            &self.message,
            &self.severity,
        ] {
            c.text(text)?;
        }
        c.data_map(&self.attributes)?;
        Ok(c.bytes)
    }

    /// A log line from its JSON text (how protocol 2 carried it), checked.
    pub fn from_json(text: &str) -> Result<LogLine, Invalid> {
        let line: LogLine = from_json_text(text)?;
        line.check()?;
        Ok(line)
    }

    /// The line's JSON text (how protocol 2 carries it).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A sample or line from JSON text through the CBOR reader, so that both protocols' forms pass
/// the same checks (and no JSON decoder is generated for these types: the library's size).
fn from_json_text<T: FromCbor>(text: &str) -> Result<T, Invalid> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Invalid(format!("not JSON: {e}")))?;
    let bytes = serde_cbor::to_vec(&value).map_err(|e| Invalid(e.to_string()))?;
    cbor::from_slice(&bytes).map_err(|e| Invalid(e.to_string()))
}

/// A JSON value as dynamic data: integers that fit in 64 signed bits stay integers, other
/// numbers become floats; nesting beyond [`MAX_DATA_DEPTH`] is refused by [`Sample::check`].
pub fn data_from_json(value: serde_json::Value) -> Data {
    use serde_json::Value;
    match value {
        Value::Null => Data::Null,
        Value::Bool(b) => Data::Bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Data::Integer(i),
            None => Data::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Data::String(s),
        Value::Array(items) => Data::Array(items.into_iter().map(data_from_json).collect()),
        // Inserted one by one: `collect` into a map would add a copy of the sort algorithm.
        Value::Object(map) => {
            let mut out = BTreeMap::new();
            for (k, v) in map {
                out.insert(k, data_from_json(v));
            }
            Data::Map(out)
        }
    }
}

// Dynamic data as serde sees it: the JSON it has always rendered as (a float that is not finite
// is null), and the same structure in CBOR.
impl Serialize for Data {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Data::Null => s.serialize_unit(),
            Data::Bool(b) => s.serialize_bool(*b),
            Data::Integer(i) => s.serialize_i64(*i),
            Data::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Data::Float(_) => s.serialize_unit(),
            Data::String(text) => s.serialize_str(text),
            Data::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Data::Map(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (key, value) in map {
                    m.serialize_entry(key, value)?;
                }
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Data, D::Error> {
        d.deserialize_any(DataVisitor)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = Data;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Data, E> {
        Ok(Data::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Data, E> {
        Ok(Data::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Data, E> {
        Ok(Data::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Data, E> {
        Ok(Data::Integer(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Data, E> {
        Ok(i64::try_from(v).map_or(Data::Float(v as f64), Data::Integer))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Data, E> {
        Ok(Data::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Data, E> {
        Ok(Data::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Data, E> {
        Ok(Data::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Data, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Data::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
        let mut out = BTreeMap::new();
        while let Some((key, value)) = map.next_entry::<String, Data>()? {
            out.insert(key, value);
        }
        Ok(Data::Map(out))
    }
}

// The CBOR readers: every bound of the module documentation is checked while reading.

fn text(r: &mut Reader<'_>) -> cbor::Result<String> {
    r.string_at_most(MAX_TEXT_BYTES)
}

fn optional_text(r: &mut Reader<'_>) -> cbor::Result<Option<String>> {
    r.option(text)
}

/// A dynamic value at `depth` (1 for a value directly in a field or a map's entry).
fn data(r: &mut Reader<'_>, depth: usize) -> cbor::Result<Data> {
    match r.next_kind() {
        Some(Kind::Unsigned | Kind::Negative) => r.i64().map(Data::Integer),
        Some(Kind::Text) => text(r).map(Data::String),
        Some(Kind::Array) => {
            if depth >= MAX_DATA_DEPTH {
                return Err(r.error(format!("a value nested deeper than {MAX_DATA_DEPTH}")));
            }
            r.vec_at_most(MAX_ITEMS, |r| data(r, depth + 1))
                .map(Data::Array)
        }
        Some(Kind::Map) => {
            if depth >= MAX_DATA_DEPTH {
                return Err(r.error(format!("a value nested deeper than {MAX_DATA_DEPTH}")));
            }
            data_map_at(r, depth).map(Data::Map)
        }
        Some(Kind::Simple) => {
            if r.null() {
                return Ok(Data::Null);
            }
            if let Some(b) = r.boolean() {
                return Ok(Data::Bool(b));
            }
            r.f64().map(Data::Float)
        }
        _ => Err(r.error("expected a value")),
    }
}

fn data_map_at(r: &mut Reader<'_>, depth: usize) -> cbor::Result<BTreeMap<String, Data>> {
    let mut map = BTreeMap::new();
    r.fields(|r, key| {
        if map.len() >= MAX_ITEMS {
            return Err(r.error(format!("more than {MAX_ITEMS} entries")));
        }
        if key.len() > MAX_TEXT_BYTES {
            return Err(r.error("a key too long"));
        }
        let value = data(r, depth + 1)?;
        map.insert(key.to_owned(), value);
        Ok(true)
    })?;
    Ok(map)
}

fn data_map(r: &mut Reader<'_>) -> cbor::Result<BTreeMap<String, Data>> {
    data_map_at(r, 0)
}

fn text_map(r: &mut Reader<'_>) -> cbor::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    r.fields(|r, key| {
        if map.len() >= MAX_ITEMS {
            return Err(r.error(format!("more than {MAX_ITEMS} entries")));
        }
        let value = text(r)?;
        map.insert(key.to_owned(), value);
        Ok(true)
    })?;
    Ok(map)
}

impl FromCbor for Data {
    fn read(r: &mut Reader<'_>) -> cbor::Result<Self> {
        data(r, 1)
    }
}

impl FromCbor for SampleKind {
    fn read(r: &mut Reader<'_>) -> cbor::Result<Self> {
        match r.str()? {
            "transaction" => Ok(SampleKind::Transaction),
            "span" => Ok(SampleKind::Span),
            other => Err(r.error(format!("unknown sample kind {other:?}"))),
        }
    }
}

impl FromCbor for SampleError {
    fn read(r: &mut Reader<'_>) -> cbor::Result<Self> {
        let (mut backtrace, mut class, mut message) = (None, None, None);
        r.fields(|r, key| match key {
            "backtrace" => r.field(&mut backtrace, key, Data::read),
            "class" => r.field(&mut class, key, text),
            "message" => r.field(&mut message, key, text),
            _ => Ok(false),
        })?;
        Ok(SampleError {
            backtrace: required(r, backtrace, "SampleError", "backtrace")?,
            class: required(r, class, "SampleError", "class")?,
            message: required(r, message, "SampleError", "message")?,
        })
    }
}

/// Events at `depth` (1 for a sample's own), counting into `count`.
fn events(r: &mut Reader<'_>, depth: usize, count: &mut usize) -> cbor::Result<Vec<SampleEvent>> {
    if depth > MAX_EVENT_DEPTH {
        return Err(r.error(format!("events nested deeper than {MAX_EVENT_DEPTH}")));
    }
    r.vec_at_most(MAX_EVENTS, |r| {
        *count += 1;
        if *count > MAX_EVENTS {
            return Err(r.error(format!("more than {MAX_EVENTS} events")));
        }
        event(r, depth, count)
    })
}

/// Fields of one kind, read into slots by name: one reading site per kind, not per field (the
/// readers below are most of this module's code in the library otherwise).
struct Slots<T, const N: usize> {
    names: [&'static str; N],
    values: [Option<T>; N],
}

impl<T, const N: usize> Slots<T, N> {
    fn new(names: [&'static str; N]) -> Self {
        Slots {
            names,
            values: std::array::from_fn(|_| None),
        }
    }

    /// Reads `key`'s value with `read` when it is one of these fields.
    fn read(
        &mut self,
        r: &mut Reader<'_>,
        key: &str,
        read: impl FnOnce(&mut Reader<'_>) -> cbor::Result<T>,
    ) -> Option<cbor::Result<bool>> {
        let i = self.names.iter().position(|name| *name == key)?;
        Some(r.field(&mut self.values[i], key, read))
    }

    fn take(&mut self, i: usize) -> Option<T> {
        self.values[i].take()
    }

    fn required(&mut self, r: &Reader<'_>, what: &str, i: usize) -> cbor::Result<T> {
        required(r, self.values[i].take(), what, self.names[i])
    }
}

fn event(r: &mut Reader<'_>, depth: usize, count: &mut usize) -> cbor::Result<SampleEvent> {
    let mut texts = Slots::new(["body", "group", "name", "title"]);
    let mut optional_texts = Slots::new(["span_id", "span_kind"]);
    let mut floats = Slots::new(["duration", "start"]);
    let (mut attributes, mut body_format, mut children, mut gc_duration) = (None, None, None, None);
    r.fields(|r, key| {
        if let Some(done) = texts.read(r, key, text) {
            return done;
        }
        if let Some(done) = optional_texts.read(r, key, optional_text) {
            return done;
        }
        if let Some(done) = floats.read(r, key, |r| r.f64()) {
            return done;
        }
        match key {
            "attributes" => r.field(&mut attributes, key, data_map),
            "body_format" => r.field(&mut body_format, key, Reader::i32),
            "children" => r.field(&mut children, key, |r| events(r, depth + 1, count)),
            "gc_duration" => r.field(&mut gc_duration, key, Reader::i64),
            _ => Ok(false),
        }
    })?;
    const WHAT: &str = "SampleEvent";
    Ok(SampleEvent {
        attributes: attributes.unwrap_or_default(),
        body: texts.required(r, WHAT, 0)?,
        body_format: required(r, body_format, WHAT, "body_format")?,
        children: required(r, children, WHAT, "children")?,
        duration: floats.required(r, WHAT, 0)?,
        gc_duration: required(r, gc_duration, WHAT, "gc_duration")?,
        group: texts.required(r, WHAT, 1)?,
        name: texts.required(r, WHAT, 2)?,
        span_id: optional_texts.take(0).flatten(),
        span_kind: optional_texts.take(1).flatten(),
        start: floats.required(r, WHAT, 1)?,
        title: texts.required(r, WHAT, 3)?,
    })
}

impl FromCbor for Sample {
    fn read(r: &mut Reader<'_>) -> cbor::Result<Self> {
        let mut texts = Slots::new(["hostname", "id", "namespace", "revision"]);
        let mut optional_texts =
            Slots::new(["action", "name", "parent_span_id", "span_kind", "trace_id"]);
        let mut integers = Slots::new(["end", "gc_duration", "queue_start"]);
        let mut floats = Slots::new(["duration", "queue_time"]);
        let mut text_maps = Slots::new(["environment_metadata", "metadata"]);
        let mut data_maps = Slots::new(["attributes", "sample_data"]);
        let (mut allocation_count, mut dropped_events, mut error) = (None, None, None);
        let (mut events_, mut kind, mut start) = (None, None, None);
        let mut count = 0;
        r.fields(|r, key| {
            if let Some(done) = texts.read(r, key, text) {
                return done;
            }
            if let Some(done) = optional_texts.read(r, key, optional_text) {
                return done;
            }
            if let Some(done) = integers.read(r, key, |r| r.option(Reader::i64)) {
                return done;
            }
            if let Some(done) = floats.read(r, key, |r| r.option(Reader::f64)) {
                return done;
            }
            if let Some(done) = text_maps.read(r, key, text_map) {
                return done;
            }
            if let Some(done) = data_maps.read(r, key, |r| r.option(data_map)) {
                return done;
            }
            match key {
                "allocation_count" => {
                    r.field(&mut allocation_count, key, |r| r.option(Reader::u64))
                }
                "dropped_events" => r.field(&mut dropped_events, key, Reader::u64),
                "error" => r.field(&mut error, key, |r| r.option(SampleError::read)),
                "events" => r.field(&mut events_, key, |r| events(r, 1, &mut count)),
                "kind" => r.field(&mut kind, key, SampleKind::read),
                "start" => r.field(&mut start, key, Reader::i64),
                _ => Ok(false),
            }
        })?;
        const WHAT: &str = "Sample";
        let sample_data = data_maps.required(r, WHAT, 1)?;
        Ok(Sample {
            action: optional_texts.take(0).flatten(),
            allocation_count: allocation_count.flatten(),
            attributes: data_maps.take(0).flatten(),
            dropped_events: required(r, dropped_events, WHAT, "dropped_events")?,
            duration: floats.take(0).flatten(),
            end: integers.take(0).flatten(),
            environment_metadata: text_maps.required(r, WHAT, 0)?,
            error: error.flatten(),
            events: required(r, events_, WHAT, "events")?,
            gc_duration: integers.take(1).flatten(),
            hostname: texts.required(r, WHAT, 0)?,
            id: texts.required(r, WHAT, 1)?,
            kind: required(r, kind, WHAT, "kind")?,
            metadata: text_maps.required(r, WHAT, 1)?,
            // Present as null (`Some(None)`) or absent (`None`): both are kept.
            name: optional_texts.take(1),
            namespace: texts.required(r, WHAT, 2)?,
            parent_span_id: optional_texts.take(2),
            queue_start: integers.take(2).flatten(),
            queue_time: floats.take(1).flatten(),
            revision: texts.required(r, WHAT, 3)?,
            // A null is refused: the field is always a map.
            sample_data: sample_data.ok_or_else(|| r.error("Sample: sample_data is null"))?,
            span_kind: optional_texts.take(3).flatten(),
            start: required(r, start, WHAT, "start")?,
            trace_id: optional_texts.take(4).flatten(),
        })
    }
}

impl FromCbor for LogLine {
    fn read(r: &mut Reader<'_>) -> cbor::Result<Self> {
        let (mut attributes, mut format, mut group, mut hostname) = (None, None, None, None);
        let (mut message, mut severity, mut severity_number, mut timestamp) =
            (None, None, None, None);
        r.fields(|r, key| match key {
            "attributes" => r.field(&mut attributes, key, data_map),
            "format" => r.field(&mut format, key, text),
            "group" => r.field(&mut group, key, text),
            "hostname" => r.field(&mut hostname, key, text),
            "message" => r.field(&mut message, key, text),
            "severity" => r.field(&mut severity, key, text),
            "severity_number" => r.field(&mut severity_number, key, Reader::i32),
            "timestamp" => r.field(&mut timestamp, key, Reader::i64),
            _ => Ok(false),
        })?;
        Ok(LogLine {
            attributes: required(r, attributes, "LogLine", "attributes")?,
            format: required(r, format, "LogLine", "format")?,
            group: required(r, group, "LogLine", "group")?,
            hostname: required(r, hostname, "LogLine", "hostname")?,
            message: required(r, message, "LogLine", "message")?,
            severity: required(r, severity, "LogLine", "severity")?,
            severity_number: required(r, severity_number, "LogLine", "severity_number")?,
            timestamp: required(r, timestamp, "LogLine", "timestamp")?,
        })
    }
}

/// One entry of a batch's `samples` or `logs`: a map (protocol 3) or the JSON text protocol 2
/// wrote. `Ok(None)`: the entry is well-formed CBOR but not a valid sample or line (dropped and
/// counted by the caller); structural damage is an error, as everywhere.
pub fn read_entry<T: FromCbor>(
    r: &mut Reader<'_>,
    from_json: fn(&str) -> Result<T, Invalid>,
) -> cbor::Result<Option<T>> {
    let read = |r: &mut Reader<'_>| -> cbor::Result<T> {
        if r.next_kind() == Some(Kind::Text) {
            let text = r.str()?;
            from_json(text).map_err(|e| r.error(e.0))
        } else {
            T::read(r)
        }
    };
    Ok(r.entry(read)?.ok())
}

/// Reads a batch's list of samples or log lines: the valid ones, and how many were dropped.
pub fn read_entries<T: FromCbor>(
    r: &mut Reader<'_>,
    from_json: fn(&str) -> Result<T, Invalid>,
) -> cbor::Result<(Vec<T>, u64)> {
    let mut dropped = 0u64;
    let entries = r.vec(|r| read_entry(r, from_json))?;
    let kept = entries
        .into_iter()
        .filter_map(|e| {
            if e.is_none() {
                dropped += 1;
            }
            e
        })
        .collect();
    Ok((kept, dropped))
}

/// A transaction sample whose id has `id_bytes` bytes (for tests of size bounds).
#[cfg(test)]
pub(crate) fn test_sample(id_bytes: usize) -> Sample {
    Sample {
        action: Some("A#b".into()),
        allocation_count: None,
        attributes: None,
        dropped_events: 0,
        duration: Some(1.5),
        end: Some(2),
        environment_metadata: BTreeMap::new(),
        error: None,
        events: Vec::new(),
        gc_duration: None,
        hostname: "h".into(),
        id: "i".repeat(id_bytes),
        kind: SampleKind::Transaction,
        metadata: BTreeMap::new(),
        name: None,
        namespace: "web".into(),
        parent_span_id: None,
        queue_start: None,
        queue_time: None,
        revision: String::new(),
        sample_data: BTreeMap::new(),
        span_kind: None,
        start: 1,
        trace_id: None,
    }
}

/// A plaintext info line (for tests).
#[cfg(test)]
pub(crate) fn test_line(message: &str) -> LogLine {
    LogLine {
        attributes: BTreeMap::new(),
        format: "plaintext".into(),
        group: "g".into(),
        hostname: "h".into(),
        message: message.into(),
        severity: "info".into(),
        severity_number: 3,
        timestamp: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{self, Batch, Handshake};

    #[test]
    fn a_sample_reads_back_from_its_json_text_and_its_cbor() {
        let mut sample = test_sample(4);
        sample.kind = SampleKind::Span;
        sample.parent_span_id = Some(None);
        sample.name = Some(Some("GET /".into()));
        sample.attributes = Some(BTreeMap::new());
        sample.sample_data.insert(
            "params".into(),
            Data::Map(BTreeMap::from([("a".into(), Data::Float(1.0))])),
        );
        let text = sample.to_json();
        assert!(text.contains(r#""parent_span_id":null"#), "{text}");
        assert!(!text.contains("trace_id"), "{text}");
        assert_eq!(Sample::from_json(&text).unwrap(), sample);
        let bytes = serde_cbor::to_vec(&sample).unwrap();
        assert_eq!(cbor::from_slice::<Sample>(&bytes).unwrap(), sample);
        let line = test_line("m");
        assert_eq!(LogLine::from_json(&line.to_json()).unwrap(), line);
        assert!(Sample::from_json(r#"{"kind":"other"}"#).is_err());
    }

    #[test]
    fn the_json_is_what_a_parsed_and_rewritten_document_was() {
        // The payload used to parse each sample's text into a `serde_json::Value` (keys sorted)
        // and write that: the typed sample must write the same bytes.
        let event = SampleEvent {
            attributes: BTreeMap::from([("db.system.name".into(), Data::String("pg".into()))]),
            body: "SELECT ?".into(),
            body_format: 1,
            children: vec![],
            duration: 1.25,
            gc_duration: 0,
            group: "active_record".into(),
            name: "sql.active_record".into(),
            span_id: Some("00f067aa0ba902b7".into()),
            span_kind: Some("client".into()),
            start: 0.5,
            title: "Load".into(),
        };
        let mut span = test_sample(5);
        span.kind = SampleKind::Span;
        span.attributes = Some(BTreeMap::from([("n".into(), Data::Float(f64::NAN))]));
        span.name = Some(None);
        span.parent_span_id = Some(Some("b7ad6b7169203331".into()));
        span.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        span.span_kind = Some("server".into());
        span.events = vec![SampleEvent {
            children: vec![event.clone()],
            attributes: BTreeMap::new(),
            span_id: None,
            span_kind: None,
            ..event
        }];
        span.error = Some(SampleError {
            backtrace: Data::Array(vec![Data::String("a.rb:1".into())]),
            class: "E".into(),
            message: "m".into(),
        });
        span.queue_time = Some(3.0);
        span.metadata.insert("path".into(), "/".into());
        for sample in [test_sample(2), span] {
            let typed = serde_json::to_string(&sample).unwrap();
            let value: serde_json::Value = serde_json::from_str(&typed).unwrap();
            assert_eq!(typed, serde_json::to_string(&value).unwrap());
        }
        let line = test_line("m");
        let typed = serde_json::to_string(&line).unwrap();
        let value: serde_json::Value = serde_json::from_str(&typed).unwrap();
        assert_eq!(typed, serde_json::to_string(&value).unwrap());
    }

    #[test]
    fn the_handshake_hands_over_to_newer_refuses_older_and_speaks_the_common_protocol() {
        let ours = (2, 3);
        assert_eq!(
            protocol::handshake((2, 3), ours, false),
            Handshake::Welcome(3)
        );
        // A client of protocol 2 (no `protocol` field: newest = oldest).
        assert_eq!(
            protocol::handshake((2, 2), ours, false),
            Handshake::Welcome(2)
        );
        assert_eq!(protocol::handshake((2, 2), ours, true), Handshake::HandOver);
        assert_eq!(
            protocol::handshake((2, 4), ours, false),
            Handshake::HandOver
        );
        assert_eq!(protocol::handshake((1, 1), ours, true), Handshake::Refuse);
        // What a leader of protocol 2 decides about us: it reads only `protocol_version` (2).
        assert_eq!(
            protocol::handshake((2, 2), (2, 2), true),
            Handshake::HandOver
        );
        assert_eq!(
            protocol::handshake((2, 2), (2, 2), false),
            Handshake::Welcome(2)
        );
    }

    #[test]
    fn a_hello_whose_config_cannot_be_read_still_gives_its_versions() {
        #[derive(Serialize)]
        struct Newer {
            protocol_version: u32,
            protocol: u32,
            library_version: &'static str,
            client_id: u64,
            pid: u32,
            config: (u8, u8),
        }
        #[derive(Serialize)]
        enum Message {
            Hello(Newer),
        }
        let body = serde_cbor::to_vec(&Message::Hello(Newer {
            protocol_version: 3,
            protocol: 4,
            library_version: "9.0.0",
            client_id: 1,
            pid: 7,
            config: (1, 2),
        }))
        .unwrap();
        let protocol::ClientMessage::HelloVersions(v) = cbor::from_slice(&body).unwrap() else {
            panic!("not read as versions only")
        };
        assert_eq!((v.protocol_version, v.protocol, v.pid), (3, Some(4), 7));
        assert_eq!(
            protocol::handshake((3, 4), (2, 3), true),
            Handshake::HandOver
        );
        // Damage to the structure still fails the frame.
        assert!(cbor::from_slice::<protocol::ClientMessage>(&body[..body.len() - 1]).is_err());
    }

    #[test]
    fn a_batch_takes_json_text_and_structures_and_drops_and_counts_invalid_entries() {
        #[derive(Serialize)]
        struct Mixed {
            client_id: u64,
            seq: u64,
            created_ms: u64,
            counters: Vec<u8>,
            gauges: Vec<u8>,
            distributions: Vec<u8>,
            dropped_updates: u64,
            samples: (String, Sample, String, u64),
            logs: (String, LogLine, String),
            dropped_samples: u64,
        }
        let sample = test_sample(3);
        let line = test_line("l");
        let body = serde_cbor::to_vec(&Mixed {
            client_id: 1,
            seq: 2,
            created_ms: 3,
            counters: vec![],
            gauges: vec![],
            distributions: vec![],
            dropped_updates: 0,
            samples: (sample.to_json(), sample.clone(), "{not json".into(), 7),
            logs: (line.to_json(), line.clone(), r#"{"a":1}"#.into()),
            dropped_samples: 1,
        })
        .unwrap();
        let batch: Batch = cbor::from_slice(&body).unwrap();
        assert_eq!(batch.samples, vec![sample.clone(), sample]);
        assert_eq!(batch.logs, vec![line.clone(), line]);
        assert_eq!((batch.dropped_samples, batch.dropped_logs), (3, 1));
        // Structural damage still fails the whole body.
        assert!(cbor::from_slice::<Batch>(&body[..body.len() - 3]).is_err());
    }

    #[test]
    fn a_batch_written_in_the_v2_dialect_reads_back_typed() {
        let batch = Batch {
            client_id: 5,
            seq: 9,
            samples: vec![test_sample(2)],
            logs: vec![test_line("x")],
            ..Batch::default()
        };
        let frame = protocol::encode_batch(&batch, 2).unwrap();
        let (message, _) = protocol::decode::<protocol::ClientMessage>(&frame)
            .unwrap()
            .unwrap();
        let protocol::ClientMessage::Batch(read) = message else {
            panic!("not a batch")
        };
        assert_eq!(read.samples, batch.samples);
        assert_eq!(read.logs, batch.logs);
        let v2 = protocol::encode_batch_v2_bare(&batch);
        assert!(v2.windows(8).any(|w| w == b"{\"action"));
    }

    #[test]
    fn too_deep_values_are_refused_where_made_and_where_read() {
        let mut deep = Data::Null;
        for _ in 0..MAX_DATA_DEPTH + 1 {
            deep = Data::Array(vec![deep]);
        }
        let mut sample = test_sample(1);
        sample.sample_data.insert("params".into(), deep);
        assert!(sample.check().is_err());
        let bytes = serde_cbor::to_vec(&sample).unwrap();
        assert!(cbor::from_slice::<Sample>(&bytes).is_err());
    }
}
