//! Fuzz targets for everything in `appsignal-agent` that parses input from outside the process:
//!
//! - [`frame`]: bytes from `agent.socket` as the leader reads them: frame headers, CBOR bodies
//!   (each also read by `serde_cbor`'s decoder, which must agree), the `Hello` handshake,
//!   `Batch`es counted into windows and rendered as a payload.
//! - [`traceparent`]: the W3C `traceparent` header of `appsignal_create_span_from_traceparent`.
//! - [`sql`]: the SQL sanitiser (event bodies with body format 1, SQL span attributes).
//! - [`data`]: `appsignal_data_t` trees to JSON, tag values, key filtering, and log lines
//!   (logfmt / JSON / autodetect parsing of `appsignal_log` messages).
//! - [`config`]: configuration values read through a lookup (environment and `env_put` table).
//! - [`otlp_traces`]: `POST /v1/traces` bodies of the leader's OTLP/HTTP intake (protobuf and
//!   OTLP/JSON), their spans turned into samples and the samples into OTLP spans again.
//!
//! Each target is a plain function of a byte slice: it must not panic, whatever the bytes, and it
//! checks properties that must hold (an `assert!` failing is a crash to AFL). The AFL++ binaries in
//! `src/bin/` call them; `tests/corpus.rs` replays the seed corpus and every past crash through
//! them in `cargo test`. See `fuzz/run.sh` and `docs/robustness.md` ("Fuzzing").

use std::time::Duration;

use appsignal_agent::aggregate::Aggregator;
use appsignal_agent::apm::{filter, log, span, sql, ApmConfig};
use appsignal_agent::config::Config;
use appsignal_agent::data::Data;
use appsignal_agent::payload::{AgentReport, Payload};
use appsignal_agent::protocol::{self, ClientMessage};

pub mod seeds;

/// A fuzz target: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// The targets by name, for the corpus replay and the seed generator.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("traceparent", traceparent),
    ("sql", sql),
    ("data", data),
    ("config", config),
    ("otlp_traces", otlp_traces),
];

/// The leader's read path: frames are cut from a buffer as the connection task does; the first
/// message must be a `Hello`, later ones `Batch`es, which are counted into an aggregator (as the
/// leader does after journaling) and the windows rendered as payloads.
pub fn frame(data: &[u8]) {
    let mut aggregator = Aggregator::new(Duration::from_millis(30_000));
    let mut config_id = None;
    let mut rest = data;
    // Also the header check alone, as the leader does before buffering a body.
    let _ = protocol::body_len(rest);
    // Incomplete (the leader waits for more) or malformed (it closes the connection) ends it.
    while let Ok(Some((message, used))) = protocol::decode::<ClientMessage>(rest) {
        assert!(
            used > protocol::HEADER_BYTES - 1 && used <= rest.len(),
            "decode consumed {used} of {} bytes",
            rest.len()
        );
        // Differential: `serde_cbor`'s derived decoder (the reference the protocol's reader
        // replaced, docs/benchmarks.md) reads the same body to the same message.
        let body = &rest[protocol::HEADER_BYTES..used];
        // A Hello of which only the versions could be read ends the connection (after a
        // hand-over or a refusal) in the leader.
        if matches!(message, ClientMessage::HelloVersions(_)) {
            break;
        }
        // By design the protocol's reader drops (and counts) a batch's sample or log line that is
        // not valid where serde refuses the batch or takes the entry: kept plus counted add up.
        let entries = |m: &ClientMessage| match m {
            ClientMessage::Batch(b) => Some((
                b.samples.len() as u64 + b.logs.len() as u64 + b.dropped_samples + b.dropped_logs,
                b.dropped_samples + b.dropped_logs,
            )),
            _ => None,
        };
        match serde_cbor::from_slice::<ClientMessage>(body) {
            Ok(reference) => match (entries(&message), entries(&reference)) {
                (Some((ours, ours_dropped)), Some((theirs, theirs_dropped)))
                    if ours_dropped > theirs_dropped =>
                {
                    assert_eq!(ours, theirs, "entries lost")
                }
                _ => assert_eq!(
                    serde_cbor::to_vec(&message).ok(),
                    serde_cbor::to_vec(&reference).ok(),
                    "read differently from serde_cbor"
                ),
            },
            Err(e) => assert!(
                entries(&message).is_some_and(|(_, dropped)| dropped > 0),
                "accepted by the protocol's reader only: {e}"
            ),
        }
        rest = &rest[used..];
        match message {
            ClientMessage::Hello(hello) => {
                // A second Hello closes the connection in the leader; here it is simply registered.
                let _ = format!("{hello:?}");
                config_id = aggregator.register(&hello.config);
            }
            ClientMessage::Batch(batch) => {
                // A batch before the handshake closes the connection.
                let Some(config_id) = config_id else { break };
                // Re-encoding what was decoded must give a frame that decodes again.
                if let Ok(again) = protocol::encode(&ClientMessage::Batch(batch.clone())) {
                    assert!(matches!(
                        protocol::decode::<ClientMessage>(&again),
                        Ok(Some((ClientMessage::Batch(_), _)))
                    ));
                }
                let start = aggregator.window_start(batch.created_ms);
                let _ = aggregator.apply(config_id, start, "fuzz", batch, 0);
            }
            ClientMessage::HelloVersions(_) => break,
        }
    }
    for window in aggregator.take_all() {
        let payload = Payload::from_window(&window, "fuzz".into(), AgentReport::default());
        // The JSON the push sends (its gzip is not parsing and would only slow the target).
        assert!(serde_json::to_vec(&payload).is_ok());
    }
}

