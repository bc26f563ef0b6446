//! The value type behind `appsignal_data_t`: maps, arrays and scalars that integrations build
//! (metric tags, sample data, backtraces) and that serialise to JSON.
//!
//! Maps keep their keys sorted (a `BTreeMap`), so two maps with the same entries are equal and
//! render the same JSON whatever order the keys were set in. Setting a key twice keeps the last value.
//!
//! [`DataBuf`] is what a handle built through the C interface holds: the same values, encoded in
//! one contiguous buffer (a small one inside the handle itself), so that a tags map built and freed
//! per call costs one allocation, and a metric key is hashed and compared as bytes. It becomes a
//! [`Data`] only where the APM code needs one (sample data, backtraces, bodies) and on the sender
//! thread (tag rendering).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// A data value as built through the C interface.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Null,
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
    Array(Vec<Data>),
    Map(BTreeMap<String, Data>),
}

impl Data {
    pub fn new_map() -> Self {
        Data::Map(BTreeMap::new())
    }

    pub fn new_array() -> Self {
        Data::Array(Vec::new())
    }

    /// Sets `key` in a map. Returns false (and changes nothing) when `self` is not a map.
    pub fn map_set(&mut self, key: String, value: Data) -> bool {
        match self {
            Data::Map(map) => {
                map.insert(key, value);
                true
            }
            _ => false,
        }
    }

    /// Appends to an array. Returns false (and changes nothing) when `self` is not an array.
    pub fn array_append(&mut self, value: Data) -> bool {
        match self {
            Data::Array(items) => {
                items.push(value);
                true
            }
            _ => false,
        }
    }

    /// JSON rendering. Non-finite floats have no JSON form and become `null`.
    pub fn to_json_value(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Data::Null => Value::Null,
            Data::Bool(b) => Value::Bool(*b),
            Data::Integer(i) => Value::from(*i),
            Data::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Data::String(s) => Value::String(s.clone()),
            Data::Array(items) => Value::Array(items.iter().map(Data::to_json_value).collect()),
            Data::Map(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), v.to_json_value()))
                    .collect(),
            ),
        }
    }

    pub fn to_json(&self) -> String {
        self.to_json_value().to_string()
    }

    /// A scalar rendered as a tag value: strings as they are, numbers and booleans in their
    /// JSON form. Maps and arrays are not valid tag values and give `None`.
    pub fn tag_value(&self) -> Option<String> {
        match self {
            Data::String(s) => Some(s.clone()),
            Data::Integer(i) => Some(i.to_string()),
            Data::Float(f) => Some(f.to_string()),
            Data::Bool(b) => Some(b.to_string()),
            Data::Null => Some(String::new()),
            Data::Array(_) | Data::Map(_) => None,
        }
    }
}

// The flat encoding: a value is a tag byte and its payload; integers and floats are 8 bytes
// (little-endian), strings a u32 length and the bytes (valid UTF-8), arrays and maps a u32 length
// and their body. An array's body is its values; a map's body is its entries, each a u32 key length,
// the key (valid UTF-8) and the value, sorted by key bytes with no key twice.
const T_NULL: u8 = 0;
const T_FALSE: u8 = 1;
const T_TRUE: u8 = 2;
const T_INT: u8 = 3;
const T_FLOAT: u8 = 4;
const T_STR: u8 = 5;
const T_ARRAY: u8 = 6;
const T_MAP: u8 = 7;

/// Bytes kept inside the handle before the buffer moves to the heap: a map of a few short tags fits.
const INLINE: usize = 96;
/// A map with more entries than this is kept as a [`Data`] map instead: inserting into the sorted
/// flat buffer scans it, which is cheap for tags but quadratic for large maps.
const FLAT_MAX_ENTRIES: usize = 32;

/// A byte buffer that lives inside its owner while it is small.
enum SmallBuf {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Vec<u8>),
}

impl SmallBuf {
    fn new() -> Self {
        SmallBuf::Inline {
            len: 0,
            bytes: [0; INLINE],
        }
    }

