//! OTLP/JSON request bodies into the `opentelemetry-proto` (prost) messages, read from a
//! `serde_json::Value` by plain functions instead of serde derives of every OTLP message (which
//! cost about 200 KB of code in the library).
//!
//! What OTLP/JSON is: protobuf's JSON mapping with lowerCamelCase keys (the proto field names in
//! snake_case are accepted too, as protobuf's parsers do), enums as integers (or their names),
//! 64-bit integers as strings or numbers, and trace and span ids as hex (not base64); other bytes
//! (`bytesValue`) are base64. Unknown fields are ignored; a known field of the wrong type is an
//! error naming the field. Nesting is bounded by serde_json's own recursion limit (128).

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, exponential_histogram_data_point, metric, number_data_point, summary_data_point,
    Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use serde_json::{Map, Value};

type Obj = Map<String, Value>;
type Result<T> = std::result::Result<T, String>;

/// An `ExportMetricsServiceRequest` from an OTLP/JSON body.
pub fn metrics_request(body: &[u8]) -> Result<ExportMetricsServiceRequest> {
    let value = parse(body)?;
    let o = object(&value, "ExportMetricsServiceRequest")?;
    Ok(ExportMetricsServiceRequest {
        resource_metrics: list(o, "resourceMetrics", "resource_metrics", resource_metrics)?,
    })
}

/// An `ExportTraceServiceRequest` from an OTLP/JSON body.
pub fn trace_request(body: &[u8]) -> Result<ExportTraceServiceRequest> {
    let value = parse(body)?;
    let o = object(&value, "ExportTraceServiceRequest")?;
    Ok(ExportTraceServiceRequest {
        resource_spans: list(o, "resourceSpans", "resource_spans", resource_spans)?,
    })
}

fn parse(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

// --- fields -------------------------------------------------------------------------------

/// The value of a field by its JSON name or its proto name; `null` is absent.
fn field<'a>(o: &'a Obj, camel: &str, snake: &str) -> Option<&'a Value> {
    o.get(camel)
        .or_else(|| o.get(snake))
        .filter(|v| !v.is_null())
}

fn wrong(name: &str, expected: &str) -> String {
    format!("field {name}: expected {expected}")
}

fn object<'a>(v: &'a Value, name: &str) -> Result<&'a Obj> {
    v.as_object().ok_or_else(|| wrong(name, "an object"))
}

fn message<T>(o: &Obj, camel: &str, snake: &str, f: fn(&Obj) -> Result<T>) -> Result<Option<T>> {
    field(o, camel, snake)
        .map(|v| f(object(v, camel)?))
        .transpose()
}

fn list<T>(o: &Obj, camel: &str, snake: &str, f: fn(&Obj) -> Result<T>) -> Result<Vec<T>> {
    match field(o, camel, snake) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(|v| f(object(v, camel)?)).collect(),
        Some(_) => Err(wrong(camel, "an array")),
    }
}

fn string(o: &Obj, camel: &str, snake: &str) -> Result<String> {
    match field(o, camel, snake) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(wrong(camel, "a string")),
    }
}

fn boolean(o: &Obj, camel: &str, snake: &str) -> Result<bool> {
    match field(o, camel, snake) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(wrong(camel, "a boolean")),
    }
}

/// An integer written as a JSON number (integral) or a string of digits.
fn integer_of(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 1.9e19)
                    .map(|f| f as i128)
            }),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn integer(o: &Obj, camel: &str, snake: &str, min: i128, max: i128) -> Result<i128> {
    match field(o, camel, snake) {
        None => Ok(0),
        Some(v) => integer_of(v)
            .filter(|i| (min..=max).contains(i))
            .ok_or_else(|| wrong(camel, "an integer in range")),
    }
}

fn u64_field(o: &Obj, camel: &str, snake: &str) -> Result<u64> {
    integer(o, camel, snake, 0, u64::MAX.into()).map(|i| i as u64)
}

fn i64_field(o: &Obj, camel: &str, snake: &str) -> Result<i64> {
    integer(o, camel, snake, i64::MIN.into(), i64::MAX.into()).map(|i| i as i64)
}