/// `traceparent` parsing: what is accepted has exactly the documented shape.
pub fn traceparent(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(parent) = span::parse_traceparent(&text) {
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && !s.bytes().all(|b| b == b'0')
        };
        assert!(hex(&parent.trace_id, 32), "{parent:?}");
        assert!(hex(&parent.parent_span_id, 16), "{parent:?}");
        assert!(text.contains(&parent.trace_id) && text.contains(&parent.parent_span_id));
    }
}

/// The SQL sanitiser: never longer than its input (documented), and stable when applied again
/// to its own output (what it leaves is not a literal it would replace).
pub fn sql(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let once = sql::sanitize(&text);
    assert!(
        once.len() <= text.len(),
        "output longer than input: {text:?} -> {once:?}"
    );
    let twice = sql::sanitize(&once);
    assert!(twice.len() <= once.len());
}

/// Builds a `Data` tree from bytes: a tiny stack machine, so that every byte string is a valid
/// program and nesting, keys and scalars are all reachable by mutation.
fn build_data(bytes: &[u8]) -> Data {
    fn text(bytes: &[u8], at: &mut usize) -> String {
        let len = bytes.get(*at).map_or(0, |b| usize::from(b % 24));
        *at += 1;
        let end = (*at + len).min(bytes.len());
        let s = String::from_utf8_lossy(bytes.get(*at..end).unwrap_or_default()).into_owned();
        *at = end;
        s
    }
    fn number(bytes: &[u8], at: &mut usize) -> [u8; 8] {
        let mut n = [0u8; 8];
        for slot in &mut n {
            *slot = bytes.get(*at).copied().unwrap_or(0);
            *at += 1;
        }
        n
    }
    let mut stack: Vec<(Option<String>, Data)> = vec![(None, Data::new_map())];
    let mut at = 0;
    while at < bytes.len() {
        let op = bytes[at];
        at += 1;
        // Odd ops in a map take a key first.
        let key = matches!(stack.last(), Some((_, Data::Map(_)))).then(|| text(bytes, &mut at));
        let value = match op % 10 {
            0 => Data::Null,
            1 => Data::Bool(op & 0x10 != 0),
            2 => Data::Integer(i64::from_le_bytes(number(bytes, &mut at))),
            3 => Data::Float(f64::from_le_bytes(number(bytes, &mut at))),
            4 | 5 => Data::String(text(bytes, &mut at)),
            6 if stack.len() < 80 => {
                stack.push((key, Data::new_map()));
                continue;
            }
            7 if stack.len() < 80 => {
                stack.push((key, Data::new_array()));
                continue;
            }
            8 | 9 if stack.len() > 1 => {
                // Close the innermost container and add it to its parent.
                let Some((key, done)) = stack.pop() else {
                    break;
                };
                add(&mut stack, key, done);
                continue;
            }
            _ => Data::Null,
        };
        add(&mut stack, key, value);
    }
    while stack.len() > 1 {
        let Some((key, done)) = stack.pop() else {
            break;
        };
        add(&mut stack, key, done);
    }
    stack.pop().map_or(Data::Null, |(_, d)| d)
}

