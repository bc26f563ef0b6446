//! The wire protocol on `agent.socket`: frames of a 4-byte big-endian length and a CBOR body.
//!
//! The codec here is pure (byte slices in, messages out, no I/O) so that it can be unit-tested and
//! fuzzed. An incomplete frame is a normal state (`Ok(None)`); a length over [`MAX_FRAME_BYTES`] is
//! rejected before anything is allocated for the body; a body that is not a valid message is an error.
//!
//! A conversation: the client sends `Hello` (the range of protocols it speaks, its library
//! version, its id and its push config); the leader answers `Welcome` (with the protocol both speak:
//! the connection's dialect), `Refused` (no protocol in common: the client is too old; it spools
//! what it holds and disables itself) or `HandingOver` (the client speaks a newer protocol or runs
//! a newer library: the leader steps down so that it leads; see [`handshake`]); then the client
//! sends numbered `Batch`es and the leader answers each with `Ack { seq }` once the batch is
//! journaled and counted.
//!
//! Protocol 2 and 3 differ only in a batch's samples and log lines: protocol 3 writes them as
//! structures ([`crate::sample`]), protocol 2 as their JSON text. [`Batch`]'s reader takes either
//! form per entry (a leader of protocol 3 serves clients of protocol 2, and replays their journal
//! segments and spool files); [`encode_batch`] writes a batch in the dialect of a connection.
//! A `Hello`'s `protocol_version` is the oldest protocol the client speaks, so that a leader of
//! protocol 2 (which refuses any other value, and ignores unknown fields) reads it and goes on to
//! compare library versions.
//!
//! Each message is declared once: `serde_cbor` encodes it from its `Serialize` derive;
//! [`crate::cbor`] decodes it through its `FromCbor` derive, generated from the same fields and
//! serde attributes. The `Deserialize` derives are not used by the library: they are the reference
//! decoder that the tests and the `frame` fuzz target compare [`decode`] with.

use crate::cbor::{self, required, FromCbor, Reader};
use crate::sample::{LogLine, Sample};
use crate::sketch::Sketch;
use serde::{Deserialize, Serialize};

use crate::export_config::ExportConfig;

/// The newest protocol this library speaks; bumped on any incompatible change of the messages
/// below (2: distributions as [`Sketch`]; 3: samples and log lines as structures).
pub const PROTOCOL_VERSION: u32 = 3;

/// The oldest protocol this library speaks (as a client and as a leader).
pub const OLDEST_PROTOCOL: u32 = 2;

/// Hard limit of one frame body. A client splits larger batches; a leader closes a connection that sends more.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Length of the frame header.
pub const HEADER_BYTES: usize = 4;

/// A metric's identity: its name and its tags, sorted by tag name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, FromCbor)]
pub struct MetricKey {
    pub name: String,
    pub tags: Vec<(String, String)>,
}

/// A gauge's last value and when it was set (ms since the epoch), so that "last" holds across processes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, FromCbor)]
pub struct GaugeValue {
    pub value: f64,
    pub at_ms: u64,
}

/// One flush of one process's pre-aggregated data.
/// Read by hand (below): entries that are not valid samples or log lines are dropped and added to
/// the batch's drop counts, a step after reading that a derived reader has no place for.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Batch {
    /// Random id of the process (per start), with `seq` the batch's unique identity.
    pub client_id: u64,
    /// 1, 2, 3, … per client; the leader counts a (client, seq) once.
    pub seq: u64,
    /// When the data was taken from the app (ms since the epoch); decides the window it counts in.
    pub created_ms: u64,
    pub counters: Vec<(MetricKey, f64)>,
    pub gauges: Vec<(MetricKey, GaugeValue)>,
    pub distributions: Vec<(MetricKey, Sketch)>,
    /// Metric updates the client had to drop (too many distinct keys) since its previous batch.
    pub dropped_updates: u64,
    /// Finished samples of transactions and root spans.
    #[serde(default)]
    pub samples: Vec<Sample>,
    /// Log lines from `appsignal_log`.
    #[serde(default)]
    pub logs: Vec<LogLine>,
    /// Samples and log lines the client had to drop since its previous batch (the reader adds
    /// those it refuses).
    #[serde(default)]
    pub dropped_samples: u64,
    #[serde(default)]
    pub dropped_logs: u64,
    /// Unacknowledged batches the client dropped (its queue was full) since its previous batch;
    /// their entries, samples and logs are in the drop counts above.
    #[serde(default)]
    pub dropped_batches: u64,
}

