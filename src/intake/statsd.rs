//! The StatsD / DogStatsD line format, parsed: a pure function over a byte slice (no I/O), so that
//! it can be unit-tested, fuzzed and benchmarked on its own. The UDP socket is in [`super::udp`].
//!
//! A datagram holds lines separated by `\n` (a trailing newline or `\r\n` is fine). A line is
//! `name:value|type[|@rate][|#tag:value,tag2…]`:
//! - `c`: counter, the value scaled by `1/rate`;
//! - `g`: gauge; a value written with a sign (`+3`, `-2`) changes the last value instead of setting it
//!   (etsy StatsD semantics; to set a negative gauge, send `0` first);
//! - `ms`, `h`, `d`: a distribution value (recorded `round(1/rate)` times when sampled).
//!
//! DogStatsD's container field (`|c:…`) and timestamp field (`|T…`) are accepted and ignored. Sets
//! (`s`), events (`_e{…}`), service checks (`_sc|…`) and anything else are malformed lines: counted,
//! never fatal. A tag without `:` gets an empty value.

use std::fmt;

/// Longest metric name accepted (bytes).
pub const MAX_NAME_BYTES: usize = 200;
/// Most tags on one line.
pub const MAX_TAGS: usize = 32;
/// Longest tag name or value (bytes).
pub const MAX_TAG_BYTES: usize = 200;

/// What a line asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Update {
    /// Add this (already scaled by the sample rate) to the counter.
    Count(f64),
    /// Set the gauge.
    Set(f64),
    /// Change the gauge by this much.
    Change(f64),
    /// Record this value `times` times.
    Record { value: f64, times: u64 },
}

/// One parsed line. Tags are unsorted, as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    pub name: &'a str,
    pub update: Update,
    pub tags: Vec<(&'a str, &'a str)>,
}

/// Why a line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    NotUtf8,
    NoValue,
    NoType,
    BadName,
    BadValue,
    UnknownType,
    BadRate,
    BadTags,
    UnknownField,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Malformed::NotUtf8 => "not UTF-8",
            Malformed::NoValue => "no `:value`",
            Malformed::NoType => "no `|type`",
            Malformed::BadName => "empty, too long or blank name",
            Malformed::BadValue => "value is not a finite number",
            Malformed::UnknownType => "type is not c, g, ms, h or d",
            Malformed::BadRate => "sample rate is not in (0, 1]",
            Malformed::BadTags => "too many or too long tags",
            Malformed::UnknownField => "unknown field",
        })
    }
}

/// Calls `each` for every non-empty line of `datagram`, parsed.
pub fn parse_datagram<'a>(
    datagram: &'a [u8],
    mut each: impl FnMut(Result<Line<'a>, (Malformed, &'a [u8])>),
) {
    for raw in datagram.split(|&b| b == b'\n') {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        each(parse_line(raw).map_err(|e| (e, raw)));
    }
}