fn add(stack: &mut [(Option<String>, Data)], key: Option<String>, value: Data) {
    if let Some((_, parent)) = stack.last_mut() {
        match parent {
            Data::Map(_) => {
                parent.map_set(key.unwrap_or_default(), value);
            }
            _ => {
                parent.array_append(value);
            }
        }
    }
}

/// JSON equality, with floats equal to 1e-14 relative: the text the agent writes is exact (shortest
/// round-trip form), but serde_json's default parser (without `float_roundtrip`) reads extreme
/// floats back a few units in the last place off (fuzz findings, `fuzz/regressions/data/float-*`).
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) if x.is_finite() && y.is_finite() => {
                // Subnormals (below ~2.2e-308) have fewer significant bits: compare them absolutely.
                x == y || (x - y).abs() <= 1e-14 * x.abs().max(y.abs()) || (x - y).abs() < 1e-300
            }
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same_json(vx, vy))
        }
        _ => a == b,
    }
}

/// Data trees to JSON (always valid JSON that parses back), tag values, key filtering at any
/// depth, and log lines built from a message in every format with the tree as attributes.
pub fn data(bytes: &[u8]) {
    let (message, program) = match bytes.iter().position(|&b| b == 0xff) {
        Some(split) => (&bytes[..split], &bytes[split + 1..]),
        None => (&bytes[..0], bytes),
    };
    let mut tree = build_data(program);
    let json = tree.to_json();
    let parsed: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("invalid JSON {json:?}: {e}"));
    assert!(
        same_json(&parsed, &tree.to_json_value()),
        "{parsed} != {json}"
    );
    if let Data::Map(map) = &tree {
        for value in map.values() {
            let _ = value.tag_value();
        }
    }
    let keys: Vec<String> = match &tree {
        Data::Map(map) => map.keys().take(3).cloned().collect(),
        _ => Vec::new(),
    };
    filter::filter_keys(&mut tree, &keys);
    let _ = tree.to_json();
    let message = String::from_utf8_lossy(message);
    for format in -1..=4 {
        let line = log::build_line("fuzz", 3, format, &message, Some(&tree));
        let text = line.to_json();
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
    }
    let _ = log::parse_logfmt(&message, true);
    let _ = log::parse_logfmt(&message, false);
}

/// The configuration variables, in the order a fuzz input picks them by index.
pub const CONFIG_KEYS: &[&str] = &[
    "_APPSIGNAL_ACTIVE",
    "_APPSIGNAL_APP_ENV",
    "_APPSIGNAL_APP_NAME",
    "_APPSIGNAL_CA_FILE_PATH",
    "_APPSIGNAL_DIAGNOSE",
    "_APPSIGNAL_ENABLE_HOST_METRICS",
    "_APPSIGNAL_FILES_WORLD_ACCESSIBLE",
    "_APPSIGNAL_FILTER_PARAMETERS",
    "_APPSIGNAL_FILTER_SESSION_DATA",
    "_APPSIGNAL_FLUSH_INTERVAL_MS",
    "_APPSIGNAL_HOSTNAME",
    "_APPSIGNAL_HOST_METRICS_INTERVAL_MS",
    "_APPSIGNAL_HOST_ROLE",
    "_APPSIGNAL_HTTP_PROXY",
    "_APPSIGNAL_IGNORE_ACTIONS",
    "_APPSIGNAL_IGNORE_ERRORS",
    "_APPSIGNAL_IGNORE_NAMESPACES",
    "_APPSIGNAL_LANGUAGE_INTEGRATION_VERSION",
    "_APPSIGNAL_LOG",
    "_APPSIGNAL_LOG_FILE_PATH",
    "_APPSIGNAL_LOG_LEVEL",
    "_APPSIGNAL_PAYLOAD_CACHE_MAX_BYTES",
    "_APPSIGNAL_PAYLOAD_CACHE_MAX_FILES",
    "_APPSIGNAL_PROCESS_NAME",
    "_APPSIGNAL_PUSH_API_ENDPOINT",
    "_APPSIGNAL_PUSH_API_KEY",
    "_APPSIGNAL_PUSH_TIMEOUT_MS",
    "_APPSIGNAL_RUNNING_IN_CONTAINER",
    "_APPSIGNAL_SAMPLE_RATE",
    "_APPSIGNAL_STOP_TIMEOUT_MS",
    "_APPSIGNAL_TRANSMISSION_INTERVAL_MS",
    "_APPSIGNAL_WORKING_DIRECTORY_PATH",
    "_APP_REVISION",
    // Appended, not sorted in: a key's index is its byte in the committed seeds.
    "_APPSIGNAL_REFUSED_KEY_RETRY_INTERVAL_MS",
];