fn u32_field(o: &Obj, camel: &str, snake: &str) -> Result<u32> {
    integer(o, camel, snake, 0, u32::MAX.into()).map(|i| i as u32)
}

fn i32_field(o: &Obj, camel: &str, snake: &str) -> Result<i32> {
    integer(o, camel, snake, i32::MIN.into(), i32::MAX.into()).map(|i| i as i32)
}

/// An enum as its number or its name (`names` in the order of their numbers, from 0).
fn enumeration(o: &Obj, camel: &str, snake: &str, names: &[&str]) -> Result<i32> {
    if let Some(Value::String(s)) = field(o, camel, snake) {
        if let Some(i) = names.iter().position(|n| n == s) {
            return Ok(i as i32);
        }
    }
    i32_field(o, camel, snake)
}

fn double_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            s => s.parse().ok(),
        },
        _ => None,
    }
}

fn double_opt(o: &Obj, camel: &str, snake: &str) -> Result<Option<f64>> {
    field(o, camel, snake)
        .map(|v| double_of(v).ok_or_else(|| wrong(camel, "a number")))
        .transpose()
}

fn double(o: &Obj, camel: &str, snake: &str) -> Result<f64> {
    double_opt(o, camel, snake).map(Option::unwrap_or_default)
}

fn u64_list(o: &Obj, camel: &str, snake: &str) -> Result<Vec<u64>> {
    match field(o, camel, snake) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                integer_of(v)
                    .and_then(|i| u64::try_from(i).ok())
                    .ok_or_else(|| wrong(camel, "unsigned integers"))
            })
            .collect(),
        Some(_) => Err(wrong(camel, "an array")),
    }
}

fn double_list(o: &Obj, camel: &str, snake: &str) -> Result<Vec<f64>> {
    match field(o, camel, snake) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| double_of(v).ok_or_else(|| wrong(camel, "numbers")))
            .collect(),
        Some(_) => Err(wrong(camel, "an array")),
    }
}

/// A trace or span id: hex, as OTLP/JSON writes them.
fn id(o: &Obj, camel: &str, snake: &str) -> Result<Vec<u8>> {
    let text = string(o, camel, snake)?;
    let digit = |c: u8| (c as char).to_digit(16);
    if text.len() % 2 != 0 {
        return Err(wrong(camel, "hex"));
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => Ok((hi * 16 + lo) as u8),
            _ => Err(wrong(camel, "hex")),
        })
        .collect()
}

/// Base64 (standard or URL-safe alphabet, padding optional), as protobuf's JSON writes bytes.
fn base64(text: &str, name: &str) -> Result<Vec<u8>> {
    let sextet = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    };
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        acc = (acc << 6) | u32::from(sextet(c).ok_or_else(|| wrong(name, "base64"))?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits >= 6 {
        return Err(wrong(name, "base64"));
    }
    Ok(out)
}

// --- common ---------------------------------------------------------------------------------

fn resource(o: &Obj) -> Result<Resource> {
    Ok(Resource {
        attributes: list(o, "attributes", "attributes", key_value)?,
        dropped_attributes_count: u32_field(
            o,
            "droppedAttributesCount",
            "dropped_attributes_count",
        )?,
        entity_refs: Vec::new(),
    })
}

fn scope(o: &Obj) -> Result<InstrumentationScope> {
    Ok(InstrumentationScope {
        name: string(o, "name", "name")?,
        version: string(o, "version", "version")?,
        attributes: list(o, "attributes", "attributes", key_value)?,
        dropped_attributes_count: u32_field(
            o,
            "droppedAttributesCount",
            "dropped_attributes_count",
        )?,
    })
}

fn key_value(o: &Obj) -> Result<KeyValue> {
    Ok(KeyValue {
        key: string(o, "key", "key")?,
        value: message(o, "value", "value", any)?,
        ..Default::default()
    })
}

fn key_value_list(o: &Obj) -> Result<KeyValueList> {
    Ok(KeyValueList {
        values: list(o, "values", "values", key_value)?,
    })
}

