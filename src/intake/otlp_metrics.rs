//! OTLP metrics turned into the leader's own kinds (pure: no I/O). Sums become counters (delta
//! points as they are; cumulative points as the difference to the stream's previous point),
//! gauges stay gauges, histograms with explicit buckets become distributions. Exponential
//! histograms, summaries, unspecified temporalities and points without a usable value are
//! rejected and counted (they go back to the sender as `partial_success`).
//!
//! Cumulative streams: the first point of a stream this leader has not seen is a baseline and
//! counts nothing, unless the stream started (`start_time_unix_nano`) after this converter was
//! created (then everything in it is new): so a new leader never counts a sender's whole history a
//! second time. A point with another start time, or lower than the previous one, is a reset: its
//! value is all new. A non-monotonic cumulative sum (an up-down counter) is a level, not a count:
//! it becomes a gauge. At most [`MAX_STREAMS`] cumulative streams are remembered; streams not seen
//! for [`STREAM_TTL_MS`] make room; beyond that, points of new streams are rejected.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, HistogramDataPoint, NumberDataPoint,
};

use super::pending::Pending;
use crate::protocol::MetricKey;
use crate::sketch::Sketch;

pub const MAX_STREAMS: usize = 10_000;
pub const STREAM_TTL_MS: u64 = 10 * 60 * 1000;
/// Longest metric name, attribute key or (rendered) attribute value accepted (bytes).
pub const MAX_NAME_BYTES: usize = 200;
/// Most attributes on one point (with `service.name`).
pub const MAX_ATTRIBUTES: usize = 32;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum StreamKind {
    Sum,
    Histogram,
}

enum Previous {
    Sum(f64),
    Histogram {
        bounds: Vec<f64>,
        counts: Vec<u64>,
        sum: f64,
    },
}

struct Stream {
    start_ns: u64,
    previous: Previous,
    seen_ms: u64,
}

/// What one request gave.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub accepted: u64,
    pub rejected: u64,
    /// Why the first rejected point was rejected.
    pub reason: Option<String>,
}

impl Outcome {
    fn reject(&mut self, n: u64, why: impl FnOnce() -> String) {
        self.rejected = self.rejected.saturating_add(n);
        if n > 0 && self.reason.is_none() {
            self.reason = Some(why());
        }
    }
}

pub struct Converter {
    pub pending: Pending,
    streams: HashMap<(StreamKind, MetricKey), Stream>,
    created_ns: u64,
}

impl Converter {
    pub fn new(now_ms: u64) -> Converter {
        Converter {
            pending: Pending::default(),
            streams: HashMap::new(),
            created_ns: now_ms.saturating_mul(1_000_000),
        }
    }