/// The push key every config input gets unless it sets its own: it must never show in anything
/// the configuration prints (warnings, `Debug`, the invalid reason).
pub const FUZZ_PUSH_KEY: &str = "fuzz-push-key-5ec2e7";

/// Configuration values: each line `<index byte><value>` sets variable `CONFIG_KEYS[index]`. The
/// push key is always [`FUZZ_PUSH_KEY`] (or empty, when the input sets it to blank), so that
/// finding it in anything printed is a leak, not a coincidence.
pub fn config(data: &[u8]) {
    let mut values: Vec<(&str, String)> =
        vec![("_APPSIGNAL_PUSH_API_KEY", FUZZ_PUSH_KEY.to_owned())];
    for line in data.split(|&b| b == b'\n') {
        let Some((&index, value)) = line.split_first() else {
            continue;
        };
        let key = CONFIG_KEYS[usize::from(index) % CONFIG_KEYS.len()];
        let value = String::from_utf8_lossy(value).into_owned();
        if key == "_APPSIGNAL_PUSH_API_KEY" {
            let blank = value.trim().is_empty();
            values.push((
                key,
                if blank {
                    value
                } else {
                    FUZZ_PUSH_KEY.to_owned()
                },
            ));
        } else if value.contains(FUZZ_PUSH_KEY) {
            return;
        } else {
            values.push((key, value));
        }
    }
    let lookup = |key: &str| {
        values
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.trim().is_empty())
    };
    let loaded = Config::load_from(&lookup);
    let config = &loaded.config;
    let printed = format!(
        "{config:?} {:#?} {:?} {:?}",
        config,
        loaded.warnings,
        config.invalid_reason()
    );
    assert!(
        !printed.contains(FUZZ_PUSH_KEY),
        "the push key is printed: {printed}"
    );
    let _ = config.export_config().id();
}

/// The OTLP/HTTP intake's `/v1/traces`: the bytes decoded as a protobuf and as an OTLP/JSON
/// `ExportTraceServiceRequest`, the spans turned into samples. Every span is accounted for (in a
/// sample, rejected, or ignored); every sample is JSON that parses again (its nesting stays within
/// serde_json's limit, or the payload would drop it) and maps to exactly as many OTLP spans as it
/// holds.
pub fn otlp_traces(data: &[u8]) {
    use appsignal_agent::intake::otlp_traces::samples;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    let config = ApmConfig::default();
    let requests = [
        ExportTraceServiceRequest::decode(data).ok(),
        appsignal_agent::intake::otlp_json::trace_request(data).ok(),
    ];
    for request in requests.into_iter().flatten() {
        let spans: usize = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        let mapped = samples(request, &config);
        let in_samples: u64 = mapped.samples.iter().map(|(_, n)| n).sum();
        assert_eq!(
            in_samples + mapped.rejected + mapped.ignored,
            spans as u64,
            "spans unaccounted for: {mapped:?}"
        );
        for (sample, n) in &mapped.samples {
            // What the intake makes reads back from its JSON text (protocol 2's form) as it is.
            let json = sample.to_json();
            if sample.check().is_ok() {
                let again = appsignal_agent::sample::Sample::from_json(&json)
                    .expect("a sample that does not read again");
                assert_eq!(&again, sample, "{json}");
            }
            let exported = appsignal_agent::otlp::mapping::sample_spans(sample);
            assert_eq!(exported.len() as u64, *n, "{json}");
        }
    }
}
