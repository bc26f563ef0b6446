"""Writes the fixtures of src/intake/otlp_json.rs's tests next to this script: one metrics and one
trace request built with the official protobuf classes, as binary protobuf (`otlp_*.pb`) and as
OTLP/JSON (`otlp_*.json`: `json_format.MessageToJson` with integer enums, ids turned into hex).

Run with the Python of the tests' virtualenv (target/otlp-venv/bin/python).
"""

import base64
import json
import os
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
from opentelemetry.proto.common.v1 import common_pb2 as c
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
from opentelemetry.proto.trace.v1 import trace_pb2 as t
from opentelemetry.proto.resource.v1 import resource_pb2 as r

HERE = os.path.dirname(os.path.abspath(__file__))


def kv(k, **v): return c.KeyValue(key=k, value=c.AnyValue(**v))
res = r.Resource(attributes=[kv("service.name", string_value="shop")], dropped_attributes_count=1)
scope = c.InstrumentationScope(name="lib", version="1.2", attributes=[kv("s", bool_value=True)])
T0, T1 = 1767225600000000000, 1767225601000000000
pa = [kv("route", string_value="/a"), kv("n", int_value=-9007199254740993)]
metrics = ms.ExportMetricsServiceRequest(resource_metrics=[m.ResourceMetrics(resource=res, schema_url="u", scope_metrics=[m.ScopeMetrics(scope=scope, metrics=[
  m.Metric(name="g", unit="1", description="d", gauge=m.Gauge(data_points=[m.NumberDataPoint(attributes=pa, time_unix_nano=T1, as_double=2.5), m.NumberDataPoint(time_unix_nano=T1, as_int=-3, flags=1)])),
  m.Metric(name="s", sum=m.Sum(aggregation_temporality=1, is_monotonic=True, data_points=[m.NumberDataPoint(start_time_unix_nano=T0, time_unix_nano=T1, as_int=18446744073709551 , exemplars=[m.Exemplar(time_unix_nano=T1, as_double=1.0, span_id=bytes.fromhex("eee19b7ec3c1b174"), trace_id=bytes.fromhex("5b8efff798038103d269b633813fc60c"), filtered_attributes=[kv("f", double_value=0.5)])])])),
  m.Metric(name="h", histogram=m.Histogram(aggregation_temporality=2, data_points=[m.HistogramDataPoint(start_time_unix_nano=T0, time_unix_nano=T1, count=18446744073709551615, sum=10.5, bucket_counts=[1, 2, 3], explicit_bounds=[0.5, 1.0], min=0.1, max=9.0)])),
  m.Metric(name="e", exponential_histogram=m.ExponentialHistogram(aggregation_temporality=1, data_points=[m.ExponentialHistogramDataPoint(time_unix_nano=T1, count=7, sum=3.0, scale=-2, zero_count=1, zero_threshold=0.001, positive=m.ExponentialHistogramDataPoint.Buckets(offset=-3, bucket_counts=[1, 5]), negative=m.ExponentialHistogramDataPoint.Buckets(offset=2, bucket_counts=[1]))])),
  m.Metric(name="q", summary=m.Summary(data_points=[m.SummaryDataPoint(time_unix_nano=T1, count=4, sum=8.0, quantile_values=[m.SummaryDataPoint.ValueAtQuantile(quantile=0.5, value=2.0), m.SummaryDataPoint.ValueAtQuantile(quantile=1.0, value=float("inf"))])])),
])])])

anys = [kv("s", string_value="x"), kv("b", bool_value=False), kv("i", int_value=9223372036854775807), kv("d", double_value=-1.25),
  kv("a", array_value=c.ArrayValue(values=[c.AnyValue(string_value="y"), c.AnyValue(int_value=2)])),
  kv("m", kvlist_value=c.KeyValueList(values=[kv("inner", kvlist_value=c.KeyValueList(values=[kv("z", bytes_value=b"\x00\xff\x10")]))])),
  kv("bytes", bytes_value=b"\xfb\xff\xbf hello"), kv("empty")]
traces = ts.ExportTraceServiceRequest(resource_spans=[t.ResourceSpans(resource=res, schema_url="u", scope_spans=[t.ScopeSpans(scope=scope, spans=[
  t.Span(trace_id=bytes.fromhex("5b8efff798038103d269b633813fc60c"), span_id=bytes.fromhex("eee19b7ec3c1b174"), parent_span_id=bytes.fromhex("0102030405060708"), trace_state="k=v", flags=257, name="GET /", kind=2, start_time_unix_nano=T0, end_time_unix_nano=T1, attributes=anys, dropped_attributes_count=2,
    events=[t.Span.Event(time_unix_nano=T0 + 5, name="exception", attributes=[kv("exception.type", string_value="E")], dropped_attributes_count=1)], dropped_events_count=3,
    links=[t.Span.Link(trace_id=bytes.fromhex("0af7651916cd43dd8448eb211c80319c"), span_id=bytes.fromhex("1000000000000001"), trace_state="a=b", attributes=[kv("l", int_value=1)], flags=1)], dropped_links_count=4,
    status=t.Status(code=2, message="boom")),
  t.Span(trace_id=bytes.fromhex("5b8efff798038103d269b633813fc60c"), span_id=bytes.fromhex("1000000000000002"), name="child", kind=3, status=t.Status(code=1)),
])])])

def hexids(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str):
                o[k] = base64.b64decode(v).hex()
            else:
                hexids(v)
    elif isinstance(o, list):
        for v in o: hexids(v)
    return o

for name, msg in (("metrics", metrics), ("traces", traces)):
    j = hexids(json.loads(json_format.MessageToJson(msg, use_integers_for_enums=True)))
    open(os.path.join(HERE, f"otlp_{name}.json"), "w").write(json.dumps(j, indent=1))
    open(os.path.join(HERE, f"otlp_{name}.pb"), "wb").write(msg.SerializeToString())