    #[inline]
    fn as_slice(&self) -> &[u8] {
        match self {
            SmallBuf::Inline { len, bytes } => &bytes[..usize::from(*len)],
            SmallBuf::Heap(v) => v,
        }
    }

    /// Replaces `range` with `parts` (concatenated).
    #[inline]
    fn splice(&mut self, range: Range<usize>, parts: &[&[u8]]) {
        if let SmallBuf::Inline { len, bytes } = self {
            let at = usize::from(*len);
            let added: usize = parts.iter().map(|p| p.len()).sum();
            if range == (at..at) && at + added <= INLINE {
                // Appending in place: what building a small map in key order does.
                let mut at = at;
                for p in parts {
                    bytes[at..at + p.len()].copy_from_slice(p);
                    at += p.len();
                }
                *len = at as u8;
                return;
            }
        }
        self.splice_slow(range, parts)
    }

    fn splice_slow(&mut self, range: Range<usize>, parts: &[&[u8]]) {
        let added: usize = parts.iter().map(|p| p.len()).sum();
        let new_len = self.as_slice().len() - range.len() + added;
        match self {
            SmallBuf::Inline { len, bytes } if new_len <= INLINE => {
                let old_len = usize::from(*len);
                bytes.copy_within(range.end..old_len, range.start + added);
                let mut at = range.start;
                for p in parts {
                    bytes[at..at + p.len()].copy_from_slice(p);
                    at += p.len();
                }
                *len = new_len as u8;
            }
            _ => {
                if let SmallBuf::Inline { len, bytes } = self {
                    let mut v = Vec::with_capacity(new_len.max(2 * INLINE));
                    v.extend_from_slice(&bytes[..usize::from(*len)]);
                    *self = SmallBuf::Heap(v);
                }
                if let SmallBuf::Heap(v) = self {
                    let tail = v.split_off(range.end);
                    v.truncate(range.start);
                    for p in parts {
                        v.extend_from_slice(p);
                    }
                    v.extend_from_slice(&tail);
                }
            }
        }
    }
}

fn read_u32(bytes: &[u8], at: usize) -> usize {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word) as usize
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Where the value starting at `at` ends.
fn value_end(bytes: &[u8], at: usize) -> usize {
    match bytes[at] {
        T_INT | T_FLOAT => at + 9,
        T_STR | T_ARRAY | T_MAP => at + 5 + read_u32(bytes, at + 1),
        _ => at + 1,
    }
}

/// The map entries of a body: (key, value span) in order.
fn map_entries(body: &[u8]) -> impl Iterator<Item = (&[u8], Range<usize>)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= body.len() {
            return None;
        }
        let key_len = read_u32(body, at);
        let key = &body[at + 4..at + 4 + key_len];
        let value = at + 4 + key_len;
        let end = value_end(body, value);
        at = end;
        Some((key, value..end))
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn decode_value(bytes: &[u8], at: usize) -> Data {
    match bytes[at] {
        T_FALSE => Data::Bool(false),
        T_TRUE => Data::Bool(true),
        T_INT => Data::Integer(read_u64(bytes, at + 1) as i64),
        T_FLOAT => Data::Float(f64::from_bits(read_u64(bytes, at + 1))),
        T_STR => Data::String(text(&bytes[at + 5..value_end(bytes, at)])),
        T_ARRAY => decode_body(false, &bytes[at + 5..value_end(bytes, at)]),
        T_MAP => decode_body(true, &bytes[at + 5..value_end(bytes, at)]),
        _ => Data::Null,
    }
}

fn decode_body(is_map: bool, body: &[u8]) -> Data {
    if is_map {
        Data::Map(
            map_entries(body)
                .map(|(k, v)| (text(k), decode_value(body, v.start)))
                .collect(),
        )
    } else {
        let mut items = Vec::new();
        let mut at = 0;
        while at < body.len() {
            items.push(decode_value(body, at));
            at = value_end(body, at);
        }
        Data::Array(items)
    }
}