impl std::fmt::Debug for Batch {
    // Sketches have no Debug; their counts say what matters.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("client_id", &self.client_id)
            .field("seq", &self.seq)
            .field("created_ms", &self.created_ms)
            .field("counters", &self.counters)
            .field("gauges", &self.gauges)
            .field("distributions", &self.distributions.len())
            .field("dropped_updates", &self.dropped_updates)
            .field("samples", &self.samples.len())
            .field("logs", &self.logs.len())
            .finish()
    }
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
            && self.gauges.is_empty()
            && self.distributions.is_empty()
            && self.dropped_updates == 0
            && self.dropped_batches == 0
            && self.samples.is_empty()
            && self.logs.is_empty()
    }

    pub fn entries(&self) -> usize {
        self.counters.len()
            + self.gauges.len()
            + self.distributions.len()
            + self.samples.len()
            + self.logs.len()
    }
}

/// The identity under which the leader records a client's batches (in memory, in the journal, in
/// `counted` and in spool files): a one-way hash of the client id. The journal may be readable by
/// every local user; it must not tell anyone an id to handshake with. Only the process itself
/// knows its id, and a connection may only send batches for the id it handshook with.
pub fn journal_id(client_id: u64) -> u64 {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        &[
            b"appsignal-client-id-v1:".as_slice(),
            &client_id.to_le_bytes(),
        ]
        .concat(),
    );
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_le_bytes(id)
}

/// Read by hand (`read_hello`): its versions stay readable when its configuration is not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// The oldest protocol the client speaks (the only version a leader of protocol 2 reads).
    pub protocol_version: u32,
    /// The newest protocol the client speaks; absent (protocol 2) means `protocol_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    pub library_version: String,
    pub client_id: u64,
    pub pid: u32,
    pub config: ExportConfig,
}

// A Hello is sent once per connection and moved rarely: boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientMessage {
    Hello(Hello),
    Batch(Batch),
    /// Read, never written: a `Hello` of which only the versions could be read.
    #[serde(skip)]
    HelloVersions(HelloVersions),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromCbor)]
pub enum LeaderMessage {
    Welcome {
        /// The connection's dialect: the newest protocol both sides speak (a leader of
        /// protocol 2 always says 2).
        protocol_version: u32,
        library_version: String,
        leader_pid: u32,
    },
    Refused {
        reason: String,
    },
    /// The client runs a newer library: this leader steps down; the client should take the lock.
    HandingOver {
        reason: String,
    },
    Ack {
        seq: u64,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The header announces a body larger than [`MAX_FRAME_BYTES`].
    TooLarge(usize),
    /// The body is not a valid message.
    Malformed(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(n) => {
                write!(
                    f,
                    "frame of {n} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"
                )
            }
            FrameError::Malformed(why) => write!(f, "malformed frame: {why}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes one message as a frame (header + body).
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0u8; HEADER_BYTES];
    serde_cbor::to_writer(&mut frame, message).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let body_len = frame.len() - HEADER_BYTES;
    if body_len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body_len));
    }
    // body_len <= MAX_FRAME_BYTES fits in u32.
    frame[..HEADER_BYTES].copy_from_slice(&(body_len as u32).to_be_bytes());
    Ok(frame)
}

/// The body length announced by a header, checked against the limit. `Ok(None)` until 4 bytes are there.
pub fn body_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..HEADER_BYTES) else {
        return Ok(None);
    };
    let mut len = [0u8; HEADER_BYTES];
    len.copy_from_slice(header);
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    Ok(Some(len))
}

/// Decodes the first frame in `buf`. `Ok(None)`: not complete yet. `Ok(Some((message, used)))`:
/// `used` bytes of `buf` were consumed.
pub fn decode<T: FromCbor>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(len) = body_len(buf)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(HEADER_BYTES..HEADER_BYTES + len) else {
        return Ok(None);
    };
    let message = cbor::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(Some((message, HEADER_BYTES + len)))
}

