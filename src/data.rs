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

/// Up to 7 bytes as a little-endian word (the bytes not there are 0), without a call to `memcpy`
/// nor a loop: two loads that may overlap (an overlapping byte lands where it belongs twice).
#[inline(always)]
fn load_tail(rest: &[u8]) -> u64 {
    let n = rest.len();
    match n {
        0 => 0,
        1..=3 => {
            u64::from(rest[0])
                | u64::from(rest[n / 2]) << (8 * (n / 2))
                | u64::from(rest[n - 1]) << (8 * (n - 1))
        }
        _ => {
            let mut lo = [0u8; 4];
            let mut hi = [0u8; 4];
            lo.copy_from_slice(&rest[..4]);
            hi.copy_from_slice(&rest[n - 4..n]);
            u64::from(u32::from_le_bytes(lo)) | u64::from(u32::from_le_bytes(hi)) << (8 * (n - 4))
        }
    }
}

/// Byte-wise (lexicographic) order of two byte strings, as `<[u8]>::cmp`, with inline word
/// compares instead of a call to `memcmp` (map keys are short).
#[inline]
fn bytes_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let n = a.len().min(b.len());
    let (a_head, b_head) = (&a[..n], &b[..n]);
    let mut ca = a_head.chunks_exact(8);
    let mut cb = b_head.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let (x, y) = (load_word(x).swap_bytes(), load_word(y).swap_bytes());
        if x != y {
            return x.cmp(&y);
        }
    }
    // Equal-length tails, first byte most significant, compare like the bytes.
    let tail = |rest: &[u8]| load_tail(rest).swap_bytes();
    tail(ca.remainder())
        .cmp(&tail(cb.remainder()))
        .then(a.len().cmp(&b.len()))
}

/// Copies `src` into `dst` (of the same length) without a call to `memcpy` when it is short: a
/// library call costs more than the copy of a tag key or value.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    match n {
        0 => {}
        1..=3 => {
            dst[0] = src[0];
            dst[n / 2] = src[n / 2];
            dst[n - 1] = src[n - 1];
        }
        4..=7 => {
            dst[..4].copy_from_slice(&src[..4]);
            dst[n - 4..].copy_from_slice(&src[n - 4..]);
        }
        8..=16 => {
            dst[..8].copy_from_slice(&src[..8]);
            dst[n - 8..].copy_from_slice(&src[n - 8..]);
        }
        _ => dst.copy_from_slice(src),
    }
}

