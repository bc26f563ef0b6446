//! Reading the CBOR that frames on `agent.socket` and journal segments are written in.
//!
//! `serde_cbor` writes them ([`crate::protocol::encode`]); this module reads them back: a pull
//! reader over one body that checks each item against the type it must be, so every message is
//! built and validated straight from the bytes. Each message type derives [`FromCbor`]
//! (`#[derive(FromCbor)]`, crate `appsignal-cbor-derive`) from the same declaration and serde
//! attributes that `serde_cbor` writes it from, so a message is declared once; the derive's
//! documentation says what it reads. The impls here are the leaves it reads fields with: text,
//! booleans, numbers, vectors, options, pairs and maps.
//!
//! Why not `serde_cbor::from_slice`: its deserializer is instantiated once per visitor type that
//! the leader reads (about 50: every struct, its field names, every tuple and vector), which was
//! 383 KB of `libappsignal.so`'s code (`docs/benchmarks.md`, "Size of `libappsignal.so`"). This reader is
//! not generic over what it reads. It reads what `serde_cbor` writes: definite-length arrays,
//! maps and strings, structs as maps with text keys, enums as a one-entry map from the variant's
//! name to its content (unit variants as their name), `None` as null, floats as half, single or
//! double precision. Anything else (indefinite lengths, tags, non-text map keys, a float where an
//! integer belongs, a duplicated field, arrays and maps nested deeper than `serde_cbor`'s 127) is
//! an error naming the byte offset; unknown fields are skipped, as `serde`'s derived decoders do.
//! No declared length is trusted beyond the bytes left, and at most 1 MiB is reserved for a
//! vector before its items are read.

use std::fmt;

/// Why a body could not be read: what was wrong, and at which byte of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CborError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for CborError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

impl std::error::Error for CborError {}

pub type Result<T> = std::result::Result<T, CborError>;

/// A type that can be read from a [`Reader`]. Derive it (`#[derive(FromCbor)]`) for a struct or
/// enum that serde writes.
pub trait FromCbor: Sized {
    fn read(r: &mut Reader<'_>) -> Result<Self>;
}

pub use appsignal_cbor_derive::FromCbor;

/// Reads exactly one `T` from `body`; bytes after it are an error.
pub fn from_slice<T: FromCbor>(body: &[u8]) -> Result<T> {
    let mut r = Reader::new(body);
    let value = T::read(&mut r)?;
    if r.at != body.len() {
        return Err(r.error_at(
            r.at,
            format!("{} bytes after the message", body.len() - r.at),
        ));
    }
    Ok(value)
}

// Major types (RFC 8949 §3.1).
const UNSIGNED: u8 = 0;
const NEGATIVE: u8 = 1;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const TAG: u8 = 6;
const SIMPLE: u8 = 7;

const FALSE: u64 = 20;
const TRUE: u64 = 21;
const NULL: u64 = 22;

/// One item's initial byte(s): major type, additional information and its argument.
#[derive(Clone, Copy)]
struct Head {
    major: u8,
    info: u8,
    arg: u64,
}

fn major_name(major: u8) -> &'static str {
    match major {
        UNSIGNED => "an unsigned integer",
        NEGATIVE => "a negative integer",
        BYTES => "a byte string",
        TEXT => "a text string",
        ARRAY => "an array",
        MAP => "a map",
        TAG => "a tag",
        _ => "a simple value or float",
    }
}

/// Arrays and maps open at once, at most: `serde_cbor` refuses the 128th.
const MAX_DEPTH: u32 = 127;