/// Appends `data`'s flat encoding (tag and payload) to `out`.
fn encode_value(data: &Data, out: &mut Vec<u8>) {
    let nested = |out: &mut Vec<u8>, tag: u8, fill: &dyn Fn(&mut Vec<u8>)| {
        out.push(tag);
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        fill(out);
        let len = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    };
    match data {
        Data::Null => out.push(T_NULL),
        Data::Bool(b) => out.push(if *b { T_TRUE } else { T_FALSE }),
        Data::Integer(i) => {
            out.push(T_INT);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Data::Float(f) => {
            out.push(T_FLOAT);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Data::String(s) => {
            out.push(T_STR);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Data::Array(items) => nested(out, T_ARRAY, &|out| {
            items.iter().for_each(|d| encode_value(d, out))
        }),
        Data::Map(map) => nested(out, T_MAP, &|out| encode_map_body(map, out)),
    }
}

fn encode_map_body(map: &BTreeMap<String, Data>, out: &mut Vec<u8>) {
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        encode_value(v, out);
    }
}

/// Whether two byte strings are equal; inline word compares, for the short keys of metrics (a
/// call to `memcmp` costs more than the comparison).
#[inline]
pub fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        if load_word(x) != load_word(y) {
            return false;
        }
    }
    load_tail(ca.remainder()) == load_tail(cb.remainder())
}

#[inline(always)]
fn load_word(chunk: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&chunk[..8]);
    u64::from_le_bytes(w)
}

/// Up to 7 bytes as a word, without a call to `memcpy`.
#[inline(always)]
fn load_tail(rest: &[u8]) -> u64 {
    rest.iter()
        .enumerate()
        .fold(0, |w, (i, b)| w | u64::from(*b) << (8 * i))
}

/// FxHash over bytes: a multiply-rotate hash, fast on short keys. Keys come from this process only,
/// so collision flooding is not a concern where it is used.
#[inline]
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        h = hash_word(h, load_word(chunk));
    }
    let rest = chunks.remainder();
    hash_word(h, load_tail(rest) ^ (rest.len() as u64) << 56)
}

#[inline]
pub fn hash_word(h: u64, word: u64) -> u64 {
    (h.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
}

/// A tags map as the metrics pre-aggregate reads it: its flat body, a hash of it, and the identity
/// of the map's content (0: none).
pub struct Tags<'a> {
    pub body: Cow<'a, [u8]>,
    pub hash: u64,
    pub identity: u64,
}

/// Reading the flat body of a tags map.
pub struct TagsRef;

impl TagsRef {
    /// The tags as sorted `(name, value)` strings: strings as they are, other scalars in their JSON
    /// form, maps and arrays as JSON.
    pub fn render(body: &[u8]) -> Vec<(String, String)> {
        map_entries(body)
            .map(|(k, v)| {
                let value = decode_value(body, v.start);
                (
                    text(k),
                    value.tag_value().unwrap_or_else(|| value.to_json()),
                )
            })
            .collect()
    }

    pub fn to_data(body: &[u8]) -> Data {
        decode_body(true, body)
    }
}

/// A map or array built through the C interface (see the module doc): entries in one contiguous
/// buffer, kept inside the value while small. Maps keep their keys sorted, a key set twice keeps the
/// last value, exactly like [`Data::Map`].
pub struct DataBuf {
    is_map: bool,
    entries: usize,
    body: SmallBuf,
    /// A large map, kept as a tree (see [`FLAT_MAX_ENTRIES`]); `body` is then unused.
    tree: Option<BTreeMap<String, Data>>,
    /// The tags hash of `body`, 0 until computed; reset by every change. Atomic, so that one map
    /// shared read-only between threads (as tags) stays sound.
    hash: AtomicU64,
    /// Names this content of this map (0 until the hash is computed; reset by every change), from a
    /// process-wide counter: a metric slot that saw the same identity has the same tag bytes and
    /// need not compare them again.
    identity: AtomicU64,
}