    /// Adds a request's points to `pending`.
    pub fn export(&mut self, request: ExportMetricsServiceRequest, now_ms: u64) -> Outcome {
        let mut outcome = Outcome::default();
        for rm in request.resource_metrics {
            let service = rm.resource.as_ref().and_then(|r| {
                r.attributes
                    .iter()
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(render)
            });
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    self.metric(m, service.as_deref(), now_ms, &mut outcome);
                }
            }
        }
        outcome
    }

    fn metric(
        &mut self,
        m: opentelemetry_proto::tonic::metrics::v1::Metric,
        service: Option<&str>,
        now_ms: u64,
        outcome: &mut Outcome,
    ) {
        let points = |d: &metric::Data| -> u64 {
            (match d {
                metric::Data::Gauge(g) => g.data_points.len(),
                metric::Data::Sum(s) => s.data_points.len(),
                metric::Data::Histogram(h) => h.data_points.len(),
                metric::Data::ExponentialHistogram(h) => h.data_points.len(),
                metric::Data::Summary(s) => s.data_points.len(),
            }) as u64
        };
        let Some(data) = m.data else {
            return;
        };
        if m.name.is_empty() || m.name.len() > MAX_NAME_BYTES {
            outcome.reject(points(&data), || {
                format!("metric name empty or over {MAX_NAME_BYTES} bytes")
            });
            return;
        }
        let name = m.name;
        match data {
            metric::Data::Gauge(g) => {
                for p in g.data_points {
                    self.number(&name, p, service, outcome, |c, key, v| {
                        c.pending.set_gauge(key, v, now_ms);
                        None
                    });
                }
            }
            metric::Data::Sum(s) => {
                let temporality = AggregationTemporality::try_from(s.aggregation_temporality)
                    .unwrap_or(AggregationTemporality::Unspecified);
                for p in s.data_points {
                    match temporality {
                        AggregationTemporality::Delta => {
                            self.number(&name, p, service, outcome, |c, key, v| {
                                c.pending.count(key, v);
                                None
                            })
                        }
                        AggregationTemporality::Cumulative if !s.is_monotonic => {
                            self.number(&name, p, service, outcome, |c, key, v| {
                                c.pending.set_gauge(key, v, now_ms);
                                None
                            })
                        }
                        AggregationTemporality::Cumulative => {
                            let start = p.start_time_unix_nano;
                            self.number(&name, p, service, outcome, |c, key, v| {
                                c.cumulative_sum(key, start, v, now_ms)
                            })
                        }
                        AggregationTemporality::Unspecified => outcome.reject(1, || {
                            format!("sum {name:?}: aggregation temporality unspecified")
                        }),
                    }
                }
            }
            metric::Data::Histogram(h) => {
                let temporality = AggregationTemporality::try_from(h.aggregation_temporality)
                    .unwrap_or(AggregationTemporality::Unspecified);
                for p in h.data_points {
                    self.histogram(&name, p, temporality, service, now_ms, outcome);
                }
            }
            other => {
                let n = points(&other);
                outcome.reject(n, || {
                    format!("{name:?}: exponential histograms and summaries are not accepted")
                });
            }
        }
    }

    fn number(
        &mut self,
        name: &str,
        p: NumberDataPoint,
        service: Option<&str>,
        outcome: &mut Outcome,
        apply: impl FnOnce(&mut Converter, MetricKey, f64) -> Option<String>,
    ) {
        let value = match p.value {
            Some(number_data_point::Value::AsDouble(v)) if v.is_finite() => v,
            Some(number_data_point::Value::AsInt(v)) => v as f64,
            _ => return outcome.reject(1, || format!("{name:?}: a point without a finite value")),
        };
        let key = match key(name, &p.attributes, service) {
            Ok(k) => k,
            Err(why) => return outcome.reject(1, || format!("{name:?}: {why}")),
        };
        match apply(self, key, value) {
            None => outcome.accepted += 1,
            Some(why) => outcome.reject(1, || format!("{name:?}: {why}")),
        }
    }

    /// Room for a new cumulative stream (evicting streams not seen for a while when full).
    fn room(&mut self, now_ms: u64) -> bool {
        if self.streams.len() < MAX_STREAMS {
            return true;
        }
        self.streams
            .retain(|_, s| now_ms.saturating_sub(s.seen_ms) < STREAM_TTL_MS);
        self.streams.len() < MAX_STREAMS
    }

    fn cumulative_sum(
        &mut self,
        key: MetricKey,
        start_ns: u64,
        value: f64,
        now_ms: u64,
    ) -> Option<String> {
        let stream_key = (StreamKind::Sum, key);
        let delta = match self.streams.get_mut(&stream_key) {
            Some(s) => {
                let previous = match s.previous {
                    Previous::Sum(v) => v,
                    Previous::Histogram { .. } => 0.0,
                };
                let delta = if s.start_ns != start_ns || value < previous {
                    value
                } else {
                    value - previous
                };
                *s = Stream {
                    start_ns,
                    previous: Previous::Sum(value),
                    seen_ms: now_ms,
                };
                delta
            }
            None => {
                if !self.room(now_ms) {
                    return Some(format!("more than {MAX_STREAMS} cumulative streams"));
                }
                self.streams.insert(
                    stream_key.clone(),
                    Stream {
                        start_ns,
                        previous: Previous::Sum(value),
                        seen_ms: now_ms,
                    },
                );
                if start_ns != 0 && start_ns >= self.created_ns {
                    value
                } else {
                    0.0
                }
            }
        };
        if delta != 0.0 {
            self.pending.count(stream_key.1, delta);
        }
        None
    }

    fn histogram(
        &mut self,
        name: &str,
        p: HistogramDataPoint,
        temporality: AggregationTemporality,
        service: Option<&str>,
        now_ms: u64,
        outcome: &mut Outcome,
    ) {
        let bounds_ok = p.explicit_bounds.iter().all(|b| b.is_finite())
            && p.explicit_bounds.windows(2).all(|w| w[0] < w[1])
            && (p.bucket_counts.is_empty() || p.bucket_counts.len() == p.explicit_bounds.len() + 1)
            && p.bucket_counts
                .iter()
                .try_fold(0u64, |total, &n| total.checked_add(n))
                .is_some_and(|total| total == p.count || p.bucket_counts.is_empty());
        if !bounds_ok {
            return outcome.reject(1, || {
                format!("histogram {name:?}: bounds, bucket counts and count do not agree")
            });
        }
        let key = match key(name, &p.attributes, service) {
            Ok(k) => k,
            Err(why) => return outcome.reject(1, || format!("{name:?}: {why}")),
        };
        // A point with a count and no buckets is one bucket holding everything.
        let (bounds, bucket_counts) = if p.bucket_counts.is_empty() {
            (Vec::new(), vec![p.count])
        } else {
            (p.explicit_bounds.clone(), p.bucket_counts.clone())
        };
        let sum = p.sum.unwrap_or(0.0);
        let (counts, sum, min, max) = match temporality {
            AggregationTemporality::Delta => (bucket_counts.clone(), sum, p.min, p.max),
            AggregationTemporality::Cumulative => {
                let stream_key = (StreamKind::Histogram, key.clone());
                let now = Stream {
                    start_ns: p.start_time_unix_nano,
                    previous: Previous::Histogram {
                        bounds: bounds.clone(),
                        counts: bucket_counts.clone(),
                        sum,
                    },
                    seen_ms: now_ms,
                };
                let delta = match self.streams.get(&stream_key) {
                    Some(Stream {
                        start_ns,
                        previous:
                            Previous::Histogram {
                                bounds: previous_bounds,
                                counts,
                                sum: previous_sum,
                            },
                        ..
                    }) if *start_ns == p.start_time_unix_nano
                        && *previous_bounds == bounds
                        && counts.len() == bucket_counts.len()
                        && counts.iter().zip(&bucket_counts).all(|(a, b)| a <= b) =>
                    {
                        let d: Vec<u64> = bucket_counts
                            .iter()
                            .zip(counts)
                            .map(|(now, before)| now - before)
                            .collect();
                        Some((d, sum - previous_sum))
                    }
                    Some(_) => Some((bucket_counts.clone(), sum)),
                    None => {
                        if !self.room(now_ms) {
                            return outcome.reject(1, || {
                                format!("more than {MAX_STREAMS} cumulative streams")
                            });
                        }
                        let new = p.start_time_unix_nano != 0
                            && p.start_time_unix_nano >= self.created_ns;
                        new.then(|| (bucket_counts.clone(), sum))
                    }
                };
                self.streams.insert(stream_key, now);
                match delta {
                    Some((counts, sum)) => (counts, sum, None, None),
                    None => {
                        outcome.accepted += 1;
                        return;
                    }
                }
            }
            AggregationTemporality::Unspecified => {
                return outcome.reject(1, || {
                    format!("histogram {name:?}: aggregation temporality unspecified")
                })
            }
        };
        if let Some(sketch) = sketch(&bounds, &counts, sum, min, max) {
            self.pending.merge(key, &sketch);
        }
        outcome.accepted += 1;
    }
}