/// A cursor over one CBOR body.
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Arrays and maps entered and not yet read to their end.
    depth: u32,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader {
            bytes,
            at: 0,
            depth: 0,
        }
    }

    #[cold]
    #[inline(never)]
    fn error_at(&self, offset: usize, message: String) -> CborError {
        CborError { offset, message }
    }

    /// An error at the reader's position (the item about to be read, or just read).
    pub fn error(&self, message: impl Into<String>) -> CborError {
        self.error_at(self.at, message.into())
    }

    #[inline]
    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let left = self.bytes.len() - self.at;
        if n > left as u64 {
            return Err(self.error(format!("{n} bytes announced, {left} left")));
        }
        let start = self.at;
        self.at += n as usize;
        Ok(&self.bytes[start..self.at])
    }

    /// The next item's head. The common case (an argument below 24, in the initial byte) is
    /// inline; wider arguments and errors are read out of line.
    #[inline]
    fn head(&mut self) -> Result<Head> {
        match self.bytes.get(self.at) {
            Some(&first) if first & 0x1f < 24 => {
                self.at += 1;
                Ok(Head {
                    major: first >> 5,
                    info: first & 0x1f,
                    arg: u64::from(first & 0x1f),
                })
            }
            _ => self.wide_head(),
        }
    }

    #[inline(never)]
    fn wide_head(&mut self) -> Result<Head> {
        let start = self.at;
        let first = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| self.error("the body ends where an item should start"))?;
        self.at += 1;
        let (major, info) = (first >> 5, first & 0x1f);
        let arg = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let width = 1u64 << (info - 24);
                let mut arg = 0u64;
                for &b in self.take(width)? {
                    arg = arg << 8 | u64::from(b);
                }
                arg
            }
            31 => {
                return Err(self.error_at(start, "indefinite-length items are not read".into()));
            }
            _ => {
                return Err(self.error_at(start, format!("reserved additional information {info}")))
            }
        };
        Ok(Head { major, info, arg })
    }

    /// The head of the next item, which must be of `major` type; `what` names what was expected.
    fn expect(&mut self, major: u8, what: &str) -> Result<Head> {
        let start = self.at;
        let head = self.head()?;
        if head.major != major {
            return Err(self.error_at(
                start,
                format!("expected {what}, found {}", major_name(head.major)),
            ));
        }
        Ok(head)
    }

    #[inline]
    pub fn u64(&mut self) -> Result<u64> {
        // 0..=23 is the byte itself: most bucket counts take no call.
        if let Some(&byte) = self.bytes.get(self.at) {
            if byte < 24 {
                self.at += 1;
                return Ok(u64::from(byte));
            }
        }
        Ok(self.expect(UNSIGNED, "an unsigned integer")?.arg)
    }

    /// An unsigned integer of at most `max` (`bits` wide, for the error).
    fn unsigned(&mut self, max: u64, bits: u32) -> Result<u64> {
        let start = self.at;
        let n = self.u64()?;
        if n > max {
            return Err(self.error_at(start, format!("{n} does not fit in {bits} bits")));
        }
        Ok(n)
    }

    pub fn u32(&mut self) -> Result<u32> {
        self.unsigned(u32::MAX.into(), 32).map(|n| n as u32)
    }

    pub fn i64(&mut self) -> Result<i64> {
        let start = self.at;
        let head = self.head()?;
        let n = match head.major {
            UNSIGNED => i64::try_from(head.arg).ok(),
            NEGATIVE => i64::try_from(head.arg).ok().map(|n| -1 - n),
            other => {
                return Err(self.error_at(
                    start,
                    format!("expected an integer, found {}", major_name(other)),
                ))
            }
        };
        n.ok_or_else(|| self.error_at(start, "integer does not fit in 64 bits".into()))
    }

    /// A signed integer of at most `bits` bits (below 64).
    fn signed(&mut self, bits: u32) -> Result<i64> {
        let start = self.at;
        let n = self.i64()?;
        let max = (1i64 << (bits - 1)) - 1;
        if !(-max - 1..=max).contains(&n) {
            return Err(self.error_at(start, format!("integer does not fit in {bits} bits")));
        }
        Ok(n)
    }

    pub fn i32(&mut self) -> Result<i32> {
        let start = self.at;
        let n = self.i64()?;
        i32::try_from(n).map_err(|_| self.error_at(start, "integer does not fit in 32 bits".into()))
    }

    /// A float of any width, or an integer (read as the nearest float, as `serde` does).
    pub fn f64(&mut self) -> Result<f64> {
        let start = self.at;
        let head = self.head()?;
        match (head.major, head.info) {
            (UNSIGNED, _) => Ok(head.arg as f64),
            // Below i64::MIN `serde` sees an i128, which it does not turn into a float.
            (NEGATIVE, _) if head.arg <= i64::MAX as u64 => Ok(-1.0 - head.arg as f64),
            (SIMPLE, 25) => Ok(f64::from(f16_to_f32(head.arg as u16))),
            (SIMPLE, 26) => Ok(f64::from(f32::from_bits(head.arg as u32))),
            (SIMPLE, 27) => Ok(f64::from_bits(head.arg)),
            (major, _) => Err(self.error_at(
                start,
                format!("expected a number, found {}", major_name(major)),
            )),
        }
    }

    pub fn bool(&mut self) -> Result<bool> {
        let start = self.at;
        let head = self.expect(SIMPLE, "a boolean")?;
        match (head.info, head.arg) {
            (0..=23, FALSE) => Ok(false),
            (0..=23, TRUE) => Ok(true),
            _ => Err(self.error_at(start, "expected a boolean".into())),
        }
    }

    /// A text string, borrowed from the body.
    pub fn str(&mut self) -> Result<&'a str> {
        // A text of 0..=23 bytes: its length is in the initial byte.
        let head = match self.bytes.get(self.at) {
            Some(&first) if first >> 5 == TEXT && first & 0x1f < 24 => {
                self.at += 1;
                Head {
                    major: TEXT,
                    info: first & 0x1f,
                    arg: u64::from(first & 0x1f),
                }
            }
            _ => self.expect(TEXT, "a text string")?,
        };
        let start = self.at;
        let bytes = self.take(head.arg)?;
        std::str::from_utf8(bytes)
            .map_err(|e| self.error_at(start, format!("text is not UTF-8: {e}")))
    }

    pub fn string(&mut self) -> Result<String> {
        self.str().map(str::to_owned)
    }

    /// An array's length. At least one byte per item must be left.
    fn array(&mut self) -> Result<usize> {
        let start = self.at;
        let head = self.expect(ARRAY, "an array")?;
        self.count(start, head.arg, 1)
    }

    /// A map's number of entries. At least two bytes per entry must be left.
    fn map(&mut self) -> Result<usize> {
        let start = self.at;
        let head = self.expect(MAP, "a map")?;
        self.count(start, head.arg, 2)
    }

    #[inline]
    /// Enters the array or map whose head started at `start`.
    fn enter(&mut self, start: usize) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_at(start, format!("nested deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    #[inline]
    fn count(&self, start: usize, n: u64, bytes_per_item: u64) -> Result<usize> {
        let left = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(bytes_per_item) > left {
            return Err(self.error_at(start, format!("{n} items announced, {left} bytes left")));
        }
        Ok(n as usize)
    }

    /// A null (consumed, `true`) or anything else (left in place, `false`).
    pub fn null(&mut self) -> bool {
        if self.bytes.get(self.at) == Some(&(SIMPLE << 5 | NULL as u8)) {
            self.at += 1;
            return true;
        }
        false
    }

    /// A null (a unit struct, a unit variant's content).
    pub fn unit(&mut self) -> Result<()> {
        if self.null() {
            return Ok(());
        }
        let start = self.at;
        let head = self.head()?;
        Err(self.error_at(
            start,
            format!("expected null, found {}", major_name(head.major)),
        ))
    }

    /// `None` for null, otherwise the item read by `read`.
    pub fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T>) -> Result<Option<T>> {
        if self.null() {
            return Ok(None);
        }
        read(self).map(Some)
    }

    /// An array of items read by `read`. Space for at most 1 MiB of items is reserved up front
    /// (as `serde` does): beyond that the vector grows with the items actually read, so that a
    /// forged length costs nothing.
    pub fn vec<T>(&mut self, read: impl FnMut(&mut Self) -> Result<T>) -> Result<Vec<T>> {
        self.vec_at_most(usize::MAX, read)
    }

    /// [`Reader::vec`] of at most `max` items: a longer array is refused before any is read.
    pub fn vec_at_most<T>(
        &mut self,
        max: usize,
        mut read: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        let start = self.at;
        let n = self.array()?;
        if n > max {
            return Err(self.error_at(start, format!("{n} items, at most {max} allowed")));
        }
        self.enter(start)?;
        let mut out = Vec::with_capacity(n.min((1 << 20) / std::mem::size_of::<T>().max(1)));
        for _ in 0..n {
            out.push(read(self)?);
        }
        self.leave();
        Ok(out)
    }

    /// A two-item array (a tuple).
    pub fn pair<A, B>(
        &mut self,
        a: impl FnOnce(&mut Self) -> Result<A>,
        b: impl FnOnce(&mut Self) -> Result<B>,
    ) -> Result<(A, B)> {
        let start = self.at;
        if self.array()? != 2 {
            return Err(self.error_at(start, "expected a pair".into()));
        }
        self.enter(start)?;
        let pair = (a(self)?, b(self)?);
        self.leave();
        Ok(pair)
    }

    /// An array of exactly `len` items, read by `read` (a tuple struct or variant).
    pub fn tuple<T>(&mut self, len: usize, read: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let start = self.at;
        let n = self.array()?;
        if n != len {
            return Err(self.error_at(start, format!("expected {len} items, found {n}")));
        }
        self.enter(start)?;
        let value = read(self)?;
        self.leave();
        Ok(value)
    }

    /// A struct: a map with text keys. `field` reads the value of a known key and returns `true`,
    /// or returns `false` for a key it does not know (the value is skipped).
    pub fn fields(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a str) -> Result<bool>,
    ) -> Result<()> {
        let start = self.at;
        let n = self.map()?;
        self.enter(start)?;
        for _ in 0..n {
            let key = self.str()?;
            if !field(self, key)? {
                self.skip()?;
            }
        }
        self.leave();
        Ok(())
    }

    /// A map (of any keys): `entry` reads each key and its value; the reader checks the count
    /// and the depth.
    pub fn entries(&mut self, mut entry: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        let start = self.at;
        let n = self.map()?;
        self.enter(start)?;
        for _ in 0..n {
            entry(self)?;
        }
        self.leave();
        Ok(())
    }

    /// Reads a field's value with `read` into `slot`, refusing a second one (as `serde` does).
    pub fn field<T>(
        &mut self,
        slot: &mut Option<T>,
        name: &str,
        read: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<bool> {
        let value = read(self)?;
        if slot.is_some() {
            return Err(duplicate(self, name));
        }
        *slot = Some(value);
        Ok(true)
    }

    /// An enum as serde writes it (externally tagged): a unit variant as its name alone, any
    /// variant as a one-entry map from its name to its content. `variant(reader, name,
    /// content)` reads the content if `content` (else there is none) and returns `None` for a
    /// name it does not know (or a bare name that is no unit variant).
    pub fn enumeration<T>(
        &mut self,
        what: &str,
        variant: impl FnOnce(&mut Self, &'a str, bool) -> Result<Option<T>>,
    ) -> Result<T> {
        let start = self.at;
        if self.bytes.get(self.at).is_some_and(|&b| b >> 5 == TEXT) {
            let name = self.str()?;
            return variant(self, name, false)?
                .ok_or_else(|| unknown_variant(self, start, what, "unit variant ", name));
        }
        if self.map()? != 1 {
            return Err(self.error_at(start, format!("expected {what} (a one-entry map)")));
        }
        self.enter(start)?;
        let name_at = self.at;
        let name = self.str()?;
        let value = variant(self, name, true)?
            .ok_or_else(|| unknown_variant(self, name_at, what, "variant ", name))?;
        self.leave();
        Ok(value)
    }

    /// Skips one item of any kind (the value of an unknown field), nested at most as deep as
    /// the reader allows.
    pub fn skip(&mut self) -> Result<()> {
        let start = self.at;
        let head = self.head()?;
        match head.major {
            UNSIGNED | NEGATIVE => {}
            // false, true, null, undefined and floats; `serde_cbor` refuses other simple values.
            SIMPLE if matches!(head.info, 20..=23 | 25..=27) => {}
            SIMPLE => {
                return Err(self.error_at(start, format!("simple value {}", head.arg)));
            }
            BYTES => {
                self.take(head.arg)?;
            }
            // Text is checked even where it is skipped, as `serde_cbor` does.
            TEXT => {
                let bytes = self.take(head.arg)?;
                if std::str::from_utf8(bytes).is_err() {
                    return Err(self.error_at(start, "text is not UTF-8".into()));
                }
            }
            ARRAY | MAP => {
                let per_entry = if head.major == MAP { 2 } else { 1 };
                let n = self.count(start, head.arg, per_entry)?;
                self.enter(start)?;
                for _ in 0..n * per_entry as usize {
                    self.skip()?;
                }
                self.leave();
            }
            _ => return Err(self.error_at(start, "tags are not read".into())),
        }
        Ok(())
    }
}

// The leaves that derived readers read fields with.

macro_rules! leaf {
    ($($type:ty => $read:expr),* $(,)?) => {$(
        impl FromCbor for $type {
            #[inline]
            fn read(r: &mut Reader<'_>) -> Result<Self> {
                $read(r)
            }
        }
    )*};
}

leaf! {
    u64 => Reader::u64,
    u32 => Reader::u32,
    u16 => |r: &mut Reader<'_>| r.unsigned(u16::MAX.into(), 16).map(|n| n as u16),
    u8 => |r: &mut Reader<'_>| r.unsigned(u8::MAX.into(), 8).map(|n| n as u8),
    usize => |r: &mut Reader<'_>| {
        r.unsigned(usize::MAX as u64, usize::BITS).map(|n| n as usize)
    },
    i64 => Reader::i64,
    i32 => Reader::i32,
    i16 => |r: &mut Reader<'_>| r.signed(16).map(|n| n as i16),
    i8 => |r: &mut Reader<'_>| r.signed(8).map(|n| n as i8),
    f64 => Reader::f64,
    // As serde reads an `f32`: any number, to the nearest single.
    f32 => |r: &mut Reader<'_>| r.f64().map(|v| v as f32),
    bool => Reader::bool,
    String => Reader::string,
    () => Reader::unit,
}

