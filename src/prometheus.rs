//! The cumulative view ([`crate::cumulative::Cumulative::live`]) in the Prometheus text format
//! 0.0.4 and in OpenMetrics 1.0 text: what the leader's `GET /metrics` answers. Pure: a function
//! from series to text; serving it (the listener, the bearer token, the bounds) is not here.
//!
//! Rules (also in `docs/prometheus.md`); the output is deterministic (families sorted by name,
//! series by their labels), so that two scrapes of the same state are the same bytes:
//! - **Names.** A character outside `[a-zA-Z0-9_]` becomes `_` (the colon too: it is meant for
//!   recording rules), and a name starting with a digit gets a `_` in front. A monotonic counter
//!   is exposed as `<name>_total` (`_total` is not doubled when the name already ends in it); in
//!   OpenMetrics its family is `<name>` and its sample `<name>_total`. A non-monotonic counter
//!   (see [`crate::cumulative`]) is a `gauge` under `<name>`; so is a gauge; a distribution is a
//!   `histogram` under `<name>` (`_bucket`, `_sum`, `_count`). A counter family with one
//!   non-monotonic series is a gauge as a whole.
//! - **Labels.** Every series carries `appsignal_app` and `appsignal_env`, then its tags, sorted.
//!   A character outside `[a-zA-Z0-9_]` becomes `_`; a tag name that is then empty, starts with a
//!   digit, starts with `__`, or is `le`, `quantile`, `appsignal_app` or `appsignal_env` gets the
//!   prefix `tag_`. Tags whose names become one label have their values joined with `;` in the
//!   order of their original names (as the OpenTelemetry rules do). Values are escaped (`\\`,
//!   `\"`, `\n`).
//! - **Collisions.** A family occupies its exposed names (counter `x`: `x`, `x_total`,
//!   `x_created`; gauge `x`: `x`; histogram `x`: `x`, `x_bucket`, `x_sum`, `x_count`,
//!   `x_created`). Families are taken oldest first (the earliest start of their series, then the
//!   original name): one whose names are already occupied (`a.b` after `a_b`, or one name used as
//!   two kinds) is kept out, and so is a series whose labels equal an earlier one's in its
//!   family. What is kept out is counted ([`Rendered::kept_out`]), so a scrape never fails, and a
//!   family that is exposed keeps its name as long as it lives.
//! - **Histograms.** Classic buckets at powers of two, from the sketch's exponential buckets
//!   ([`buckets`]): `le="0.0"` counts zero and negative values (when there are any); then every
//!   power of two that is a boundary of the sketch's buckets, from the first bucket held to the
//!   first power of two at or above the last. While the sketch's scale is ≥ 0 every power of two is
//!   a boundary and the counts are exact; at a negative scale `s` (a sketch whose values spanned
//!   more than its bucket budget) only every `2^-s`-th power of two is, and the buckets are that
//!   much coarser, still exact at the bounds they show. `+Inf` holds the count. In OpenMetrics
//!   `_sum` and `_count` are omitted once a negative value was recorded (the sum is then no
//!   counter, and OpenMetrics has `_count` only beside `_sum`); `+Inf` still holds the count.
//! - **Values.** Floats in the form Prometheus' own clients write (`1.0`, `1.048576e+06`, `+Inf`,
//!   `NaN`); no timestamps (the scrape's time is the sample's).

use std::collections::HashSet;
use std::fmt::Write;

use crate::cumulative::{Kind, LiveSeries, LiveState, Value};
use crate::sketch::Sketch;

pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which text format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the request's `Accept` header names it (Prometheus asks for it first),
    /// else the text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => CONTENT_TYPE_TEXT,
            Format::OpenMetrics => CONTENT_TYPE_OPENMETRICS,
        }
    }
}

/// What one rendering wrote and kept out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rendered {
    pub families: usize,
    pub series: usize,
    /// Series kept out by the collision rules (see the module doc).
    pub kept_out: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Counter,
    Gauge,
    Histogram,
}

struct Family<'a> {
    name: &'a str,
    kind: Kind,
    start_ms: u64,
    monotonic: bool,
    members: Vec<(&'a str, &'a str, &'a LiveSeries<'a>)>,
}