/// A sketch of explicit-bucket counts: each bucket's count recorded at a representative value
/// (its midpoint; the open ends at their bound, clamped into `[min, max]` when known), with the
/// exact sum, min and max. `None` when empty.
pub fn sketch(
    bounds: &[f64],
    counts: &[u64],
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
) -> Option<Sketch> {
    let mut s = Sketch::new();
    for (i, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let value = match (i.checked_sub(1).and_then(|j| bounds.get(j)), bounds.get(i)) {
            (Some(low), Some(high)) => (low + high) / 2.0,
            (None, Some(high)) => min.unwrap_or(*high),
            (Some(low), None) => max.unwrap_or(*low),
            (None, None) => {
                if n > 0 {
                    sum / n as f64
                } else {
                    0.0
                }
            }
        };
        let value = match (min, max) {
            (Some(lo), Some(hi)) if lo <= hi => value.clamp(lo, hi),
            _ => value,
        };
        s.add_n(value, n);
    }
    if s.count() == 0 {
        return None;
    }
    s.set_exact(sum, min, max);
    Some(s)
}

/// A point's attributes (and the resource's `service.name`) as sorted tags.
fn key(name: &str, attributes: &[KeyValue], service: Option<&str>) -> Result<MetricKey, String> {
    if attributes.len() + usize::from(service.is_some()) > MAX_ATTRIBUTES {
        return Err(format!("more than {MAX_ATTRIBUTES} attributes"));
    }
    let mut tags = Vec::with_capacity(attributes.len() + 1);
    for kv in attributes {
        let value = kv.value.as_ref().and_then(render).unwrap_or_default();
        if kv.key.is_empty() || kv.key.len() > MAX_NAME_BYTES || value.len() > MAX_NAME_BYTES {
            return Err(format!(
                "attribute key empty, or key or value over {MAX_NAME_BYTES} bytes"
            ));
        }
        tags.push((kv.key.clone(), value));
    }
    if let Some(service) = service {
        if !tags.iter().any(|(k, _)| k == "service.name") && service.len() <= MAX_NAME_BYTES {
            tags.push(("service.name".to_owned(), service.to_owned()));
        }
    }
    crate::sort::sort(&mut tags);
    tags.dedup_by(|a, b| a.0 == b.0);
    Ok(MetricKey {
        name: name.to_owned(),
        tags,
    })
}