/// What kind of item comes next, for readers of dynamic values (see [`Reader::next_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unsigned,
    Negative,
    Bytes,
    Text,
    Array,
    Map,
    /// false, true, null, undefined or a float.
    Simple,
    Tag,
}

impl<'a> Reader<'a> {
    /// The kind of the next item, without consuming it; `None` at the end of the body.
    pub fn next_kind(&self) -> Option<Kind> {
        Some(match self.bytes.get(self.at)? >> 5 {
            UNSIGNED => Kind::Unsigned,
            NEGATIVE => Kind::Negative,
            BYTES => Kind::Bytes,
            TEXT => Kind::Text,
            ARRAY => Kind::Array,
            MAP => Kind::Map,
            TAG => Kind::Tag,
            _ => Kind::Simple,
        })
    }

    /// A boolean (consumed) or anything else (left in place, `None`).
    pub fn boolean(&mut self) -> Option<bool> {
        let value = match self.bytes.get(self.at) {
            Some(&b) if b == SIMPLE << 5 | FALSE as u8 => false,
            Some(&b) if b == SIMPLE << 5 | TRUE as u8 => true,
            _ => return None,
        };
        self.at += 1;
        Some(value)
    }

    /// A text string of at most `max` bytes.
    pub fn string_at_most(&mut self, max: usize) -> Result<String> {
        let start = self.at;
        let text = self.str()?;
        if text.len() > max {
            return Err(self.error_at(
                start,
                format!("text of {} bytes, at most {max} allowed", text.len()),
            ));
        }
        Ok(text.to_owned())
    }