fn array(o: &Obj) -> Result<ArrayValue> {
    Ok(ArrayValue {
        values: list(o, "values", "values", any)?,
    })
}

/// An `AnyValue`: the first of its oneof's keys present (none: an empty value).
fn any(o: &Obj) -> Result<AnyValue> {
    use any_value::Value as V;
    let value = if field(o, "stringValue", "string_value").is_some() {
        Some(V::StringValue(string(o, "stringValue", "string_value")?))
    } else if field(o, "boolValue", "bool_value").is_some() {
        Some(V::BoolValue(boolean(o, "boolValue", "bool_value")?))
    } else if field(o, "intValue", "int_value").is_some() {
        Some(V::IntValue(i64_field(o, "intValue", "int_value")?))
    } else if field(o, "doubleValue", "double_value").is_some() {
        Some(V::DoubleValue(double(o, "doubleValue", "double_value")?))
    } else if let Some(v) = message(o, "arrayValue", "array_value", array)? {
        Some(V::ArrayValue(v))
    } else if let Some(v) = message(o, "kvlistValue", "kvlist_value", key_value_list)? {
        Some(V::KvlistValue(v))
    } else if field(o, "bytesValue", "bytes_value").is_some() {
        let text = string(o, "bytesValue", "bytes_value")?;
        Some(V::BytesValue(base64(&text, "bytesValue")?))
    } else {
        None
    };
    Ok(AnyValue { value })
}

// --- metrics --------------------------------------------------------------------------------

const TEMPORALITIES: &[&str] = &[
    "AGGREGATION_TEMPORALITY_UNSPECIFIED",
    "AGGREGATION_TEMPORALITY_DELTA",
    "AGGREGATION_TEMPORALITY_CUMULATIVE",
];

fn temporality(o: &Obj) -> Result<i32> {
    enumeration(
        o,
        "aggregationTemporality",
        "aggregation_temporality",
        TEMPORALITIES,
    )
}

fn resource_metrics(o: &Obj) -> Result<ResourceMetrics> {
    Ok(ResourceMetrics {
        resource: message(o, "resource", "resource", resource)?,
        scope_metrics: list(o, "scopeMetrics", "scope_metrics", scope_metrics)?,
        schema_url: string(o, "schemaUrl", "schema_url")?,
    })
}

fn scope_metrics(o: &Obj) -> Result<ScopeMetrics> {
    Ok(ScopeMetrics {
        scope: message(o, "scope", "scope", scope)?,
        metrics: list(o, "metrics", "metrics", metric)?,
        schema_url: string(o, "schemaUrl", "schema_url")?,
    })
}

fn metric(o: &Obj) -> Result<Metric> {
    use metric::Data;
    let data = if let Some(g) = message(o, "gauge", "gauge", gauge)? {
        Some(Data::Gauge(g))
    } else if let Some(s) = message(o, "sum", "sum", sum)? {
        Some(Data::Sum(s))
    } else if let Some(h) = message(o, "histogram", "histogram", histogram)? {
        Some(Data::Histogram(h))
    } else if let Some(h) = message(
        o,
        "exponentialHistogram",
        "exponential_histogram",
        exponential_histogram,
    )? {
        Some(Data::ExponentialHistogram(h))
    } else {
        message(o, "summary", "summary", summary)?.map(Data::Summary)
    };
    Ok(Metric {
        name: string(o, "name", "name")?,
        description: string(o, "description", "description")?,
        unit: string(o, "unit", "unit")?,
        metadata: list(o, "metadata", "metadata", key_value)?,
        data,
    })
}

fn gauge(o: &Obj) -> Result<Gauge> {
    Ok(Gauge {
        data_points: list(o, "dataPoints", "data_points", number_point)?,
    })
}

fn sum(o: &Obj) -> Result<Sum> {
    Ok(Sum {
        data_points: list(o, "dataPoints", "data_points", number_point)?,
        aggregation_temporality: temporality(o)?,
        is_monotonic: boolean(o, "isMonotonic", "is_monotonic")?,
    })
}

fn histogram(o: &Obj) -> Result<Histogram> {
    Ok(Histogram {
        data_points: list(o, "dataPoints", "data_points", histogram_point)?,
        aggregation_temporality: temporality(o)?,
    })
}