/// Source of [`DataBuf`] identities; never reused (a u64 does not wrap in practice).
static IDENTITIES: AtomicU64 = AtomicU64::new(1);

impl DataBuf {
    pub fn new_map() -> Self {
        Self::new(true)
    }

    pub fn new_array() -> Self {
        Self::new(false)
    }

    fn new(is_map: bool) -> Self {
        DataBuf {
            is_map,
            entries: 0,
            body: SmallBuf::new(),
            tree: None,
            hash: AtomicU64::new(0),
            identity: AtomicU64::new(0),
        }
    }

    pub fn is_map(&self) -> bool {
        self.is_map
    }

    /// Sets `key` in a map (an existing key is replaced). Returns false (and changes nothing) when
    /// `self` is not a map.
    pub fn map_set(&mut self, key: &str, value: Value<'_>) -> bool {
        if !self.is_map {
            return false;
        }
        self.hash.store(0, Ordering::Relaxed);
        self.identity.store(0, Ordering::Relaxed);
        if let Some(tree) = &mut self.tree {
            tree.insert(key.to_owned(), value.to_data());
            return true;
        }
        let body = self.body.as_slice();
        let mut insert_at = body.len();
        let mut replace = None;
        for (k, v) in map_entries(body) {
            match k.cmp(key.as_bytes()) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => replace = Some(v),
                std::cmp::Ordering::Greater => insert_at = v.start - 4 - k.len(),
            }
            break;
        }
        if replace.is_none() && self.entries >= FLAT_MAX_ENTRIES {
            let Data::Map(mut map) = decode_body(true, body) else {
                return false;
            };
            map.insert(key.to_owned(), value.to_data());
            self.tree = Some(map);
            self.body = SmallBuf::new();
            return true;
        }
        let mut scratch = [0u8; 13];
        let mut owned = Vec::new();
        let (head, payload) = value.encode(&mut scratch, &mut owned);
        match replace {
            Some(span) => self.body.splice(span, &[head, payload]),
            None => {
                let key_len = (key.len() as u32).to_le_bytes();
                self.body.splice(
                    insert_at..insert_at,
                    &[&key_len, key.as_bytes(), head, payload],
                );
                self.entries += 1;
            }
        }
        true
    }

    /// Appends to an array. Returns false (and changes nothing) when `self` is not an array.
    pub fn array_append(&mut self, value: Value<'_>) -> bool {
        if self.is_map {
            return false;
        }
        let mut scratch = [0u8; 13];
        let mut owned = Vec::new();
        let (head, payload) = value.encode(&mut scratch, &mut owned);
        let end = self.body.as_slice().len();
        self.body.splice(end..end, &[head, payload]);
        self.entries += 1;
        true
    }

    /// The flat body of this map or array, encoded from the tree when it is one.
    #[inline]
    fn body(&self) -> Cow<'_, [u8]> {
        match &self.tree {
            Some(tree) => {
                let mut out = Vec::new();
                encode_map_body(tree, &mut out);
                Cow::Owned(out)
            }
            None => Cow::Borrowed(self.body.as_slice()),
        }
    }

    /// As tags for a metric: `None` for an array or an empty map (an empty map is the same metric
    /// as no tags). The hash and identity are computed once and kept until the map changes.
    #[inline(always)]
    pub fn tags(&self) -> Option<Tags<'_>> {
        if self.tree.is_some() {
            return self.tree_tags();
        }
        if !self.is_map || self.entries == 0 {
            return None;
        }
        let body = self.body.as_slice();
        let (hash, identity) = match self.hash.load(Ordering::Relaxed) {
            0 => self.store_hash(body),
            known => (known, self.identity.load(Ordering::Relaxed)),
        };
        Some(Tags {
            body: Cow::Borrowed(body),
            hash,
            identity,
        })
    }

    #[cold]
    fn tree_tags(&self) -> Option<Tags<'_>> {
        let body = self.body();
        let hash = hash_bytes(T_MAP.into(), &body).max(1);
        Some(Tags {
            body,
            hash,
            identity: 0,
        })
    }

    #[inline(never)]
    fn store_hash(&self, body: &[u8]) -> (u64, u64) {
        let hash = hash_bytes(T_MAP.into(), body).max(1);
        let identity = IDENTITIES.fetch_add(1, Ordering::Relaxed);
        self.identity.store(identity, Ordering::Relaxed);
        self.hash.store(hash, Ordering::Relaxed);
        (hash, identity)
    }

    /// The value as a [`Data`].
    pub fn to_data(&self) -> Data {
        match &self.tree {
            Some(tree) => Data::Map(tree.clone()),
            None => decode_body(self.is_map, self.body.as_slice()),
        }
    }
}