    /// One item read by `read` that may be refused on its own: the item is first skipped, so
    /// that damage to its structure (what [`Reader::skip`] refuses) fails the whole body as
    /// usual, then read from its own bytes. `Ok(Err(_))`: the item is well-formed CBOR but not
    /// what `read` accepts; the reader is past it either way.
    pub fn entry<T>(
        &mut self,
        read: impl FnOnce(&mut Reader<'a>) -> Result<T>,
    ) -> Result<std::result::Result<T, CborError>> {
        let start = self.at;
        self.skip()?;
        let end = self.at;
        let mut item = Reader {
            bytes: &self.bytes[..end],
            at: start,
            depth: self.depth,
        };
        Ok(read(&mut item).and_then(|value| {
            if item.at == end {
                Ok(value)
            } else {
                Err(item.error("the item has bytes its reader left unread"))
            }
        }))
    }
}

impl<T: FromCbor> FromCbor for Option<T> {
    #[inline]
    fn read(r: &mut Reader<'_>) -> Result<Self> {
        r.option(T::read)
    }
}

impl<T: FromCbor> FromCbor for Box<T> {
    #[inline]
    fn read(r: &mut Reader<'_>) -> Result<Self> {
        T::read(r).map(Box::new)
    }
}

impl<K: FromCbor + Ord, V: FromCbor> FromCbor for std::collections::BTreeMap<K, V> {
    fn read(r: &mut Reader<'_>) -> Result<Self> {
        let mut map = std::collections::BTreeMap::new();
        r.entries(|r| {
            let key = K::read(r)?;
            map.insert(key, V::read(r)?);
            Ok(())
        })?;
        Ok(map)
    }
}

impl<K: FromCbor + Eq + std::hash::Hash, V: FromCbor> FromCbor for std::collections::HashMap<K, V> {
    fn read(r: &mut Reader<'_>) -> Result<Self> {
        let mut map = std::collections::HashMap::new();
        r.entries(|r| {
            let key = K::read(r)?;
            map.insert(key, V::read(r)?);
            Ok(())
        })?;
        Ok(map)
    }
}

impl<A: FromCbor, B: FromCbor> FromCbor for (A, B) {
    fn read(r: &mut Reader<'_>) -> Result<Self> {
        r.pair(A::read, B::read)
    }
}

impl<T: FromCbor> FromCbor for Vec<T> {
    fn read(r: &mut Reader<'_>) -> Result<Self> {
        r.vec(T::read)
    }
}

/// A field that must have been there.
pub fn required<T>(r: &Reader<'_>, slot: Option<T>, what: &str, name: &str) -> Result<T> {
    match slot {
        Some(value) => Ok(value),
        None => Err(missing(r, what, name)),
    }
}

// The errors are built out of line: `field` and `required` are inlined for every field.
#[cold]
#[inline(never)]
fn unknown_variant(r: &Reader<'_>, at: usize, what: &str, kind: &str, name: &str) -> CborError {
    r.error_at(at, format!("unknown {what} {kind}{name:?}"))
}

/// The error of a struct with `#[serde(deny_unknown_fields)]` on a field it does not know.
#[cold]
#[inline(never)]
pub fn unknown_field(r: &Reader<'_>, name: &str) -> CborError {
    r.error(format!("unknown field `{name}`"))
}

/// The error of a conversion (`#[serde(try_from = …)]`) that refused what was read.
#[cold]
#[inline(never)]
pub fn conversion_error(r: &Reader<'_>, why: &dyn fmt::Display) -> CborError {
    r.error(why.to_string())
}

#[cold]
#[inline(never)]
fn duplicate(r: &Reader<'_>, name: &str) -> CborError {
    r.error(format!("duplicate field `{name}`"))
}

#[cold]
#[inline(never)]
fn missing(r: &Reader<'_>, what: &str, name: &str) -> CborError {
    r.error(format!("{what}: missing field `{name}`"))
}

/// IEEE 754 half precision to single (exact: every half is a single).
fn f16_to_f32(half: u16) -> f32 {
    let sign = u32::from(half >> 15) << 31;
    let exponent = u32::from((half >> 10) & 0x1f);
    let mantissa = u32::from(half & 0x3ff);
    let bits = match (exponent, mantissa) {
        (0, 0) => sign,
        // Subnormal: mantissa × 2^-24, exact in single precision.
        (0, m) => {
            let magnitude = m as f32 / 16_777_216.0;
            return if sign == 0 { magnitude } else { -magnitude };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_floats_are_exact() {
        for (bits, value) in [
            (0x0000u16, 0.0f32),
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x8001, -5.960_464_5e-8),
            (0x03ff, 6.097_555e-5),
            (0x7c00, f32::INFINITY),
            (0xfc00, f32::NEG_INFINITY),
        ] {
            assert_eq!(f16_to_f32(bits), value, "{bits:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
        assert!(f16_to_f32(0x8000).is_sign_negative());
    }

    #[test]
    fn floats_of_every_width_and_integers_read_as_f64() {
        for value in [
            0.0,
            1.5,
            -2.25,
            0.1,
            1e300,
            f64::INFINITY,
            f64::MIN_POSITIVE,
            7.0e-8,
        ] {
            let bytes = serde_cbor::to_vec(&value).unwrap();
            assert_eq!(Reader::new(&bytes).f64().unwrap(), value, "{bytes:x?}");
        }
        assert!(Reader::new(&serde_cbor::to_vec(&f64::NAN).unwrap())
            .f64()
            .unwrap()
            .is_nan());
        assert_eq!(Reader::new(&[0x18, 200]).f64().unwrap(), 200.0);
        assert_eq!(Reader::new(&[0x20]).f64().unwrap(), -1.0);
        let below_i64 = [0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(serde_cbor::from_slice::<f64>(&below_i64).is_err());
        assert!(Reader::new(&below_i64).f64().is_err());
    }

    #[test]
    fn integers_are_range_checked() {
        let big = serde_cbor::to_vec(&(u64::from(u32::MAX) + 1)).unwrap();
        assert!(Reader::new(&big)
            .u32()
            .unwrap_err()
            .message
            .contains("32 bits"));
        assert_eq!(
            Reader::new(&serde_cbor::to_vec(&i32::MIN).unwrap())
                .i32()
                .unwrap(),
            i32::MIN
        );
        let below = serde_cbor::to_vec(&(i64::from(i32::MIN) - 1)).unwrap();
        assert!(Reader::new(&below).i32().is_err());
        assert_eq!(
            Reader::new(&serde_cbor::to_vec(&u64::MAX).unwrap())
                .u64()
                .unwrap(),
            u64::MAX
        );
        // A negative integer below i64::MIN does not wrap.
        assert!(
            Reader::new(&[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
                .i32()
                .is_err()
        );
    }

    #[test]
    fn lengths_are_never_trusted_beyond_the_body() {
        // An array of 2^64-1 items in a 9-byte body.
        let err = Reader::new(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
            .array()
            .unwrap_err();
        assert!(err.message.contains("items announced"), "{err}");
        // A text of 100 bytes with 2 left.
        let err = Reader::new(&[0x78, 100, b'a', b'b']).str().unwrap_err();
        assert!(err.message.contains("100 bytes announced, 2 left"), "{err}");
        let mut r = Reader::new(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(r.skip().is_err());
    }

    #[test]
    fn what_serde_cbor_never_writes_is_refused_with_its_offset() {
        // Indefinite-length array, a tag, a reserved head, invalid UTF-8, a non-text map key.
        assert!(Reader::new(&[0x9f, 0xff])
            .array()
            .unwrap_err()
            .message
            .contains("indefinite"));
        assert!(Reader::new(&[0xc1, 0x00])
            .skip()
            .unwrap_err()
            .message
            .contains("tags"));
        assert!(Reader::new(&[0x1c])
            .u64()
            .unwrap_err()
            .message
            .contains("reserved"));
        // Unassigned simple values, also where they would be skipped.
        let err = Reader::new(&[0xe2]).skip().unwrap_err();
        assert!(err.message.contains("simple value 2"), "{err}");
        assert!(Reader::new(&[0xf8, 0x20]).skip().is_err());
        for known in [0xf4, 0xf5, 0xf6, 0xf7] {
            assert!(Reader::new(&[known]).skip().is_ok());
        }
        let err = Reader::new(&[0x62, 0xff, 0xfe]).str().unwrap_err();
        assert_eq!(err.offset, 1);
        assert!(err.message.contains("UTF-8"));
        let mut r = Reader::new(&[0xa1, 0x01, 0x02]);
        let err = r.fields(|_, _| Ok(false)).unwrap_err();
        assert!(err.message.contains("expected a text string"), "{err}");
        assert_eq!(
            from_slice::<u64>(&[0x01, 0x02]).unwrap_err().message,
            "1 bytes after the message"
        );
    }

    #[test]
    fn unknown_fields_are_skipped_and_duplicates_refused() {
        #[derive(serde::Serialize)]
        struct Wider {
            extra: Vec<std::collections::BTreeMap<String, Vec<u8>>>,
            n: u64,
            more: (f64, Option<String>, bool),
        }
        let wider = Wider {
            extra: vec![[("k".to_owned(), vec![1, 2, 3])].into()],
            n: 7,
            more: (1.5, None, true),
        };
        let bytes = serde_cbor::to_vec(&wider).unwrap();
        assert_eq!(from_slice::<Probe>(&bytes).unwrap(), Probe(7));
        // {"n": 1, "n": 2}
        let err = from_slice::<Probe>(&[0xa2, 0x61, b'n', 0x01, 0x61, b'n', 0x02]).unwrap_err();
        assert!(err.message.contains("duplicate field `n`"), "{err}");
        let err = from_slice::<Probe>(&[0xa0]).unwrap_err();
        assert!(err.message.contains("missing field `n`"), "{err}");
    }

    #[test]
    fn nesting_is_refused_where_serde_cbor_refuses_it() {
        // {"x": [[[…0…]]], "n": 1} with `arrays` nested arrays in the unknown field "x".
        let body = |arrays: usize| {
            let mut b = vec![0xa2, 0x61, b'x'];
            b.extend(std::iter::repeat_n(0x81, arrays));
            b.extend([0x00, 0x61, b'n', 0x01]);
            b
        };
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct N {
            n: u64,
        }
        let mut last_ok = 0;
        for arrays in 0..200 {
            let ours = from_slice::<Probe>(&body(arrays)).is_ok();
            assert_eq!(
                ours,
                serde_cbor::from_slice::<N>(&body(arrays)).is_ok(),
                "{arrays} arrays"
            );
            if ours {
                last_ok = arrays;
            }
        }
        // The struct's map is one level: 126 arrays inside it make 127.
        assert_eq!(last_ok, 126);
        let err = from_slice::<Probe>(&body(127)).unwrap_err();
        assert!(err.message.contains("nested deeper than 127"), "{err}");
    }

    /// `{"n": u64}` and nothing else. Written by hand on purpose: it tests the reader's building
    /// blocks (`fields`, `field`, `required`) that the derive below generates calls to.
    #[derive(Debug, PartialEq)]
    struct Probe(u64);

    impl FromCbor for Probe {
        fn read(r: &mut Reader<'_>) -> Result<Self> {
            let mut n = None;
            r.fields(|r, key| match key {
                "n" => r.field(&mut n, key, Reader::u64),
                _ => Ok(false),
            })?;
            required(r, n, "Probe", "n").map(Probe)
        }
    }

    /// The derive's semantics, each checked against what `serde_cbor` writes and (where both
    /// accept) against what its derived decoder reads.
    mod derived {
        use super::super::*;
        use serde::{Deserialize, Serialize};
        use std::collections::{BTreeMap, HashMap};

        fn bytes<T: Serialize>(value: &T) -> Vec<u8> {
            serde_cbor::to_vec(value).unwrap()
        }

        /// Ours reads what serde wrote into what serde's decoder reads.
        fn round_trip<T>(value: &T) -> T
        where
            T: FromCbor + Serialize + for<'de> Deserialize<'de>,
        {
            let body = bytes(value);
            let ours: T = from_slice(&body).unwrap_or_else(|e| panic!("{e}: {body:x?}"));
            let reference: T = serde_cbor::from_slice(&body).unwrap();
            assert_eq!(bytes(&ours), bytes(&reference));
            assert_eq!(bytes(&ours), body);
            ours
        }

        fn seven() -> u32 {
            7
        }

        #[derive(Debug, PartialEq, Serialize, Deserialize, FromCbor)]
        struct Message {
            id: u64,
            name: String,
            #[serde(default)]
            tags: Vec<(String, String)>,
            #[serde(default = "seven")]
            retries: u32,
            note: Option<String>,
            #[serde(rename = "type", alias = "kind")]
            r#type: Kind,
            #[serde(skip)]
            cached: u64,
            #[cbor(max_len = 3)]
            #[serde(default)]
            small: Vec<i64>,
            nested: Option<Box<Message>>,
        }

        #[derive(Debug, PartialEq, Serialize, Deserialize, FromCbor)]
        enum Kind {
            Plain,
            Named(String),
            Pair(u8, bool),
            Full {
                at_ms: u64,
                #[serde(default)]
                extra: Option<f64>,
            },
            #[serde(rename = "other")]
            Other,
        }

        fn message(kind: Kind) -> Message {
            Message {
                id: 1,
                name: "m".into(),
                tags: vec![("a".into(), "b".into())],
                retries: 2,
                note: Some("n".into()),
                r#type: kind,
                cached: 0,
                small: vec![-1, 0, 1],
                nested: None,
            }
        }

        /// `message` as a map with `edit` applied to its fields.
        fn edited(
            edit: impl FnOnce(&mut BTreeMap<serde_cbor::Value, serde_cbor::Value>),
        ) -> Vec<u8> {
            let mut value = serde_cbor::value::to_value(message(Kind::Plain)).unwrap();
            let serde_cbor::Value::Map(fields) = &mut value else {
                panic!()
            };
            edit(fields);
            bytes(&value)
        }

        fn text(s: &str) -> serde_cbor::Value {
            serde_cbor::Value::Text(s.into())
        }

        #[test]
        fn every_shape_reads_back_as_serde_wrote_it() {
            for kind in [
                Kind::Plain,
                Kind::Named("x".into()),
                Kind::Pair(255, true),
                Kind::Full {
                    at_ms: u64::MAX,
                    extra: Some(0.5),
                },
                Kind::Full {
                    at_ms: 0,
                    extra: None,
                },
                Kind::Other,
            ] {
                let mut m = message(kind);
                m.nested = Some(Box::new(message(Kind::Plain)));
                assert_eq!(round_trip(&m), m);
            }
        }

        #[test]
        fn a_missing_required_field_names_the_type_and_the_field() {
            let body = edited(|f| {
                f.remove(&text("name"));
            });
            let err = from_slice::<Message>(&body).unwrap_err();
            assert_eq!(err.message, "Message: missing field `name`");
            // At the end of the map, where it was found missing.
            assert_eq!(err.offset, body.len());
            let err = from_slice::<Kind>(&bytes(&BTreeMap::from([(
                "Full",
                BTreeMap::<String, u64>::new(),
            )])))
            .unwrap_err();
            assert_eq!(err.message, "Kind::Full: missing field `at_ms`");
        }

        #[test]
        fn missing_defaulted_and_optional_fields_take_their_defaults() {
            let body = edited(|f| {
                for key in ["tags", "retries", "note", "small", "nested"] {
                    assert!(f.remove(&text(key)).is_some(), "{key}");
                }
            });
            let m: Message = from_slice(&body).unwrap();
            assert_eq!(
                (m.tags, m.retries, m.note, m.small),
                (vec![], 7, None, vec![])
            );
            assert!(m.nested.is_none());
            let reference: Message = serde_cbor::from_slice(&body).unwrap();
            assert_eq!(reference.retries, 7);

            // `#[serde(default)]` on the type: a missing field is the type's default's.
            #[derive(Debug, PartialEq, Serialize, Deserialize, FromCbor)]
            #[serde(default)]
            struct Settings {
                a: u32,
                b: String,
            }
            impl Default for Settings {
                fn default() -> Self {
                    Settings {
                        a: 5,
                        b: "five".into(),
                    }
                }
            }
            let only_b = bytes(&BTreeMap::from([("b", "x")]));
            let expected = Settings {
                a: 5,
                b: "x".into(),
            };
            assert_eq!(from_slice::<Settings>(&only_b).unwrap(), expected);
            assert_eq!(
                serde_cbor::from_slice::<Settings>(&only_b).unwrap(),
                expected
            );
        }

        #[test]
        fn unknown_fields_are_skipped_unless_denied_and_duplicates_refused() {
            let body = edited(|f| {
                f.insert(
                    text("added_later"),
                    serde_cbor::Value::Array(vec![text("x")]),
                );
            });
            assert_eq!(from_slice::<Message>(&body).unwrap(), message(Kind::Plain));

            #[derive(Debug, Serialize, FromCbor)]
            #[serde(deny_unknown_fields)]
            struct Strict {
                a: u32,
            }
            let err =
                from_slice::<Strict>(&bytes(&BTreeMap::from([("a", 1), ("b", 2)]))).unwrap_err();
            assert_eq!(err.message, "unknown field `b`");
            assert_eq!(from_slice::<Strict>(&bytes(&Strict { a: 3 })).unwrap().a, 3);

            // {"id": 1, "id": 2, …}: refused as serde refuses it, naming the field.
            let mut twice = bytes(&message(Kind::Plain));
            let map_head = twice[0];
            twice[0] = map_head + 1;
            twice.extend(bytes(&"id"));
            twice.push(0x02);
            let err = from_slice::<Message>(&twice).unwrap_err();
            assert_eq!(err.message, "duplicate field `id`");
            assert!(serde_cbor::from_slice::<Message>(&twice).is_err());
        }

        #[test]
        fn renamed_and_aliased_fields_read_by_their_wire_names() {
            let body = edited(|f| {
                let kind = f.remove(&text("type")).unwrap();
                f.insert(text("kind"), kind);
            });
            assert_eq!(from_slice::<Message>(&body).unwrap(), message(Kind::Plain));
            // The Rust name is not a wire name.
            let body = edited(|f| {
                let kind = f.remove(&text("type")).unwrap();
                f.insert(text("r#type"), kind);
            });
            let err = from_slice::<Message>(&body).unwrap_err();
            assert_eq!(err.message, "Message: missing field `type`");
        }

        #[test]
        fn enum_variants_by_name_and_content() {
            // A unit variant as its name or as {name: null}, as serde_cbor reads it.
            assert_eq!(from_slice::<Kind>(&bytes(&"Plain")).unwrap(), Kind::Plain);
            let as_map = bytes(&BTreeMap::from([("Plain", ())]));
            assert_eq!(from_slice::<Kind>(&as_map).unwrap(), Kind::Plain);
            assert_eq!(
                serde_cbor::from_slice::<Kind>(&as_map).unwrap(),
                Kind::Plain
            );
            assert_eq!(from_slice::<Kind>(&bytes(&"other")).unwrap(), Kind::Other);

            let err = from_slice::<Kind>(&bytes(&"Other")).unwrap_err();
            assert_eq!(err.message, "unknown Kind unit variant \"Other\"");
            // A variant with content needs it.
            let err = from_slice::<Kind>(&bytes(&"Named")).unwrap_err();
            assert_eq!(err.message, "unknown Kind unit variant \"Named\"");
            let err = from_slice::<Kind>(&bytes(&BTreeMap::from([("Nope", 1)]))).unwrap_err();
            assert_eq!(err.message, "unknown Kind variant \"Nope\"");
            assert_eq!(err.offset, 1);
            let err = from_slice::<Kind>(&bytes(&BTreeMap::from([("Plain", 1), ("Other", 2)])))
                .unwrap_err();
            assert_eq!(err.message, "expected Kind (a one-entry map)");
            // A tuple variant has exactly its items.
            let err = from_slice::<Kind>(&bytes(&BTreeMap::from([("Pair", (1u8, true, 3))])))
                .unwrap_err();
            assert_eq!(err.message, "expected 2 items, found 3");
            let err =
                from_slice::<Kind>(&bytes(&BTreeMap::from([("Pair", (256, true))]))).unwrap_err();
            assert_eq!(err.message, "256 does not fit in 8 bits");
        }

        #[test]
        fn bounds_and_conversions_refuse_while_reading() {
            let body = edited(|f| {
                let four = (0..4).map(serde_cbor::Value::Integer).collect();
                f.insert(text("small"), serde_cbor::Value::Array(four));
            });
            let err = from_slice::<Message>(&body).unwrap_err();
            assert_eq!(err.message, "4 items, at most 3 allowed");

            #[derive(Serialize, FromCbor)]
            struct EvenWire {
                n: u64,
            }
            #[derive(Debug, FromCbor)]
            #[serde(try_from = "EvenWire")]
            struct Even(u64);
            impl TryFrom<EvenWire> for Even {
                type Error = String;
                fn try_from(w: EvenWire) -> std::result::Result<Self, String> {
                    if w.n % 2 == 0 {
                        Ok(Even(w.n))
                    } else {
                        Err(format!("{} is odd", w.n))
                    }
                }
            }
            assert_eq!(from_slice::<Even>(&bytes(&EvenWire { n: 4 })).unwrap().0, 4);
            let body = bytes(&EvenWire { n: 3 });
            let err = from_slice::<Even>(&body).unwrap_err();
            assert_eq!((err.message.as_str(), err.offset), ("3 is odd", body.len()));

            #[derive(Debug, PartialEq, FromCbor)]
            #[serde(from = "EvenWire")]
            struct Any(u64);
            impl From<EvenWire> for Any {
                fn from(w: EvenWire) -> Self {
                    Any(w.n)
                }
            }
            assert_eq!(from_slice::<Any>(&body).unwrap(), Any(3));

            // A field read by a function of its own.
            fn short(r: &mut Reader<'_>) -> Result<String> {
                let at = r.at;
                let s = r.string()?;
                if s.len() > 2 {
                    return Err(r.error_at(at, "too long".into()));
                }
                Ok(s)
            }
            #[derive(Debug, Serialize, FromCbor)]
            struct Code {
                #[cbor(with = short)]
                code: String,
            }
            assert_eq!(
                from_slice::<Code>(&bytes(&Code { code: "ab".into() }))
                    .unwrap()
                    .code,
                "ab"
            );
            let err = from_slice::<Code>(&bytes(&Code { code: "abc".into() })).unwrap_err();
            assert_eq!((err.message.as_str(), err.offset), ("too long", 6));
        }

        #[test]
        fn newtypes_tuples_units_maps_and_generics() {
            #[derive(Debug, PartialEq, Serialize, Deserialize, FromCbor)]
            struct Id(u64);
            #[derive(Debug, PartialEq, Serialize, Deserialize, FromCbor)]
            struct Point(i32, i32, f64);
            #[derive(Debug, PartialEq, Serialize, Deserialize, FromCbor)]
            struct Marker;
            #[derive(Debug, PartialEq, Serialize, Deserialize, FromCbor)]
            struct Tagged<T> {
                value: T,
                tags: BTreeMap<String, String>,
                counts: HashMap<u16, Vec<Id>>,
                unit: Marker,
            }
            assert_eq!(round_trip(&Id(9)), Id(9));
            #[derive(Debug, PartialEq, Serialize, Deserialize, FromCbor)]
            struct Small(i8, i16, u8, u16, f32, usize, i64);
            let small = Small(
                i8::MIN,
                i16::MAX,
                u8::MAX,
                u16::MAX,
                0.1,
                usize::MAX,
                i64::MIN,
            );
            assert_eq!(round_trip(&small), small);
            let err = from_slice::<Small>(&bytes(&(128, 0, 0, 0, 0.0, 0, 0))).unwrap_err();
            assert_eq!(
                (err.message.as_str(), err.offset),
                ("integer does not fit in 8 bits", 1)
            );
            let err = from_slice::<Small>(&bytes(&(0, -32769, 0, 0, 0.0, 0, 0))).unwrap_err();
            assert_eq!(err.message, "integer does not fit in 16 bits");
            assert_eq!(round_trip(&Point(-1, 2, 0.5)), Point(-1, 2, 0.5));
            let tagged = Tagged {
                value: Point(i32::MIN, i32::MAX, -0.0),
                tags: BTreeMap::from([("k".into(), "v".into()), ("a".into(), "".into())]),
                counts: HashMap::from([(7, vec![Id(1), Id(2)])]),
                unit: Marker,
            };
            assert_eq!(round_trip(&tagged), tagged);
            let err = from_slice::<Point>(&bytes(&(1, 2))).unwrap_err();
            assert_eq!(err.message, "expected 3 items, found 2");
            let err = from_slice::<Marker>(&bytes(&0)).unwrap_err();
            assert_eq!(err.message, "expected null, found an unsigned integer");
        }

        #[test]
        fn derived_readers_keep_the_depth_limit() {
            // Message.nested, 200 deep: every level is a map, refused at the 128th.
            let mut m = message(Kind::Plain);
            for _ in 0..200 {
                let mut outer = message(Kind::Plain);
                outer.nested = Some(Box::new(m));
                m = outer;
            }
            let body = bytes(&m);
            let err = from_slice::<Message>(&body).unwrap_err();
            assert!(err.message.contains("nested deeper than 127"), "{err}");
            assert!(serde_cbor::from_slice::<Message>(&body).is_err());
        }
    }
}