/// `name` with every character outside `[a-zA-Z0-9_]` as `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A metric name as exposed (without a counter's `_total`).
pub fn metric_name(name: &str) -> String {
    let s = sanitize(name);
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{s}")
    } else {
        s
    }
}

/// A tag name as a label name.
pub fn label_name(tag: &str) -> String {
    let s = sanitize(tag);
    let reserved = matches!(
        s.as_str(),
        "" | "le" | "quantile" | "appsignal_app" | "appsignal_env"
    ) || s.starts_with("__")
        || s.starts_with(|c: char| c.is_ascii_digit());
    if reserved {
        format!("tag_{s}")
    } else {
        s
    }
}

fn escape(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The labels of one series, without braces: `appsignal_app="…",appsignal_env="…",tag="…"`.
fn labels(app: &str, env: &str, tags: &[(String, String)]) -> String {
    // By label name, then by the original name: the values of tags that become one label are
    // neighbours, joined in the order of their names.
    let mut sorted: Vec<(String, &(String, String))> =
        tags.iter().map(|t| (label_name(&t.0), t)).collect();
    crate::sort::sort_by(&mut sorted, |a, b| (&a.0, &a.1 .0).cmp(&(&b.0, &b.1 .0)));
    let mut joined: Vec<(String, String)> = Vec::with_capacity(sorted.len());
    for (label, (_, value)) in sorted {
        match joined.last_mut() {
            Some((last, joined_value)) if *last == label => {
                joined_value.push(';');
                joined_value.push_str(value);
            }
            _ => joined.push((label, value.clone())),
        }
    }
    let mut out = String::from("appsignal_app=\"");
    escape(app, &mut out);
    out.push_str("\",appsignal_env=\"");
    escape(env, &mut out);
    out.push('"');
    for (name, value) in joined {
        let _ = write!(out, ",{name}=\"");
        escape(&value, &mut out);
        out.push('"');
    }
    out
}

/// `v` as Prometheus' clients write floats: Python's shortest `repr`, with Go's exponent form
/// from 1e6 up (`prometheus_client`'s `floatToGoString`, which its OpenMetrics parser demands for
/// `le`).
pub fn format_float(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    // The shortest digits that read back as `v`, and the decimal exponent of the first, from
    // `Display` (which writes them without an exponent): `{:e}` would link the standard
    // library's exponent formatting, with its fixed-precision paths, only for this.
    let sign = if v.is_sign_negative() { "-" } else { "" };
    let plain = v.abs().to_string();
    let (int, frac) = plain.split_once('.').unwrap_or((&plain, ""));
    let all = format!("{int}{frac}");
    let lead = all.bytes().take_while(|b| *b == b'0').count();
    let digits = all[lead..].trim_end_matches('0');
    let (digits, exp) = if digits.is_empty() {
        ("0", 0)
    } else {
        (digits, int.len() as i32 - 1 - lead as i32)
    };
    out.push_str(sign);
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if exp >= 6 && sign.is_empty() {
        let m = format!("{}.{}", &digits[..1], &digits[1..]);
        let m = m.trim_end_matches(['0', '.']);
        let _ = write!(out, "{m}e+0{exp}");
    } else if exp >= 0 {
        let int = exp as usize + 1;
        if digits.len() <= int {
            let _ = write!(out, "{digits}{}.0", "0".repeat(int - digits.len()));
        } else {
            let _ = write!(out, "{}.{}", &digits[..int], &digits[int..]);
        }
    } else {
        let _ = write!(out, "0.{}{digits}", "0".repeat((-exp - 1) as usize));
    }
}

/// The classic buckets of `s` (see the module doc): `(le, cumulative count)`, `+Inf` not included.
pub fn buckets(s: &Sketch) -> Vec<(f64, u64)> {
    let mut out = Vec::new();
    let mut total = s
        .negative()
        .counts()
        .iter()
        .fold(s.zero_count(), |a, n| a.saturating_add(*n));
    if total > 0 {
        out.push((0.0, total));
    }
    let scale = s.scale();
    // Boundary `b` (the upper bound of bucket `b - 1`) is 2^(b / 2^scale): a power of two when
    // `b` is a multiple of `per`.
    let per: i64 = if scale > 0 { 1 << scale } else { 1 };
    let bound = |b: i64| {
        let e = if scale >= 0 { b >> scale } else { b << -scale };
        (e as f64).exp2()
    };
    let positive = s.positive();
    let offset = i64::from(positive.offset());
    let push = |b: i64, total: u64, out: &mut Vec<(f64, u64)>| {
        let le = bound(b);
        if le > 0.0 && le.is_finite() {
            out.push((le, total));
        }
    };
    for (k, n) in positive.counts().iter().enumerate() {
        total = total.saturating_add(*n);
        let b = offset + k as i64 + 1;
        if b.rem_euclid(per) == 0 {
            push(b, total, &mut out);
        }
    }
    let end = offset + positive.counts().len() as i64;
    if !positive.counts().is_empty() && end.rem_euclid(per) != 0 {
        push(end + per - end.rem_euclid(per), total, &mut out);
    }
    out
}

/// Renders `states` in `format` into `out`.
pub fn render(format: Format, states: &[LiveState<'_>], out: &mut String) -> Rendered {
    // Every series by (name, kind), stably: each run of one (name, kind) is a family, its members
    // in the order of the states. (A sort, not a map: a map of this key would be another copy of
    // a map's code in the library.)
    let mut all: Vec<(&str, &str, &LiveSeries<'_>)> = states
        .iter()
        .flat_map(|state| state.series.iter().map(|s| (state.app, state.env, s)))
        .collect();
    crate::sort::sort_by(&mut all, |a, b| {
        (a.2.key.name.as_str(), a.2.value.kind()).cmp(&(b.2.key.name.as_str(), b.2.value.kind()))
    });
    let mut order: Vec<Family<'_>> = Vec::new();
    for (app, env, s) in all {
        let kind = s.value.kind();
        if !order
            .last()
            .is_some_and(|f| f.name == s.key.name && f.kind == kind)
        {
            order.push(Family {
                name: &s.key.name,
                kind,
                start_ms: s.start_ms,
                monotonic: true,
                members: Vec::new(),
            });
        }
        let Some(f) = order.last_mut() else {
            continue;
        };
        f.start_ms = f.start_ms.min(s.start_ms);
        if let Value::Counter { total, monotonic } = *s.value {
            f.monotonic &= monotonic && total.is_finite() && total >= 0.0;
        }
        f.members.push((app, env, s));
    }
    crate::sort::sort_by(&mut order, |a, b| {
        (a.start_ms, a.name, a.kind).cmp(&(b.start_ms, b.name, b.kind))
    });
    let mut rendered = Rendered::default();
    let mut taken: HashSet<String> = HashSet::new();
    let mut kept: Vec<(String, Type, Family<'_>)> = Vec::new();
    for f in order {
        let mut base = metric_name(f.name);
        let ty = match f.kind {
            Kind::Counter if f.monotonic => {
                if let Some(stem) = base.strip_suffix("_total") {
                    base = stem.to_owned();
                }
                Type::Counter
            }
            Kind::Counter | Kind::Gauge => Type::Gauge,
            Kind::Distribution => Type::Histogram,
        };
        let suffixes: &[&str] = match ty {
            Type::Counter => &["", "_total", "_created"],
            Type::Gauge => &[""],
            Type::Histogram => &["", "_bucket", "_sum", "_count", "_created"],
        };
        let names: Vec<String> = suffixes.iter().map(|s| format!("{base}{s}")).collect();
        if base.is_empty() || names.iter().any(|n| taken.contains(n)) {
            rendered.kept_out += f.members.len() as u64;
            continue;
        }
        taken.extend(names);
        kept.push((base, ty, f));
    }
    crate::sort::sort_by(&mut kept, |a, b| a.0.cmp(&b.0));
    for (base, ty, f) in &kept {
        let mut series: Vec<(String, &LiveSeries<'_>)> = f
            .members
            .iter()
            .map(|(app, env, s)| (labels(app, env, &s.key.tags), *s))
            .collect();
        crate::sort::sort_by(&mut series, |a, b| {
            (&a.0, a.1.start_ms).cmp(&(&b.0, b.1.start_ms))
        });
        let before = series.len();
        series.dedup_by(|later, earlier| later.0 == earlier.0);
        rendered.kept_out += (before - series.len()) as u64;
        rendered.families += 1;
        rendered.series += series.len();
        let (family, type_name) = match (ty, format) {
            (Type::Counter, Format::Text) => (format!("{base}_total"), "counter"),
            (Type::Counter, Format::OpenMetrics) => (base.clone(), "counter"),
            (Type::Gauge, _) => (base.clone(), "gauge"),
            (Type::Histogram, _) => (base.clone(), "histogram"),
        };
        let _ = writeln!(out, "# TYPE {family} {type_name}");
        for (labels, s) in series {
            match &*s.value {
                Value::Counter { total, .. } => {
                    let suffix = if *ty == Type::Counter { "_total" } else { "" };
                    let _ = write!(out, "{base}{suffix}{{{labels}}} ");
                    format_float(*total, out);
                    out.push('\n');
                }
                Value::Gauge(g) => {
                    let _ = write!(out, "{base}{{{labels}}} ");
                    format_float(g.value, out);
                    out.push('\n');
                }
                Value::Distribution(d) => histogram(format, base, &labels, d, out),
            }
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    rendered
}

fn histogram(format: Format, base: &str, labels: &str, d: &Sketch, out: &mut String) {
    for (le, count) in buckets(d) {
        let _ = write!(out, "{base}_bucket{{{labels},le=\"");
        format_float(le, out);
        let _ = writeln!(out, "\"}} {count}");
    }
    let count = d.count();
    let _ = writeln!(out, "{base}_bucket{{{labels},le=\"+Inf\"}} {count}");
    // OpenMetrics: a sum that may go down is no counter, and `_count` comes only with `_sum`.
    if format == Format::Text || d.min().map_or(true, |m| m >= 0.0) {
        let _ = write!(out, "{base}_sum{{{labels}}} ");
        format_float(d.sum(), out);
        let _ = writeln!(out, "\n{base}_count{{{labels}}} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{GaugeValue, MetricKey};

    fn key(name: &str, tags: &[(&str, &str)]) -> MetricKey {
        MetricKey {
            name: name.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn counter(total: f64) -> Value {
        Value::Counter {
            total,
            monotonic: true,
        }
    }

    fn sketch(values: &[f64]) -> Sketch {
        let mut s = Sketch::new();
        for v in values {
            s.add(*v);
        }
        s
    }

    fn render_all(format: Format, series: Vec<(MetricKey, u64, Value)>) -> (String, Rendered) {
        let live: Vec<LiveSeries<'_>> = series
            .iter()
            .map(|(key, start_ms, value)| LiveSeries::new(key, *start_ms, value.clone()))
            .collect();
        let states = [LiveState {
            app: "shop",
            env: "prod",
            series: live,
        }];
        let mut out = String::new();
        let r = render(format, &states, &mut out);
        (out, r)
    }

    #[test]
    fn floats_are_written_as_prometheus_clients_write_them() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.5, "0.5"),
            (1024.0, "1024.0"),
            (1048576.0, "1.048576e+06"),
            (1e15, "1e+015"),
            (1e16, "1e+16"),
            (2f64.powi(-15), "3.0517578125e-05"),
            (0.0001220703125, "0.0001220703125"),
            (123456.0, "123456.0"),
            (-1048576.0, "-1048576.0"),
            (1.2345678901234568e16, "1.2345678901234568e+16"),
            (5e-324, "5e-324"),
            (0.1, "0.1"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ];
        for (v, expected) in cases {
            let mut out = String::new();
            format_float(v, &mut out);
            assert_eq!(out, expected, "{v:e}");
        }
    }

    #[test]
    fn names_and_labels_follow_the_rules() {
        assert_eq!(metric_name("bars.requests"), "bars_requests");
        assert_eq!(metric_name("9lives-x:y"), "_9lives_x_y");
        assert_eq!(metric_name("zürich"), "z_rich");
        assert_eq!(label_name("region"), "region");
        assert_eq!(label_name("le"), "tag_le");
        assert_eq!(label_name("quantile"), "tag_quantile");
        assert_eq!(label_name("__name__"), "tag___name__");
        assert_eq!(label_name("appsignal_app"), "tag_appsignal_app");
        assert_eq!(label_name("1st"), "tag_1st");
        assert_eq!(label_name(""), "tag_");
        assert_eq!(label_name("http.method"), "http_method");
        let (text, r) = render_all(
            Format::Text,
            vec![(key("bars.requests", &[("region", "eu")]), 0, counter(5.0))],
        );
        assert_eq!(
            text,
            "# TYPE bars_requests_total counter\n\
             bars_requests_total{appsignal_app=\"shop\",appsignal_env=\"prod\",region=\"eu\"} 5.0\n"
        );
        assert_eq!((r.families, r.series, r.kept_out), (1, 1, 0));
        let (om, _) = render_all(
            Format::OpenMetrics,
            vec![(key("jobs_total", &[]), 0, counter(2.0))],
        );
        assert_eq!(
            om,
            "# TYPE jobs counter\n\
             jobs_total{appsignal_app=\"shop\",appsignal_env=\"prod\"} 2.0\n# EOF\n"
        );
    }

    #[test]
    fn label_values_are_escaped_and_colliding_tags_joined() {
        let (text, _) = render_all(
            Format::Text,
            vec![(
                key(
                    "g",
                    &[
                        ("a.b", "x"),
                        ("a_b", "y"),
                        ("le", "q\"\\\n"),
                        ("tag_le", "z"),
                    ],
                ),
                0,
                Value::Gauge(GaugeValue {
                    value: -1.5,
                    at_ms: 1,
                }),
            )],
        );
        assert_eq!(
            text,
            "# TYPE g gauge\n\
             g{appsignal_app=\"shop\",appsignal_env=\"prod\",a_b=\"x;y\",tag_le=\"q\\\"\\\\\\n;z\"} -1.5\n"
        );
    }

    #[test]
    fn colliding_families_keep_the_oldest_and_count_the_rest() {
        let series = vec![
            (key("a_b", &[]), 10, counter(1.0)),
            // Same exposed name, started later: kept out.
            (key("a.b", &[]), 20, counter(2.0)),
            // One name as two kinds: the counter `x` occupies `x`.
            (key("x", &[]), 5, counter(1.0)),
            (
                key("x", &[]),
                6,
                Value::Gauge(GaugeValue {
                    value: 1.0,
                    at_ms: 1,
                }),
            ),
            // A gauge named like a histogram's sample.
            (key("h", &[]), 1, Value::Distribution(sketch(&[1.0]))),
            (
                key("h.count", &[]),
                2,
                Value::Gauge(GaugeValue {
                    value: 1.0,
                    at_ms: 1,
                }),
            ),
            // Two series whose labels become equal: the later is kept out.
            (key("t", &[("k.1", "v")]), 1, counter(1.0)),
            (key("t", &[("k_1", "v")]), 2, counter(1.0)),
        ];
        let (text, r) = render_all(Format::Text, series.clone());
        assert_eq!(r.kept_out, 4, "{text}");
        assert!(text.contains("a_b_total{appsignal_app=\"shop\",appsignal_env=\"prod\"} 1.0"));
        assert!(!text.contains("# TYPE x gauge"));
        assert!(
            !text.contains("h_count{appsignal_app=\"shop\",appsignal_env=\"prod\"} 1.0\nh_count")
        );
        assert_eq!(text.matches("t_total{").count(), 1);
        // The same in OpenMetrics, and twice the same bytes.
        let (om, r) = render_all(Format::OpenMetrics, series.clone());
        assert_eq!(r.kept_out, 4);
        assert_eq!(render_all(Format::OpenMetrics, series).0, om);
    }

    #[test]
    fn a_non_monotonic_counter_is_a_gauge_without_total() {
        let (text, _) = render_all(
            Format::Text,
            vec![
                (key("queue", &[("q", "a")]), 0, counter(3.0)),
                (
                    key("queue", &[("q", "b")]),
                    0,
                    Value::Counter {
                        total: -2.0,
                        monotonic: false,
                    },
                ),
            ],
        );
        assert!(text.starts_with("# TYPE queue gauge\n"), "{text}");
        assert!(text.contains("queue{appsignal_app=\"shop\",appsignal_env=\"prod\",q=\"b\"} -2.0"));
    }

    #[test]
    fn histogram_buckets_are_powers_of_two_and_exact_at_a_scale_of_zero_or_more() {
        let s = sketch(&[0.0, -3.0, 1.0, 1.5, 2.0, 3.0, 1000.0]);
        assert!(s.scale() >= 0);
        let b = buckets(&s);
        assert_eq!(b.first(), Some(&(0.0, 2)));
        let at = |le: f64| b.iter().find(|(l, _)| *l == le).map(|(_, n)| *n);
        assert_eq!(at(1.0), Some(3), "le is inclusive: 1.0 counts in le=1");
        assert_eq!(at(2.0), Some(5));
        assert_eq!(at(4.0), Some(6));
        assert_eq!(at(512.0), Some(6));
        assert_eq!(b.last(), Some(&(1024.0, 7)));
        let les: Vec<f64> = b.iter().map(|(l, _)| *l).collect();
        assert_eq!(
            les,
            [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]
        );
        // A sketch at a negative scale (merged from one that had to lower it): coarser bounds,
        // every 2^-scale-th power of two, still exact at the bounds shown.
        let wide = Sketch::try_from(crate::sketch::SketchWire {
            scale: -2,
            zero_count: 0,
            positive_offset: -3,
            positive: vec![1, 0, 2, 1, 0, 1],
            negative_offset: 0,
            negative: vec![],
            count: 5,
            sum: 1.0,
            min: 1e-3,
            max: 1e7,
        })
        .unwrap();
        // Bucket i holds (2^(4i), 2^(4i+4)]: bounds 2^-8, 2^-4, 1, 2^4, 2^8, 2^12.
        let expected: Vec<(f64, u64)> = [(-8, 1), (-4, 1), (0, 3), (4, 4), (8, 4), (12, 5)]
            .iter()
            .map(|(e, n)| (f64::from(*e).exp2(), *n))
            .collect();
        assert_eq!(buckets(&wide), expected);
        // Bounds beyond f64 are left to +Inf.
        let mut huge = sketch(&[f64::MAX / 2.0]);
        huge.merge(
            &Sketch::try_from(crate::sketch::SketchWire {
                scale: -10,
                zero_count: 0,
                positive_offset: 1,
                positive: vec![1],
                negative_offset: 0,
                negative: vec![],
                count: 1,
                sum: 1.0,
                min: 1.0,
                max: 1.0,
            })
            .unwrap(),
        );
        assert!(buckets(&huge).iter().all(|(le, _)| le.is_finite()));
        // Rendered: +Inf, _sum and _count; no _sum in OpenMetrics once a value was negative.
        let series = vec![(key("lat", &[]), 0, Value::Distribution(s))];
        let (text, _) = render_all(Format::Text, series.clone());
        assert!(text
            .contains("lat_bucket{appsignal_app=\"shop\",appsignal_env=\"prod\",le=\"1.0\"} 3\n"));
        assert!(text.contains("le=\"+Inf\"} 7\nlat_sum{appsignal_app=\"shop\",appsignal_env=\"prod\"} 1004.5\nlat_count"));
        let (om, _) = render_all(Format::OpenMetrics, series);
        assert!(!om.contains("lat_sum") && !om.contains("lat_count"));
        assert!(om.ends_with("le=\"+Inf\"} 7\n# EOF\n"));
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Text);
        assert_eq!(Format::from_accept(None).content_type(), CONTENT_TYPE_TEXT);
        assert_eq!(Format::OpenMetrics.content_type(), CONTENT_TYPE_OPENMETRICS);
    }
}

/// The output read by `prometheus_client`'s own parsers (PyPI), in a virtualenv made once under
/// `target/prometheus-venv` (a skip without Python or network, a failure in CI).
#[cfg(test)]
mod parsed_by_prometheus_client {
    use super::*;
    use crate::protocol::{GaugeValue, MetricKey};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const PACKAGE: &str = "prometheus_client==0.26.0";

    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as text
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
out = {}
for name, parse, path in (("text", text, sys.argv[1]), ("om", om, sys.argv[2])):
    families = parse(open(path, encoding="utf-8").read())
    out[name] = sorted([f.name, f.type, [[s.name, s.labels, s.value] for s in f.samples]]
                       for f in families)
print(json.dumps(out))
"#;

    /// The virtualenv's Python, made now if missing (into a temporary directory, then renamed,
    /// so that concurrent runs never see half of one).
    fn python() -> Result<PathBuf, String> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        let venv = target.join("prometheus-venv");
        let python = venv.join("bin/python");
        if python.exists() {
            return Ok(python);
        }
        let tmp = target.join(format!("prometheus-venv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
            }
        };
        run(Command::new("python3").arg("-m").arg("venv").arg(&tmp))?;
        run(Command::new(tmp.join("bin/pip")).args(["install", "-q", PACKAGE]))?;
        match std::fs::rename(&tmp, &venv) {
            Ok(()) => Ok(python),
            // Made by another run meanwhile.
            Err(_) if python.exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(python)
            }
            Err(e) => Err(format!("cannot rename {}: {e}", tmp.display())),
        }
    }

    #[test]
    fn both_formats_parse_with_the_reference_parsers() {
        let python = match python() {
            Ok(p) => p,
            Err(missing) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "no Python with {PACKAGE}: {missing}"
                );
                eprintln!("SKIPPED: no Python with {PACKAGE}: {missing}");
                return;
            }
        };
        let key = |name: &str, tags: &[(&str, &str)]| MetricKey {
            name: name.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut lat = Sketch::new();
        for v in [0.0, 0.25, 1.0, 3.0, 1500.0, 2e6, 0.003] {
            lat.add(v);
        }
        let mut neg = Sketch::new();
        neg.add(-2.0);
        neg.add(5.0);
        let series = [
            (
                key("bars.requests", &[("region", "eu"), ("le", "x\"y\\z\nw")]),
                counter(5.0),
            ),
            (key("bars.requests", &[("region", "us")]), counter(1e20)),
            (key("jobs_total", &[]), counter(2.5)),
            (
                key("queue.depth", &[("q", "a")]),
                Value::Gauge(GaugeValue {
                    value: -3.5,
                    at_ms: 1,
                }),
            ),
            (
                key("balance", &[]),
                Value::Counter {
                    total: -4.0,
                    monotonic: false,
                },
            ),
            (
                key("http.latency", &[("path", "/")]),
                Value::Distribution(lat),
            ),
            (key("temps", &[]), Value::Distribution(neg)),
            (key("empty", &[]), Value::Distribution(Sketch::new())),
            // Kept out by the rules, so that the parsers never see a collision.
            (
                key("bars_requests", &[]),
                Value::Gauge(GaugeValue {
                    value: 1.0,
                    at_ms: 1,
                }),
            ),
            (
                key("http.latency.count", &[]),
                Value::Gauge(GaugeValue {
                    value: 1.0,
                    at_ms: 1,
                }),
            ),
        ];
        let live: Vec<LiveSeries<'_>> = series
            .iter()
            .enumerate()
            .map(|(i, (key, value))| LiveSeries::new(key, i as u64, value.clone()))
            .collect();
        let states = [LiveState {
            app: "shop \"1\"",
            env: "prod",
            series: live,
        }];
        let dir = tempfile::tempdir().unwrap();
        let (text, om) = (dir.path().join("text"), dir.path().join("om"));
        let mut body = String::new();
        assert_eq!(render(Format::Text, &states, &mut body).kept_out, 2);
        std::fs::write(&text, &body).unwrap();
        body.clear();
        render(Format::OpenMetrics, &states, &mut body);
        std::fs::write(&om, &body).unwrap();
        let out = Command::new(python)
            .arg("-c")
            .arg(SCRIPT)
            .arg(&text)
            .arg(&om)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{body}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for format in ["text", "om"] {
            let families: Vec<(String, String)> = parsed[format]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    (
                        f[0].as_str().unwrap().to_owned(),
                        f[1].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            let expected = [
                ("balance", "gauge"),
                ("bars_requests", "counter"),
                ("empty", "histogram"),
                ("http_latency", "histogram"),
                ("jobs", "counter"),
                ("queue_depth", "gauge"),
                ("temps", "histogram"),
            ];
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect();
            assert_eq!(families, expected, "{format}");
            let samples = parsed[format][1][2].as_array().unwrap();
            let eu = samples.iter().find(|s| s[1]["region"] == "eu").unwrap();
            assert_eq!(eu[0], "bars_requests_total");
            assert_eq!(eu[1]["tag_le"], "x\"y\\z\nw");
            assert_eq!(eu[1]["appsignal_app"], "shop \"1\"");
            assert_eq!(eu[2], 5.0);
        }
    }

    fn counter(total: f64) -> Value {
        Value::Counter {
            total,
            monotonic: true,
        }
    }
}