/// Whether every byte is ASCII, a word at a time (names, keys and tag values nearly always are).
#[inline]
pub fn is_ascii(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    let mut high = 0u64;
    for chunk in &mut chunks {
        high |= load_word(chunk);
    }
    (high | load_tail(chunks.remainder())) & 0x8080_8080_8080_8080 == 0
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
    /// Names this content of this map (0 until the map is used as tags a second time; reset by
    /// every change), from a process-wide counter: a metric slot that saw the same identity has the
    /// same tag bytes and need not compare them again.
    identity: AtomicU64,
    /// Where the last entry of a flat map starts in `body` (its key length): a key greater than
    /// that entry's is appended without scanning the map.
    last_entry: usize,
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
            last_entry: 0,
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
        self.find_last_entry();
        true
    }

    /// Sets `key` to a string in a map, from the caller's bytes: invalid UTF-8 in either is
    /// replaced (U+FFFD), as everywhere else text comes in. Returns false (and changes nothing)
    /// when `self` is not a map.
    ///
    /// The common case of a tags map built per call, short ASCII keys set in increasing order, is
    /// an append into the buffer inside the value: no scan, no allocation, no library call.
    #[inline]
    pub fn map_set_string(&mut self, key: &[u8], value: &[u8]) -> bool {
        if is_ascii(key) && is_ascii(value) && self.append_string(key, value) {
            return true;
        }
        self.map_set(
            &String::from_utf8_lossy(key),
            Value::Str(&String::from_utf8_lossy(value)),
        )
    }

    /// Appends the entry `key` (ASCII) = `value` (ASCII) when that keeps the map flat, sorted and
    /// inside the value; false (nothing changed) otherwise.
    #[inline]
    fn append_string(&mut self, key: &[u8], value: &[u8]) -> bool {
        if !self.is_map || self.tree.is_some() || self.entries >= FLAT_MAX_ENTRIES {
            return false;
        }
        let SmallBuf::Inline { len, bytes } = &mut self.body else {
            return false;
        };
        let at = usize::from(*len);
        let end = at + 4 + key.len() + 5 + value.len();
        if end > INLINE {
            return false;
        }
        if self.entries > 0 {
            let last = self.last_entry;
            let last_key = &bytes[last + 4..last + 4 + read_u32(&bytes[..], last)];
            if bytes_cmp(last_key, key) != std::cmp::Ordering::Less {
                return false;
            }
        }
        let value_at = at + 4 + key.len();
        bytes[at..at + 4].copy_from_slice(&(key.len() as u32).to_le_bytes());
        copy_short(&mut bytes[at + 4..value_at], key);
        bytes[value_at] = T_STR;
        bytes[value_at + 1..value_at + 5].copy_from_slice(&(value.len() as u32).to_le_bytes());
        copy_short(&mut bytes[value_at + 5..end], value);
        *len = end as u8;
        self.last_entry = at;
        self.entries += 1;
        *self.hash.get_mut() = 0;
        *self.identity.get_mut() = 0;
        true
    }

    /// Sets [`Self::last_entry`] after a change that was not an append.
    fn find_last_entry(&mut self) {
        self.last_entry = map_entries(self.body.as_slice())
            .last()
            .map_or(0, |(key, value)| value.start - 4 - key.len());
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
    /// as no tags). The hash and identity are computed once (the identity at the second use) and
    /// kept until the map changes.
    #[inline(always)]
    pub fn tags(&self) -> Option<Tags<'_>> {
        if self.tree.is_some() {
            return self.tree_tags();
        }
        if !self.is_map || self.entries == 0 {
            return None;
        }
        let body = self.body.as_slice();
        // The first use hashes; the identity is drawn at the second (a map built per call is
        // used once and never pays for it).
        let (hash, identity) = match self.hash.load(Ordering::Relaxed) {
            0 => (self.store_hash(body), 0),
            known => match self.identity.load(Ordering::Relaxed) {
                0 => (known, self.new_identity()),
                identity => (known, identity),
            },
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

    #[inline]
    fn store_hash(&self, body: &[u8]) -> u64 {
        let hash = hash_bytes(T_MAP.into(), body).max(1);
        self.hash.store(hash, Ordering::Relaxed);
        hash
    }

    /// Two threads may both draw one for a shared map; the one stored last stays, and a slot that
    /// saw the other only compares the bytes once more.
    #[cold]
    fn new_identity(&self) -> u64 {
        let identity = IDENTITIES.fetch_add(1, Ordering::Relaxed);
        self.identity.store(identity, Ordering::Relaxed);
        identity
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
                buf.find_last_entry();
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
        assert_eq!(
            (a.identity, b.identity),
            (0, 0),
            "no identity at the first use"
        );
        let (a, b) = (buf.tags().unwrap(), other.tags().unwrap());
        assert_ne!(a.identity, 0, "an identity from the second use on");
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
    fn word_helpers_agree_with_the_slice_operations() {
        let bytes: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        for n in 0..8 {
            let expected = bytes[..n]
                .iter()
                .enumerate()
                .fold(0u64, |w, (i, b)| w | u64::from(*b) << (8 * i));
            assert_eq!(load_tail(&bytes[..n]), expected, "tail of {n}");
        }
        for n in 0..=20 {
            let mut dst = vec![0u8; n];
            copy_short(&mut dst, &bytes[3..3 + n]);
            assert_eq!(dst, &bytes[3..3 + n], "copy of {n}");
            let ascii = is_ascii(&bytes[..n]);
            assert_eq!(ascii, bytes[..n].is_ascii(), "ascii of {n}");
        }
        let words: [&[u8]; 10] = [
            b"",
            b"a",
            b"ab",
            b"abc",
            b"abd",
            b"route",
            b"region",
            b"routes_long_key_x",
            b"routes_long_key_y",
            b"\xff\x00",
        ];
        for a in words {
            for b in words {
                assert_eq!(bytes_cmp(a, b), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(bytes_eq(a, b), a == b, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn string_entries_from_bytes_mean_what_a_data_map_means() {
        // Keys and values from a small alphabet (so keys repeat and collide in prefix), in a
        // pseudo-random order, some not ASCII, some not UTF-8, some past the inline buffer.
        let pieces: [&[u8]; 9] = [
            b"a",
            b"region",
            b"route",
            b"routes_long_key_x",
            b"",
            "é".as_bytes(),
            b"\xff\xfe",
            b"eu",
            b"a value long enough to leave the buffer inside the handle for the heap, surely",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for round in 0..500 {
            let mut buf = DataBuf::new_map();
            let mut data = Data::new_map();
            for _ in 0..next(if round % 10 == 0 { 60 } else { 6 }) {
                let key = if next(4) == 0 {
                    format!("k{}", next(40)).into_bytes()
                } else {
                    [pieces[next(9)], pieces[next(9)]].concat()
                };
                let value = pieces[next(9)];
                assert!(buf.map_set_string(&key, value));
                data.map_set(text(&key), Data::String(text(value)));
            }
            assert_eq!(buf.to_data(), data, "round {round}");
            if let Some(tags) = buf.tags() {
                assert_eq!(TagsRef::to_data(&tags.body), data, "round {round}");
            }
            // What the slow path builds from the same entries is the same bytes.
            let rebuilt = DataBuf::from(&data);
            assert_eq!(
                buf.tags().map(|t| t.body.into_owned()),
                rebuilt.tags().map(|t| t.body.into_owned()),
                "round {round}"
            );
        }
        assert!(!DataBuf::new_array().map_set_string(b"k", b"v"));
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