/// What a leader answers a `Hello`, decided from the versions alone (see [`handshake`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Serve the client, speaking this protocol on the connection.
    Welcome(u32),
    /// The client speaks a newer protocol or runs a newer library: the leader steps down.
    HandOver,
    /// The client speaks only protocols older than the leader's oldest.
    Refuse,
}

/// The handshake decision of a leader speaking `ours` (oldest, newest) for a client speaking
/// `client` (oldest, newest) whose library is newer than the leader's or not. The protocol is
/// looked at first, so that a client too old to be served is refused whatever its library
/// says; a newer client, by protocol or by library, is handed the lead.
pub fn handshake(client: (u32, u32), ours: (u32, u32), client_library_newer: bool) -> Handshake {
    let (client_oldest, client_newest) = (client.0, client.1.max(client.0));
    let (our_oldest, our_newest) = ours;
    if client_newest < our_oldest {
        Handshake::Refuse
    } else if client_newest > our_newest || client_library_newer {
        Handshake::HandOver
    } else if client_oldest > our_newest {
        // Unreachable with client_newest <= our_newest; kept so the rule reads whole.
        Handshake::HandOver
    } else {
        Handshake::Welcome(client_newest.min(our_newest))
    }
}

/// A batch as protocol 2 writes it: samples and log lines as JSON text.
#[derive(Serialize)]
struct BatchV2<'a> {
    client_id: u64,
    seq: u64,
    created_ms: u64,
    counters: &'a [(MetricKey, f64)],
    gauges: &'a [(MetricKey, GaugeValue)],
    distributions: &'a [(MetricKey, Sketch)],
    dropped_updates: u64,
    samples: AsJsonText<'a, Sample>,
    logs: AsJsonText<'a, LogLine>,
    dropped_samples: u64,
    dropped_logs: u64,
    dropped_batches: u64,
}

/// Writes each item as a text string holding its JSON (protocol 2's form), one at a time.
struct AsJsonText<'a, T>(&'a [T]);

impl<T: Serialize> Serialize for AsJsonText<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            let text = serde_json::to_string(item).map_err(S::Error::custom)?;
            seq.serialize_element(&text)?;
        }
        seq.end()
    }
}