/// An attribute value as tag text (arrays and maps as compact JSON-like text, bytes as hex).
fn render(v: &AnyValue) -> Option<String> {
    Some(match v.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        any_value::Value::BytesValue(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        any_value::Value::ArrayValue(a) => format!(
            "[{}]",
            a.values
                .iter()
                .map(|v| render(v).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(",")
        ),
        any_value::Value::KvlistValue(l) => format!(
            "{{{}}}",
            l.values
                .iter()
                .map(|kv| format!(
                    "{}={}",
                    kv.key,
                    kv.value.as_ref().and_then(render).unwrap_or_default()
                ))
                .collect::<Vec<_>>()
                .join(",")
        ),
        any_value::Value::StringValueStrindex(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Histogram, Metric, ResourceMetrics, ScopeMetrics, Sum,
    };

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn point(start: u64, v: f64) -> NumberDataPoint {
        NumberDataPoint {
            start_time_unix_nano: start,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        }
    }

    fn sum(
        name: &str,
        temporality: AggregationTemporality,
        points: Vec<NumberDataPoint>,
    ) -> Metric {
        Metric {
            name: name.into(),
            data: Some(metric::Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: temporality as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        }
    }

    fn counters(c: &mut Converter) -> Vec<(String, f64)> {
        let b = c
            .pending
            .take_batch(1, 1, 0)
            .map(|b| b.counters)
            .unwrap_or_default();
        let mut v: Vec<_> = b.into_iter().map(|(k, v)| (k.name, v)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn cumulative_sums_become_deltas_per_stream() {
        let mut c = Converter::new(1_000);
        let old = 5; // started before this converter: the first point is a baseline
        let new = 2_000_000_000; // started after it: all of it is new
        let out = c.export(
            request(vec![
                sum(
                    "old",
                    AggregationTemporality::Cumulative,
                    vec![point(old, 100.0)],
                ),
                sum(
                    "new",
                    AggregationTemporality::Cumulative,
                    vec![point(new, 7.0)],
                ),
            ]),
            2_000,
        );
        assert_eq!(out.accepted, 2);
        assert_eq!(counters(&mut c), vec![("new".into(), 7.0)]);
        c.export(
            request(vec![
                sum(
                    "old",
                    AggregationTemporality::Cumulative,
                    vec![point(old, 130.0)],
                ),
                sum(
                    "new",
                    AggregationTemporality::Cumulative,
                    vec![point(new, 10.0)],
                ),
            ]),
            3_000,
        );
        assert_eq!(
            counters(&mut c),
            vec![("new".into(), 3.0), ("old".into(), 30.0)]
        );
        // A reset (new start time): its value is all new.
        c.export(
            request(vec![sum(
                "old",
                AggregationTemporality::Cumulative,
                vec![point(9, 4.0)],
            )]),
            4_000,
        );
        assert_eq!(counters(&mut c), vec![("old".into(), 4.0)]);
    }

    #[test]
    fn unsupported_kinds_and_bad_points_are_rejected_with_a_reason() {
        let mut c = Converter::new(0);
        let out = c.export(
            request(vec![
                sum(
                    "u",
                    AggregationTemporality::Unspecified,
                    vec![point(0, 1.0)],
                ),
                sum(
                    "nan",
                    AggregationTemporality::Delta,
                    vec![point(0, f64::NAN)],
                ),
                Metric {
                    name: "h".into(),
                    data: Some(metric::Data::Histogram(Histogram {
                        data_points: vec![HistogramDataPoint {
                            count: 5,
                            bucket_counts: vec![1, 1],
                            explicit_bounds: vec![1.0],
                            ..Default::default()
                        }],
                        aggregation_temporality: 1,
                    })),
                    ..Default::default()
                },
                Metric {
                    name: "g".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![point(0, 3.0)],
                    })),
                    ..Default::default()
                },
            ]),
            0,
        );
        assert_eq!((out.accepted, out.rejected), (1, 3));
        assert!(out.reason.unwrap().contains("unspecified"));
    }

    #[test]
    fn flipped_bytes_of_a_request_never_panic_the_conversion() {
        use prost::Message;
        let valid = request(vec![
            sum("s", AggregationTemporality::Cumulative, vec![point(3, 2.0)]),
            Metric {
                name: "h".into(),
                data: Some(metric::Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        count: 3,
                        sum: Some(6.0),
                        bucket_counts: vec![1, 2],
                        explicit_bounds: vec![1.0],
                        start_time_unix_nano: 3,
                        ..Default::default()
                    }],
                    aggregation_temporality: 2,
                })),
                ..Default::default()
            },
        ])
        .encode_to_vec();
        let mut c = Converter::new(0);
        for i in 0..valid.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bytes = valid.clone();
                bytes[i] ^= flip;
                if let Ok(r) = ExportMetricsServiceRequest::decode(&bytes[..]) {
                    c.export(r, i as u64);
                }
                if let Ok(r) = ExportMetricsServiceRequest::decode(&bytes[..i]) {
                    c.export(r, i as u64);
                }
            }
        }
        c.pending.take_batch(1, 1, 0);
    }

    #[test]
    fn bucket_counts_that_overflow_are_rejected_not_a_panic() {
        let mut c = Converter::new(0);
        let out = c.export(
            request(vec![Metric {
                name: "h".into(),
                data: Some(metric::Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        count: 1,
                        bucket_counts: vec![u64::MAX, 2],
                        explicit_bounds: vec![1.0],
                        ..Default::default()
                    }],
                    aggregation_temporality: 1,
                })),
                ..Default::default()
            }]),
            0,
        );
        assert_eq!(out.rejected, 1);
    }

    #[test]
    fn cumulative_histograms_become_deltas_and_bucketless_points_count() {
        let hist = |counts: Vec<u64>, bounds: Vec<f64>, count: u64, sum: f64| Metric {
            name: "h".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count,
                    sum: Some(sum),
                    bucket_counts: counts,
                    explicit_bounds: bounds,
                    start_time_unix_nano: 2_000_000_000,
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        };
        let mut c = Converter::new(1_000);
        c.export(request(vec![hist(vec![1, 1], vec![5.0], 2, 8.0)]), 2_000);
        c.export(request(vec![hist(vec![1, 4], vec![5.0], 5, 29.0)]), 3_000);
        let b = c.pending.take_batch(1, 1, 0).unwrap();
        assert_eq!(b.distributions[0].1.count(), 5);
        assert_eq!(b.distributions[0].1.sum(), 29.0);
        let mut c = Converter::new(1_000);
        let out = c.export(request(vec![hist(vec![], vec![], 4, 10.0)]), 2_000);
        assert_eq!(out.accepted, 1);
        let b = c.pending.take_batch(1, 1, 0).unwrap();
        assert_eq!(b.distributions[0].1.count(), 4);
        assert_eq!(b.distributions[0].1.sum(), 10.0);
    }

    #[test]
    fn explicit_buckets_keep_exact_count_sum_min_and_max() {
        let s = sketch(&[1.0, 10.0], &[2, 3, 1], 40.0, Some(0.5), Some(20.0)).unwrap();
        assert_eq!(s.count(), 6);
        assert_eq!(s.sum(), 40.0);
        assert_eq!(s.min(), Some(0.5));
        assert_eq!(s.max(), Some(20.0));
    }
}