/// One value handed to [`DataBuf::map_set`] or [`DataBuf::array_append`].
#[derive(Clone, Copy)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Integer(i64),
    Float(f64),
    Str(&'a str),
    /// A copy of another map or array.
    Data(&'a DataBuf),
}

impl<'a> Value<'a> {
    /// The encoding as a head (tag, and length or scalar payload) and a payload to copy.
    fn encode<'s>(self, scratch: &'s mut [u8; 13], owned: &'s mut Vec<u8>) -> (&'s [u8], &'s [u8])
    where
        'a: 's,
    {
        let (head, payload): (usize, &[u8]) = match self {
            Value::Null => {
                scratch[0] = T_NULL;
                (1, &[])
            }
            Value::Bool(b) => {
                scratch[0] = if b { T_TRUE } else { T_FALSE };
                (1, &[])
            }
            Value::Integer(i) => {
                scratch[0] = T_INT;
                scratch[1..9].copy_from_slice(&i.to_le_bytes());
                (9, &[])
            }
            Value::Float(f) => {
                scratch[0] = T_FLOAT;
                scratch[1..9].copy_from_slice(&f.to_bits().to_le_bytes());
                (9, &[])
            }
            Value::Str(s) => {
                scratch[0] = T_STR;
                scratch[1..5].copy_from_slice(&(s.len() as u32).to_le_bytes());
                (5, s.as_bytes())
            }
            Value::Data(d) => {
                scratch[0] = if d.is_map { T_MAP } else { T_ARRAY };
                *owned = d.body().into_owned();
                scratch[1..5].copy_from_slice(&(owned.len() as u32).to_le_bytes());
                (5, owned.as_slice())
            }
        };
        (&scratch[..head], payload)
    }

    fn to_data(self) -> Data {
        match self {
            Value::Null => Data::Null,
            Value::Bool(b) => Data::Bool(b),
            Value::Integer(i) => Data::Integer(i),
            Value::Float(f) => Data::Float(f),
            Value::Str(s) => Data::String(s.to_owned()),
            Value::Data(d) => d.to_data(),
        }
    }
}

impl From<&Data> for DataBuf {
    fn from(data: &Data) -> Self {
        let mut buf = DataBuf::new(matches!(data, Data::Map(_)));
        match data {
            Data::Map(map) if map.len() > FLAT_MAX_ENTRIES => {
                buf.entries = map.len();
                buf.tree = Some(map.clone());
            }
            Data::Map(map) => {
                let mut out = Vec::new();
                encode_map_body(map, &mut out);
                buf.entries = map.len();
                buf.body.splice(0..0, &[&out]);
            }
            Data::Array(items) => {
                let mut out = Vec::new();
                items.iter().for_each(|d| encode_value(d, &mut out));
                buf.entries = items.len();
                buf.body.splice(0..0, &[&out]);
            }
            _ => {}
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_equal_whatever_the_insertion_order() {
        let mut a = Data::new_map();
        a.map_set("b".into(), Data::Integer(2));
        a.map_set("a".into(), Data::String("x".into()));
        let mut b = Data::new_map();
        b.map_set("a".into(), Data::String("x".into()));
        b.map_set("b".into(), Data::Integer(2));
        assert_eq!(a, b);
        assert_eq!(a.to_json(), r#"{"a":"x","b":2}"#);
    }

    #[test]
    fn setters_refuse_the_wrong_container() {
        let mut array = Data::new_array();
        assert!(!array.map_set("k".into(), Data::Null));
        assert!(array.array_append(Data::Float(f64::NAN)));
        assert_eq!(array.to_json(), "[null]");
        let mut map = Data::new_map();
        assert!(!map.array_append(Data::Null));
    }

    #[test]
    fn nested_data_renders_as_json() {
        let mut inner = Data::new_array();
        inner.array_append(Data::Bool(true));
        inner.array_append(Data::Integer(-3));
        let mut map = Data::new_map();
        map.map_set("list".into(), inner);
        map.map_set("nothing".into(), Data::Null);
        assert_eq!(map.to_json(), r#"{"list":[true,-3],"nothing":null}"#);
    }

    fn sample() -> Data {
        let mut inner = Data::new_array();
        inner.array_append(Data::Bool(true));
        inner.array_append(Data::Integer(-3));
        inner.array_append(Data::Float(1.5));
        inner.array_append(Data::Null);
        let mut map = Data::new_map();
        map.map_set("list".into(), inner);
        map.map_set("b".into(), Data::String("x".into()));
        map.map_set("a".into(), Data::Bool(false));
        map
    }

    #[test]
    fn flat_buffers_decode_to_the_same_data() {
        let data = sample();
        let buf = DataBuf::from(&data);
        assert_eq!(buf.to_data(), data);
        let mut copy = DataBuf::new_array();
        copy.array_append(Value::Data(&buf));
        copy.array_append(Value::Str("é"));
        assert_eq!(
            copy.to_data().to_json(),
            r#"[{"a":false,"b":"x","list":[true,-3,1.5,null]},"é"]"#
        );
    }

    #[test]
    fn flat_maps_keep_keys_sorted_and_the_last_value() {
        let mut buf = DataBuf::new_map();
        buf.map_set("route", Value::Str("/checkout"));
        buf.map_set("region", Value::Str("eu"));
        buf.map_set("zone", Value::Integer(1));
        buf.map_set(
            "region",
            Value::Str(
                "us-east-1 and a long value past the inline buffer's end, to move it to the heap",
            ),
        );
        let mut other = DataBuf::new_map();
        other.map_set("zone", Value::Integer(1));
        other.map_set(
            "region",
            Value::Str(
                "us-east-1 and a long value past the inline buffer's end, to move it to the heap",
            ),
        );
        other.map_set("route", Value::Str("/checkout"));
        assert_eq!(buf.to_data(), other.to_data());
        let (a, b) = (buf.tags().unwrap(), other.tags().unwrap());
        assert_eq!(
            (a.body, a.hash),
            (b.body, b.hash),
            "the same entries are the same bytes and hash"
        );
        assert_ne!(a.identity, b.identity, "two maps are two identities");
        assert_eq!(buf.tags().unwrap().identity, a.identity);
        assert_eq!(
            TagsRef::render(&buf.tags().unwrap().body)[1],
            ("route".to_string(), "/checkout".to_string())
        );
        assert!(!buf.array_append(Value::Null));
        assert!(DataBuf::new_map().tags().is_none());
    }

    #[test]
    fn large_flat_maps_become_trees_with_the_same_meaning() {
        let mut buf = DataBuf::new_map();
        let mut data = Data::new_map();
        for i in (0..100).rev() {
            buf.map_set(&format!("k{i}"), Value::Integer(i));
            data.map_set(format!("k{i}"), Data::Integer(i));
        }
        buf.map_set("k5", Value::Str("again"));
        data.map_set("k5".into(), Data::String("again".into()));
        assert_eq!(buf.to_data(), data);
        assert_eq!(TagsRef::to_data(&buf.tags().unwrap().body), data);
    }
}