/// Parses one line (without its newline).
pub fn parse_line(raw: &[u8]) -> Result<Line<'_>, Malformed> {
    let line = std::str::from_utf8(raw).map_err(|_| Malformed::NotUtf8)?;
    let mut fields = line.split('|');
    let head = fields.next().unwrap_or_default();
    let (name, value) = head.rsplit_once(':').ok_or(Malformed::NoValue)?;
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || name.starts_with('_') && (name.starts_with("_e{") || name.starts_with("_sc"))
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Malformed::BadName);
    }
    let kind = fields.next().ok_or(Malformed::NoType)?;
    let mut rate = 1.0f64;
    let mut tags = Vec::new();
    for field in fields {
        if let Some(r) = field.strip_prefix('@') {
            rate = r.parse().map_err(|_| Malformed::BadRate)?;
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(Malformed::BadRate);
            }
        } else if let Some(t) = field.strip_prefix('#') {
            for tag in t.split(',').filter(|t| !t.is_empty()) {
                let (k, v) = tag.split_once(':').unwrap_or((tag, ""));
                if tags.len() >= MAX_TAGS
                    || k.is_empty()
                    || k.len() > MAX_TAG_BYTES
                    || v.len() > MAX_TAG_BYTES
                {
                    return Err(Malformed::BadTags);
                }
                tags.push((k, v));
            }
        } else if field.starts_with("c:") || field.starts_with('T') {
            // DogStatsD container id and timestamp: accepted, not used.
        } else {
            return Err(Malformed::UnknownField);
        }
    }
    let number = |v: &str| -> Result<f64, Malformed> {
        let n: f64 = v.trim().parse().map_err(|_| Malformed::BadValue)?;
        if n.is_finite() {
            Ok(n)
        } else {
            Err(Malformed::BadValue)
        }
    };
    let update = match kind {
        "c" => Update::Count(number(value)? / rate),
        "g" => {
            let n = number(value)?;
            if value.starts_with('+') || value.starts_with('-') {
                Update::Change(n)
            } else {
                Update::Set(n)
            }
        }
        "ms" | "h" | "d" => Update::Record {
            value: number(value)?,
            times: (1.0 / rate).round().max(1.0) as u64,
        },
        _ => return Err(Malformed::UnknownType),
    };
    Ok(Line { name, update, tags })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Result<Line<'_>, Malformed> {
        parse_line(s.as_bytes())
    }

    #[test]
    fn counters_scale_by_the_sample_rate() {
        assert_eq!(one("hits:1|c").unwrap().update, Update::Count(1.0));
        assert_eq!(one("hits:3|c|@0.5").unwrap().update, Update::Count(6.0));
        assert_eq!(one("hits:1|c|@0.25").unwrap().update, Update::Count(4.0));
    }

    #[test]
    fn gauges_set_or_change() {
        assert_eq!(one("temp:21.5|g").unwrap().update, Update::Set(21.5));
        assert_eq!(one("temp:+3|g").unwrap().update, Update::Change(3.0));
        assert_eq!(one("temp:-2|g").unwrap().update, Update::Change(-2.0));
    }

    #[test]
    fn timers_histograms_and_distributions_record() {
        for t in ["ms", "h", "d"] {
            let line = format!("lat:12.5|{t}|@0.5");
            assert_eq!(
                one(&line).unwrap().update,
                Update::Record {
                    value: 12.5,
                    times: 2
                }
            );
        }
    }

    #[test]
    fn tags_and_dogstatsd_fields() {
        let l = one("req:1|c|@1|#env:prod,region:eu-west,canary|c:abc123|T1656581400").unwrap();
        assert_eq!(l.name, "req");
        assert_eq!(
            l.tags,
            vec![("env", "prod"), ("region", "eu-west"), ("canary", "")]
        );
        // A name with colons keeps them (the value follows the last colon).
        assert_eq!(one("a:b:2|c").unwrap().name, "a:b");
    }

    #[test]
    fn malformed_lines_say_why() {
        assert_eq!(one("nothing"), Err(Malformed::NoValue));
        assert_eq!(one("x:1"), Err(Malformed::NoType));
        assert_eq!(one(":1|c"), Err(Malformed::BadName));
        assert_eq!(one("a b:1|c"), Err(Malformed::BadName));
        assert_eq!(one("x:abc|c"), Err(Malformed::BadValue));
        assert_eq!(one("x:NaN|c"), Err(Malformed::BadValue));
        assert_eq!(one("x:inf|g"), Err(Malformed::BadValue));
        assert_eq!(one("x:1|s"), Err(Malformed::UnknownType));
        assert_eq!(one("x:1|c|@0"), Err(Malformed::BadRate));
        assert_eq!(one("x:1|c|@2"), Err(Malformed::BadRate));
        assert_eq!(one("x:1|c|@x"), Err(Malformed::BadRate));
        assert_eq!(one("x:1|c|zzz"), Err(Malformed::UnknownField));
        assert_eq!(one("_e{5,4}:title|text"), Err(Malformed::BadName));
        assert_eq!(parse_line(&[0xff, b':', b'1']), Err(Malformed::NotUtf8));
        let many = (0..=MAX_TAGS)
            .map(|i| format!("t{i}:v"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(one(&format!("x:1|c|#{many}")), Err(Malformed::BadTags));
    }

    #[test]
    fn datagrams_split_into_lines_and_skip_blank_ones() {
        let mut good = 0;
        let mut bad = 0;
        parse_datagram(b"a:1|c\nb:2|g\r\n\n garbage \nc:3|ms\n", |r| match r {
            Ok(_) => good += 1,
            Err(_) => bad += 1,
        });
        assert_eq!((good, bad), (3, 1));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix and byte flip of a few lines.
        let seeds: [&[u8]; 3] = [
            b"name:1|c|@0.5|#a:b,c",
            b"g:-2|g\n\xff\xfe|ms",
            b"::||@@##,,:",
        ];
        for seed in seeds {
            for len in 0..=seed.len() {
                let mut bytes = seed[..len].to_vec();
                parse_datagram(&bytes, |_| {});
                for i in 0..bytes.len() {
                    bytes[i] ^= 0x5a;
                    parse_datagram(&bytes, |_| {});
                    bytes[i] ^= 0x5a;
                }
            }
        }
    }
}