fn exponential_histogram(o: &Obj) -> Result<ExponentialHistogram> {
    Ok(ExponentialHistogram {
        data_points: list(o, "dataPoints", "data_points", exponential_point)?,
        aggregation_temporality: temporality(o)?,
    })
}

fn summary(o: &Obj) -> Result<Summary> {
    Ok(Summary {
        data_points: list(o, "dataPoints", "data_points", summary_point)?,
    })
}

fn attributes(o: &Obj) -> Result<Vec<KeyValue>> {
    list(o, "attributes", "attributes", key_value)
}

fn start_time(o: &Obj) -> Result<u64> {
    u64_field(o, "startTimeUnixNano", "start_time_unix_nano")
}

fn time(o: &Obj) -> Result<u64> {
    u64_field(o, "timeUnixNano", "time_unix_nano")
}

fn number_point(o: &Obj) -> Result<NumberDataPoint> {
    use number_data_point::Value as V;
    let value = if field(o, "asDouble", "as_double").is_some() {
        Some(V::AsDouble(double(o, "asDouble", "as_double")?))
    } else if field(o, "asInt", "as_int").is_some() {
        Some(V::AsInt(i64_field(o, "asInt", "as_int")?))
    } else {
        None
    };
    Ok(NumberDataPoint {
        attributes: attributes(o)?,
        start_time_unix_nano: start_time(o)?,
        time_unix_nano: time(o)?,
        exemplars: list(o, "exemplars", "exemplars", exemplar)?,
        flags: u32_field(o, "flags", "flags")?,
        value,
    })
}

fn exemplar(o: &Obj) -> Result<Exemplar> {
    use exemplar::Value as V;
    let value = if field(o, "asDouble", "as_double").is_some() {
        Some(V::AsDouble(double(o, "asDouble", "as_double")?))
    } else if field(o, "asInt", "as_int").is_some() {
        Some(V::AsInt(i64_field(o, "asInt", "as_int")?))
    } else {
        None
    };
    Ok(Exemplar {
        filtered_attributes: list(o, "filteredAttributes", "filtered_attributes", key_value)?,
        time_unix_nano: time(o)?,
        span_id: id(o, "spanId", "span_id")?,
        trace_id: id(o, "traceId", "trace_id")?,
        value,
    })
}

fn histogram_point(o: &Obj) -> Result<HistogramDataPoint> {
    Ok(HistogramDataPoint {
        attributes: attributes(o)?,
        start_time_unix_nano: start_time(o)?,
        time_unix_nano: time(o)?,
        count: u64_field(o, "count", "count")?,
        sum: double_opt(o, "sum", "sum")?,
        bucket_counts: u64_list(o, "bucketCounts", "bucket_counts")?,
        explicit_bounds: double_list(o, "explicitBounds", "explicit_bounds")?,
        exemplars: list(o, "exemplars", "exemplars", exemplar)?,
        flags: u32_field(o, "flags", "flags")?,
        min: double_opt(o, "min", "min")?,
        max: double_opt(o, "max", "max")?,
    })
}

fn buckets(o: &Obj) -> Result<exponential_histogram_data_point::Buckets> {
    Ok(exponential_histogram_data_point::Buckets {
        offset: i32_field(o, "offset", "offset")?,
        bucket_counts: u64_list(o, "bucketCounts", "bucket_counts")?,
    })
}

fn exponential_point(o: &Obj) -> Result<ExponentialHistogramDataPoint> {
    Ok(ExponentialHistogramDataPoint {
        attributes: attributes(o)?,
        start_time_unix_nano: start_time(o)?,
        time_unix_nano: time(o)?,
        count: u64_field(o, "count", "count")?,
        sum: double_opt(o, "sum", "sum")?,
        scale: i32_field(o, "scale", "scale")?,
        zero_count: u64_field(o, "zeroCount", "zero_count")?,
        positive: message(o, "positive", "positive", buckets)?,
        negative: message(o, "negative", "negative", buckets)?,
        flags: u32_field(o, "flags", "flags")?,
        exemplars: list(o, "exemplars", "exemplars", exemplar)?,
        min: double_opt(o, "min", "min")?,
        max: double_opt(o, "max", "max")?,
        zero_threshold: double(o, "zeroThreshold", "zero_threshold")?,
    })
}