impl<'a> BatchV2<'a> {
    fn of(batch: &'a Batch) -> BatchV2<'a> {
        BatchV2 {
            client_id: batch.client_id,
            seq: batch.seq,
            created_ms: batch.created_ms,
            counters: &batch.counters,
            gauges: &batch.gauges,
            distributions: &batch.distributions,
            dropped_updates: batch.dropped_updates,
            samples: AsJsonText(&batch.samples),
            logs: AsJsonText(&batch.logs),
            dropped_samples: batch.dropped_samples,
            dropped_logs: batch.dropped_logs,
            dropped_batches: batch.dropped_batches,
        }
    }
}

#[derive(Serialize)]
enum ClientMessageV2<'a> {
    Batch(BatchV2<'a>),
}

/// A batch as a client frame in the connection's `dialect` (protocol 2: samples and log lines
/// as JSON text; otherwise as structures).
pub fn encode_batch(batch: &Batch, dialect: u32) -> Result<Vec<u8>, FrameError> {
    #[derive(Serialize)]
    enum Message<'a> {
        Batch(&'a Batch),
    }
    if dialect <= 2 {
        encode(&ClientMessageV2::Batch(BatchV2::of(batch)))
    } else {
        encode(&Message::Batch(batch))
    }
}

/// A batch as a bare frame (journal segments, spool files) in protocol 2's format: for tests of
/// what a leader of protocol 2 left behind.
#[cfg(test)]
pub fn encode_batch_v2_bare(batch: &Batch) -> Vec<u8> {
    encode(&BatchV2::of(batch)).unwrap_or_default()
}

impl FromCbor for Batch {
    fn read(r: &mut Reader<'_>) -> cbor::Result<Self> {
        let (mut client_id, mut seq, mut created_ms, mut dropped_updates) =
            (None, None, None, None);
        let (mut counters, mut gauges, mut distributions) = (None, None, None);
        let (mut samples, mut logs) = (None, None);
        let (mut dropped_samples, mut dropped_logs, mut dropped_batches) = (None, None, None);
        r.fields(|r, key| match key {
            "client_id" => r.field(&mut client_id, key, Reader::u64),
            "seq" => r.field(&mut seq, key, Reader::u64),
            "created_ms" => r.field(&mut created_ms, key, Reader::u64),
            "dropped_updates" => r.field(&mut dropped_updates, key, Reader::u64),
            "dropped_samples" => r.field(&mut dropped_samples, key, Reader::u64),
            "dropped_logs" => r.field(&mut dropped_logs, key, Reader::u64),
            "dropped_batches" => r.field(&mut dropped_batches, key, Reader::u64),
            "counters" => r.field(&mut counters, key, |r| {
                r.vec(|r| r.pair(MetricKey::read, Reader::f64))
            }),
            "gauges" => r.field(&mut gauges, key, |r| {
                r.vec(|r| r.pair(MetricKey::read, GaugeValue::read))
            }),
            "distributions" => r.field(&mut distributions, key, |r| {
                r.vec(|r| r.pair(MetricKey::read, Sketch::read))
            }),
            "samples" => r.field(&mut samples, key, |r| {
                crate::sample::read_entries(r, Sample::from_json)
            }),
            "logs" => r.field(&mut logs, key, |r| {
                crate::sample::read_entries(r, LogLine::from_json)
            }),
            _ => Ok(false),
        })?;
        // Entries that are not valid samples or lines are dropped here and counted as dropped.
        let (samples, refused_samples) = samples.unwrap_or_default();
        let (logs, refused_logs) = logs.unwrap_or_default();
        Ok(Batch {
            client_id: required(r, client_id, "Batch", "client_id")?,
            seq: required(r, seq, "Batch", "seq")?,
            created_ms: required(r, created_ms, "Batch", "created_ms")?,
            counters: required(r, counters, "Batch", "counters")?,
            gauges: required(r, gauges, "Batch", "gauges")?,
            distributions: required(r, distributions, "Batch", "distributions")?,
            dropped_updates: required(r, dropped_updates, "Batch", "dropped_updates")?,
            samples,
            logs,
            dropped_samples: dropped_samples
                .unwrap_or_default()
                .saturating_add(refused_samples),
            dropped_logs: dropped_logs
                .unwrap_or_default()
                .saturating_add(refused_logs),
            dropped_batches: dropped_batches.unwrap_or_default(),
        })
    }
}

/// A `Hello` whose version fields were read but whose other fields this library cannot read (a
/// newer protocol may change them): enough for the handshake to hand over or refuse.
#[derive(Debug, Clone)]
pub struct HelloVersions {
    pub protocol_version: u32,
    pub protocol: Option<u32>,
    pub library_version: String,
    pub pid: u32,
    /// Why the rest of the `Hello` could not be read.
    pub reason: String,
}

/// A `Hello`, or only its versions (see [`HelloVersions`]). The version fields are read the
/// same way in every protocol; the configuration is read on its own, so that a configuration
/// this library does not understand still leaves the versions to decide by.
fn read_hello(r: &mut Reader<'_>) -> cbor::Result<ClientMessage> {
    let (mut protocol_version, mut library_version, mut client_id) = (None, None, None);
    let (mut pid, mut config, mut protocol) = (None, None, None);
    r.fields(|r, key| match key {
        "protocol_version" => r.field(&mut protocol_version, key, Reader::u32),
        "protocol" => r.field(&mut protocol, key, |r| r.option(Reader::u32)),
        "library_version" => r.field(&mut library_version, key, Reader::string),
        "client_id" => r.field(&mut client_id, key, Reader::u64),
        "pid" => r.field(&mut pid, key, Reader::u32),
        "config" => r.field(&mut config, key, |r| r.entry(ExportConfig::read)),
        _ => Ok(false),
    })?;
    let protocol_version = required(r, protocol_version, "Hello", "protocol_version")?;
    let library_version = required(r, library_version, "Hello", "library_version")?;
    let pid = required(r, pid, "Hello", "pid")?;
    let protocol = protocol.flatten();
    let rest = match (client_id, config) {
        (Some(client_id), Some(Ok(config))) => Ok((client_id, config)),
        (None, _) => Err("Hello: missing field `client_id`".to_owned()),
        (_, None) => Err("Hello: missing field `config`".to_owned()),
        (_, Some(Err(e))) => Err(format!("Hello: config: {e}")),
    };
    Ok(match rest {
        Ok((client_id, config)) => ClientMessage::Hello(Hello {
            protocol_version,
            protocol,
            library_version,
            client_id,
            pid,
            config,
        }),
        Err(reason) => ClientMessage::HelloVersions(HelloVersions {
            protocol_version,
            protocol,
            library_version,
            pid,
            reason,
        }),
    })
}

impl FromCbor for Hello {
    fn read(r: &mut Reader<'_>) -> cbor::Result<Self> {
        match read_hello(r)? {
            ClientMessage::Hello(hello) => Ok(hello),
            ClientMessage::HelloVersions(v) => Err(r.error(v.reason)),
            ClientMessage::Batch(_) => Err(r.error("not a Hello")),
        }
    }
}

impl FromCbor for ClientMessage {
    fn read(r: &mut Reader<'_>) -> cbor::Result<Self> {
        r.enumeration("ClientMessage", |r, name, content| match (name, content) {
            ("Hello", true) => read_hello(r).map(Some),
            ("Batch", true) => Batch::read(r).map(|m| Some(ClientMessage::Batch(m))),
            _ => Ok(None),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        let mut sketch = Sketch::new();
        sketch.add(1.5);
        Batch {
            client_id: 7,
            seq: 3,
            created_ms: 1_700_000_000_000,
            counters: vec![(
                MetricKey {
                    name: "jobs".into(),
                    tags: vec![("queue".into(), "mail".into())],
                },
                2.0,
            )],
            gauges: vec![],
            distributions: vec![(
                MetricKey {
                    name: "latency".into(),
                    tags: vec![],
                },
                sketch,
            )],
            dropped_updates: 0,
            ..Batch::default()
        }
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let frame = encode(&ClientMessage::Batch(batch())).unwrap();
        for cut in 0..frame.len() {
            assert!(decode::<ClientMessage>(&frame[..cut]).unwrap().is_none());
        }
        let (message, used) = decode::<ClientMessage>(&frame).unwrap().unwrap();
        assert_eq!(used, frame.len());
        let ClientMessage::Batch(b) = message else {
            panic!("not a batch")
        };
        assert_eq!((b.client_id, b.seq), (7, 3));
        assert_eq!(b.distributions[0].1.count(), 1);
    }

    fn hello() -> Hello {
        use crate::export_config::{Exporters, OtlpSettings, ResourceValue};
        Hello {
            protocol_version: OLDEST_PROTOCOL,
            protocol: Some(PROTOCOL_VERSION),
            library_version: "1.2.3".into(),
            client_id: u64::MAX - 5,
            pid: 4242,
            config: ExportConfig {
                push_api_key: "key".into(),
                app_name: "app ✓".into(),
                environment: "production".into(),
                endpoint: "https://push.example".into(),
                hostname: "web-1".into(),
                revision: "abc".into(),
                host_role: Some("web".into()),
                language_integration_version: None,
                exporters: Exporters {
                    push: true,
                    otlp: true,
                },
                otlp: Some(OtlpSettings {
                    metrics_endpoint: "http://c/v1/metrics".into(),
                    traces_endpoint: "http://c/v1/traces".into(),
                    logs_endpoint: "http://c/v1/logs".into(),
                    headers: vec![("x-api-key".into(), "secret".into())],
                    timeout_ms: 10_000,
                    gzip: true,
                    resource: vec![
                        ("service.name".into(), ResourceValue::Str("shop".into())),
                        (
                            "appsignal.config.ignore_actions".into(),
                            ResourceValue::List(vec!["a".into(), "b".into()]),
                        ),
                    ],
                    temporality: "lowmemory".into(),
                }),
                prometheus: None,
                redacted: false,
            },
        }
    }

    fn full_batch() -> Batch {
        let mut b = batch();
        let mut sketch = Sketch::new();
        for v in [-3.0, 0.0, 0.1, 7.25, 1e9] {
            sketch.add(v);
        }
        b.distributions.push((
            MetricKey {
                name: "mixed".into(),
                tags: vec![("k".into(), "v".into())],
            },
            sketch,
        ));
        b.gauges.push((
            MetricKey {
                name: "g".into(),
                tags: vec![],
            },
            GaugeValue {
                value: -0.5,
                at_ms: 12,
            },
        ));
        b.counters.push((
            MetricKey {
                name: "big".into(),
                tags: vec![],
            },
            1e300,
        ));
        b.samples = vec![crate::sample::test_sample(3)];
        b.logs = vec![
            crate::sample::test_line("{}"),
            crate::sample::test_line("line"),
        ];
        (
            b.dropped_updates,
            b.dropped_samples,
            b.dropped_logs,
            b.dropped_batches,
        ) = (1, 2, 3, 4);
        b
    }

    /// Our reader and `serde_cbor`'s derived decoders agree: both accept `body` and what they
    /// built encodes to the same bytes, or ours refuses it. Returns whether ours accepted. The
    /// one difference by design: a batch's sample or log line that is not valid is dropped and
    /// counted by ours, where serde refuses the whole batch.
    fn agrees_with_serde<T>(body: &[u8]) -> bool
    where
        T: FromCbor + Serialize + serde::de::DeserializeOwned + std::any::Any,
    {
        let Ok(ours) = cbor::from_slice::<T>(body) else {
            return false;
        };
        // Only the versions of a Hello: the leader answers (hands over, refuses) or closes.
        let any: &dyn std::any::Any = &ours;
        if let Some(ClientMessage::HelloVersions(_)) = any.downcast_ref::<ClientMessage>() {
            return false;
        }
        let reference: T = match serde_cbor::from_slice(body) {
            Ok(reference) => reference,
            Err(e) => {
                let any: &dyn std::any::Any = &ours;
                let dropped = match any.downcast_ref::<ClientMessage>() {
                    Some(ClientMessage::Batch(b)) => b.dropped_samples + b.dropped_logs,
                    _ => 0,
                };
                // `full_batch` says 2 + 3; more means entries were refused.
                assert!(dropped > 5, "accepted by our reader only ({e}): {body:x?}");
                return true;
            }
        };
        // Ours may refuse (drop and count) an entry that serde takes, e.g. a byte string where
        // text belongs: the entries kept plus those counted must still add up.
        let (a, b): (&dyn std::any::Any, &dyn std::any::Any) = (&ours, &reference);
        if let (Some(ClientMessage::Batch(a)), Some(ClientMessage::Batch(b))) = (
            a.downcast_ref::<ClientMessage>(),
            b.downcast_ref::<ClientMessage>(),
        ) {
            let total = |b: &Batch| {
                b.samples.len() as u64 + b.logs.len() as u64 + b.dropped_samples + b.dropped_logs
            };
            if a.dropped_samples + a.dropped_logs > b.dropped_samples + b.dropped_logs {
                assert_eq!(total(a), total(b), "entries lost: {body:x?}");
                return true;
            }
        }
        assert_eq!(
            serde_cbor::to_vec(&ours).unwrap(),
            serde_cbor::to_vec(&reference).unwrap(),
            "read differently: {body:x?}"
        );
        true
    }

    fn body<T: Serialize>(message: &T) -> Vec<u8> {
        encode(message).unwrap()[HEADER_BYTES..].to_vec()
    }

    #[test]
    fn every_message_reads_back_as_written() {
        let hello_body = body(&ClientMessage::Hello(hello()));
        let batch_body = body(&ClientMessage::Batch(full_batch()));
        for bytes in [&hello_body, &batch_body] {
            assert!(agrees_with_serde::<ClientMessage>(bytes));
            let again = body(&cbor::from_slice::<ClientMessage>(bytes).unwrap());
            assert_eq!(&again, bytes);
        }
        for message in [
            LeaderMessage::Welcome {
                protocol_version: 2,
                library_version: "1".into(),
                leader_pid: 9,
            },
            LeaderMessage::Refused {
                reason: "old".into(),
            },
            LeaderMessage::HandingOver {
                reason: "new".into(),
            },
            LeaderMessage::Ack { seq: u64::MAX },
        ] {
            assert_eq!(
                cbor::from_slice::<LeaderMessage>(&body(&message)).unwrap(),
                message
            );
        }
        let header = crate::journal::SegmentHeader {
            window_start: 60_000,
            config_id: 7,
            config: hello().config.without_secrets(),
        };
        assert!(agrees_with_serde::<crate::journal::SegmentHeader>(&body(
            &header
        )));
        let pairs: Vec<(u64, u64)> = vec![(1, 2), (u64::MAX, 0)];
        assert_eq!(
            cbor::from_slice::<Vec<(u64, u64)>>(&body(&pairs)).unwrap(),
            pairs
        );
    }

    #[test]
    fn fields_an_older_client_does_not_send_take_their_defaults() {
        let without = |keys: &[&str]| {
            let mut value = serde_cbor::value::to_value(ClientMessage::Batch(batch())).unwrap();
            let serde_cbor::Value::Map(outer) = &mut value else {
                panic!()
            };
            let Some(serde_cbor::Value::Map(fields)) = outer.values_mut().next() else {
                panic!()
            };
            for key in keys {
                assert!(fields
                    .remove(&serde_cbor::Value::Text((*key).into()))
                    .is_some());
            }
            serde_cbor::to_vec(&value).unwrap()
        };
        let optional = [
            "samples",
            "logs",
            "dropped_samples",
            "dropped_logs",
            "dropped_batches",
        ];
        assert!(agrees_with_serde::<ClientMessage>(&without(&optional)));
        // A required one missing is an error naming it.
        let err = cbor::from_slice::<ClientMessage>(&without(&["seq"])).unwrap_err();
        assert!(err.message.contains("missing field `seq`"), "{err}");
    }

    #[test]
    fn mutated_messages_are_read_as_serde_cbor_reads_them_or_refused() {
        let (mut accepted, mut refused) = (0, 0);
        for original in [
            body(&ClientMessage::Hello(hello())),
            body(&ClientMessage::Batch(full_batch())),
        ] {
            for at in 0..original.len() {
                for value in [
                    0x00,
                    0x01,
                    0x17,
                    0x18,
                    0x20,
                    0x40,
                    0x60,
                    0x61,
                    0x80,
                    0xa0,
                    0xa1,
                    0xf4,
                    0xf6,
                    0xf9,
                    0xfb,
                    0xff,
                    original[at] ^ 0x01,
                    original[at] ^ 0x80,
                ] {
                    let mut bytes = original.clone();
                    bytes[at] = value;
                    if agrees_with_serde::<ClientMessage>(&bytes) {
                        accepted += 1;
                    } else {
                        refused += 1;
                    }
                }
                // Cut short: always refused.
                assert!(!agrees_with_serde::<ClientMessage>(&original[..at]));
            }
        }
        // Both happen: the check above compared real decodes, not only errors.
        assert!(
            accepted > 500 && refused > 500,
            "accepted {accepted}, refused {refused}"
        );
    }

    #[test]
    fn oversized_header_is_rejected_before_the_body_arrives() {
        let header = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
        assert!(matches!(
            decode::<ClientMessage>(&header),
            Err(FrameError::TooLarge(n)) if n == MAX_FRAME_BYTES + 1
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut frame = vec![0, 0, 0, 16];
        frame.extend_from_slice(&[0xff; 16]);
        assert!(matches!(
            decode::<ClientMessage>(&frame),
            Err(FrameError::Malformed(_))
        ));
        // Every prefix of every byte pattern decodes to a result, never a panic.
        for seed in 0u8..=255 {
            let mut buf = vec![0, 0, 0, 8];
            buf.extend((0..8).map(|i| seed.wrapping_mul(31).wrapping_add(i)));
            let _ = decode::<ClientMessage>(&buf);
        }
    }
}