fn quantile(o: &Obj) -> Result<summary_data_point::ValueAtQuantile> {
    Ok(summary_data_point::ValueAtQuantile {
        quantile: double(o, "quantile", "quantile")?,
        value: double(o, "value", "value")?,
    })
}

fn summary_point(o: &Obj) -> Result<SummaryDataPoint> {
    Ok(SummaryDataPoint {
        attributes: attributes(o)?,
        start_time_unix_nano: start_time(o)?,
        time_unix_nano: time(o)?,
        count: u64_field(o, "count", "count")?,
        sum: double(o, "sum", "sum")?,
        quantile_values: list(o, "quantileValues", "quantile_values", quantile)?,
        flags: u32_field(o, "flags", "flags")?,
    })
}

// --- traces ---------------------------------------------------------------------------------

const KINDS: &[&str] = &[
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];

const STATUS_CODES: &[&str] = &["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

fn resource_spans(o: &Obj) -> Result<ResourceSpans> {
    Ok(ResourceSpans {
        resource: message(o, "resource", "resource", resource)?,
        scope_spans: list(o, "scopeSpans", "scope_spans", scope_spans)?,
        schema_url: string(o, "schemaUrl", "schema_url")?,
    })
}

fn scope_spans(o: &Obj) -> Result<ScopeSpans> {
    Ok(ScopeSpans {
        scope: message(o, "scope", "scope", scope)?,
        spans: list(o, "spans", "spans", span)?,
        schema_url: string(o, "schemaUrl", "schema_url")?,
    })
}

fn dropped_attributes(o: &Obj) -> Result<u32> {
    u32_field(o, "droppedAttributesCount", "dropped_attributes_count")
}

fn span(o: &Obj) -> Result<Span> {
    Ok(Span {
        trace_id: id(o, "traceId", "trace_id")?,
        span_id: id(o, "spanId", "span_id")?,
        trace_state: string(o, "traceState", "trace_state")?,
        parent_span_id: id(o, "parentSpanId", "parent_span_id")?,
        flags: u32_field(o, "flags", "flags")?,
        name: string(o, "name", "name")?,
        kind: enumeration(o, "kind", "kind", KINDS)?,
        start_time_unix_nano: start_time(o)?,
        end_time_unix_nano: u64_field(o, "endTimeUnixNano", "end_time_unix_nano")?,
        attributes: attributes(o)?,
        dropped_attributes_count: dropped_attributes(o)?,
        events: list(o, "events", "events", event)?,
        dropped_events_count: u32_field(o, "droppedEventsCount", "dropped_events_count")?,
        links: list(o, "links", "links", link)?,
        dropped_links_count: u32_field(o, "droppedLinksCount", "dropped_links_count")?,
        status: message(o, "status", "status", status)?,
    })
}

fn event(o: &Obj) -> Result<span::Event> {
    Ok(span::Event {
        time_unix_nano: time(o)?,
        name: string(o, "name", "name")?,
        attributes: attributes(o)?,
        dropped_attributes_count: dropped_attributes(o)?,
    })
}

fn link(o: &Obj) -> Result<span::Link> {
    Ok(span::Link {
        trace_id: id(o, "traceId", "trace_id")?,
        span_id: id(o, "spanId", "span_id")?,
        trace_state: string(o, "traceState", "trace_state")?,
        attributes: attributes(o)?,
        dropped_attributes_count: dropped_attributes(o)?,
        flags: u32_field(o, "flags", "flags")?,
    })
}

fn status(o: &Obj) -> Result<Status> {
    Ok(Status {
        message: string(o, "message", "message")?,
        code: enumeration(o, "code", "code", STATUS_CODES)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use serde_json::json;

    // Written by testdata/otlp_json_fixtures.py with the official protobuf classes: the same
    // request as binary protobuf and as `json_format.MessageToJson` (camelCase, 64-bit integers
    // as strings, integer enums, ids as hex).
    const METRICS_JSON: &[u8] = include_bytes!("testdata/otlp_metrics.json");
    const METRICS_PB: &[u8] = include_bytes!("testdata/otlp_metrics.pb");
    const TRACES_JSON: &[u8] = include_bytes!("testdata/otlp_traces.json");
    const TRACES_PB: &[u8] = include_bytes!("testdata/otlp_traces.pb");

    #[test]
    fn metrics_from_json_format_equal_the_protobuf() {
        let expected = ExportMetricsServiceRequest::decode(METRICS_PB).unwrap();
        let data: Vec<_> = expected.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .map(|m| m.data.is_some())
            .collect();
        assert_eq!(
            data, [true; 5],
            "gauge, sum, histogram, exponential, summary"
        );
        assert_eq!(metrics_request(METRICS_JSON).unwrap(), expected);
    }

    #[test]
    fn traces_from_json_format_equal_the_protobuf() {
        let expected = ExportTraceServiceRequest::decode(TRACES_PB).unwrap();
        let span = &expected.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            span.attributes.len(),
            8,
            "every AnyValue kind and an empty one"
        );
        assert!(!span.events.is_empty() && !span.links.is_empty() && span.status.is_some());
        assert_eq!(trace_request(TRACES_JSON).unwrap(), expected);
    }

    /// Every key of `v` in snake_case, as protobuf's own field names.
    fn snake(v: &Value) -> Value {
        match v {
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| {
                        let mut key = String::new();
                        for c in k.chars() {
                            if c.is_ascii_uppercase() {
                                key.push('_');
                            }
                            key.push(c.to_ascii_lowercase());
                        }
                        (key, snake(v))
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(snake).collect()),
            v => v.clone(),
        }
    }

    #[test]
    fn snake_case_keys_are_accepted() {
        let metrics = snake(&serde_json::from_slice(METRICS_JSON).unwrap());
        assert!(metrics.to_string().contains("\"resource_metrics\""));
        assert_eq!(
            metrics_request(metrics.to_string().as_bytes()).unwrap(),
            ExportMetricsServiceRequest::decode(METRICS_PB).unwrap()
        );
        let traces = snake(&serde_json::from_slice(TRACES_JSON).unwrap());
        assert_eq!(
            trace_request(traces.to_string().as_bytes()).unwrap(),
            ExportTraceServiceRequest::decode(TRACES_PB).unwrap()
        );
    }

    #[test]
    fn numbers_names_and_nulls_are_read_as_protobuf_json_allows() {
        let body = json!({"resourceSpans": [{"resource": null, "scopeSpans": [{"spans": [{
            "kind": "SPAN_KIND_SERVER", "startTimeUnixNano": 1767225600000000000u64,
            "endTimeUnixNano": "1767225600100000000", "flags": 1.0,
            "status": {"code": "STATUS_CODE_ERROR"},
            "attributes": [{"key": "i", "value": {"intValue": 5}},
                           {"key": "d", "value": {"doubleValue": "NaN"}}]
        }]}]}]});
        let request = trace_request(body.to_string().as_bytes()).unwrap();
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(request.resource_spans[0].resource, None);
        assert_eq!(span.kind, 2);
        assert_eq!(span.start_time_unix_nano, 1767225600000000000);
        assert_eq!(span.end_time_unix_nano, 1767225600100000000);
        assert_eq!(span.flags, 1);
        assert_eq!(span.status.as_ref().unwrap().code, 2);
        assert_eq!(
            span.attributes[0].value,
            Some(AnyValue {
                value: Some(any_value::Value::IntValue(5))
            })
        );
        assert!(matches!(
            span.attributes[1].value.as_ref().unwrap().value,
            Some(any_value::Value::DoubleValue(d)) if d.is_nan()
        ));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = json!({"resourceMetrics": [{"future": {"x": [1]}, "scopeMetrics": [{
            "metrics": [{"name": "m", "newKind": {}, "sum": {"isMonotonic": true,
                "dataPoints": [{"asDouble": 1.5, "extra": "y"}]}}]}]}], "other": 1});
        let request = metrics_request(body.to_string().as_bytes()).unwrap();
        let metric = &request.resource_metrics[0].scope_metrics[0].metrics[0];
        assert_eq!(metric.name, "m");
        let Some(metric::Data::Sum(sum)) = &metric.data else {
            panic!("{metric:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsDouble(1.5))
        );
    }

    #[test]
    fn wrong_types_are_refused_with_the_field_named() {
        let spans = |span: Value| json!({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]});
        for (body, field) in [
            (json!({"resourceSpans": 5}), "resourceSpans"),
            (json!({"resourceSpans": [{"scopeSpans": 5}]}), "scopeSpans"),
            (json!({"resourceSpans": [7]}), "resourceSpans"),
            (spans(json!({"name": 1})), "name"),
            (spans(json!({"traceId": "xyz0"})), "traceId"),
            (spans(json!({"spanId": "abc"})), "spanId"),
            (spans(json!({"parentSpanId": 12})), "parentSpanId"),
            (spans(json!({"kind": "SERVERISH"})), "kind"),
            (
                spans(json!({"startTimeUnixNano": "-1"})),
                "startTimeUnixNano",
            ),
            (spans(json!({"endTimeUnixNano": 1.5})), "endTimeUnixNano"),
            (spans(json!({"flags": 4294967296u64})), "flags"),
            (spans(json!({"status": []})), "status"),
            (
                spans(json!({"events": [{"timeUnixNano": true}]})),
                "timeUnixNano",
            ),
            (
                spans(json!({"attributes": [{"key": "k", "value": {"intValue": "1e3"}}]})),
                "intValue",
            ),
            (
                spans(json!({"attributes": [{"key": "k", "value": {"boolValue": "yes"}}]})),
                "boolValue",
            ),
            (
                spans(json!({"attributes": [{"key": "k", "value": {"bytesValue": "a$=="}}]})),
                "bytesValue",
            ),
            (
                spans(
                    json!({"attributes": [{"key": "k", "value": {"arrayValue": {"values": 1}}}]}),
                ),
                "values",
            ),
        ] {
            let error = trace_request(body.to_string().as_bytes()).unwrap_err();
            assert!(
                error.contains(&format!("field {field}:")),
                "{body}: {error}"
            );
        }
        let metrics = |point: Value| {
            json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [
                {"histogram": {"dataPoints": [point]}}]}]}]})
        };
        for (body, field) in [
            (metrics(json!({"count": "many"})), "count"),
            (metrics(json!({"bucketCounts": ["1", -1]})), "bucketCounts"),
            (metrics(json!({"explicitBounds": [true]})), "explicitBounds"),
            (metrics(json!({"sum": "x"})), "sum"),
            (json!({"resourceMetrics": {}}), "resourceMetrics"),
        ] {
            let error = metrics_request(body.to_string().as_bytes()).unwrap_err();
            assert!(
                error.contains(&format!("field {field}:")),
                "{body}: {error}"
            );
        }
        assert!(trace_request(b"[1, 2]").is_err());
        assert!(trace_request(b"{\"resourceSpans\": [").is_err());
    }

    #[test]
    fn base64_reads_both_alphabets_with_and_without_padding() {
        assert_eq!(base64("+/+/", "b").unwrap(), [0xfb, 0xff, 0xbf]);
        assert_eq!(base64("-_-_", "b").unwrap(), [0xfb, 0xff, 0xbf]);
        assert_eq!(base64("aGk=", "b").unwrap(), b"hi");
        assert_eq!(base64("aGk", "b").unwrap(), b"hi");
        assert_eq!(base64("", "b").unwrap(), b"");
        assert!(base64("a", "b").is_err());
    }

    #[test]
    fn nesting_past_the_parser_limit_is_an_error() {
        let mut value = json!({"stringValue": "leaf"});
        for _ in 0..200 {
            value = json!({"arrayValue": {"values": [value]}});
        }
        let body = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"attributes":[{{"key":"k","value":{value}}}]}}]}}]}}]}}"#
        );
        assert!(trace_request(body.as_bytes()).is_err());
    }
}
