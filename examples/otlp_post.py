#!/usr/bin/env python3
"""Posts OTLP/HTTP metrics built with the official OpenTelemetry protobuf classes (PyPI package
`opentelemetry-proto`) to an intake, the way an app in another language or a script would.

    python3 examples/otlp_post.py http://127.0.0.1:8099

It sends a fixed scenario and prints one JSON line per request: {"step", "status",
"rejected", "message"} (`rejected`/`message` from the answer's `partial_success`):

- delta sum `intake.jobs` {queue=mail, ok=true} 5, twice (resource service.name=cron-job)
- cumulative monotonic sum `intake.bytes` {disk=sda} 100 then 250, started now
- gauge `intake.temperature` {room=a} 21.5 then 22.0
- delta histogram `intake.latency` bounds [10, 100] counts [1, 2, 1] sum 150 min 5 max 120
- gzip: delta sum `intake.gzipped` 3
- mixed: delta sum `intake.mixed` 1 and one exponential-histogram point (rejected: partial success)
- json: OTLP/JSON (`json_format`, integer enums) delta sum `intake.json` {format=json} 2
- then bad requests: truncated body (400), gzip bomb (413), oversized body (413 or reset),
  JSON that is not a request (400), XML content type (415), GET (405), /v1/logs (404; traces:
  examples/otlp_post_traces.py)

Stdlib only, besides the protobuf classes; the request helpers are in examples/otlp_http.py.
"""

import gzip
import sys
import time

from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
from opentelemetry.proto.resource.v1 import resource_pb2 as resource

import otlp_http
from otlp_http import attrs

DELTA = m.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = m.AGGREGATION_TEMPORALITY_CUMULATIVE
START = time.time_ns()


def request(*metrics):
    return ms.ExportMetricsServiceRequest(resource_metrics=[m.ResourceMetrics(
        resource=resource.Resource(attributes=attrs(**{"service.name": "cron-job"})),
        scope_metrics=[m.ScopeMetrics(metrics=list(metrics))])])


def sum_metric(name, value, temporality=DELTA, start=0, **kv):
    point = m.NumberDataPoint(attributes=attrs(**kv), start_time_unix_nano=start,
                              time_unix_nano=time.time_ns())
    if isinstance(value, int):
        point.as_int = value
    else:
        point.as_double = value
    return m.Metric(name=name, sum=m.Sum(data_points=[point], aggregation_temporality=temporality,
                                         is_monotonic=True))


def gauge_metric(name, value, **kv):
    return m.Metric(name=name, gauge=m.Gauge(data_points=[m.NumberDataPoint(
        attributes=attrs(**kv), time_unix_nano=time.time_ns(), as_double=value)]))


def post(url, step, body, content_type="application/x-protobuf", encoding=None, method="POST",
         path="/v1/metrics"):
    otlp_http.post(url, step, body, path=path, answer=ms.ExportMetricsServiceResponse,
                   rejected="rejected_data_points", content_type=content_type, encoding=encoding,
                   method=method)


def main():
    url = sys.argv[1]
    jobs = sum_metric("intake.jobs", 5, queue="mail", ok=True)
    post(url, "jobs-1", request(jobs).SerializeToString())
    post(url, "jobs-2", request(jobs).SerializeToString())
    post(url, "bytes-1", request(sum_metric("intake.bytes", 100, CUMULATIVE, START, disk="sda"))
         .SerializeToString())
    post(url, "bytes-2", request(sum_metric("intake.bytes", 250, CUMULATIVE, START, disk="sda"))
         .SerializeToString())
    post(url, "gauge-1", request(gauge_metric("intake.temperature", 21.5, room="a"))
         .SerializeToString())
    time.sleep(0.01)
    post(url, "gauge-2", request(gauge_metric("intake.temperature", 22.0, room="a"))
         .SerializeToString())
    histogram = m.Metric(name="intake.latency", histogram=m.Histogram(
        aggregation_temporality=DELTA,
        data_points=[m.HistogramDataPoint(
            attributes=attrs(route="/"), count=4, sum=150.0, min=5.0, max=120.0,
            explicit_bounds=[10.0, 100.0], bucket_counts=[1, 2, 1],
            time_unix_nano=time.time_ns())]))
    post(url, "histogram", request(histogram).SerializeToString())
    post(url, "gzip", gzip.compress(request(sum_metric("intake.gzipped", 3.0))
                                    .SerializeToString()), encoding="gzip")
    exponential = m.Metric(name="intake.exponential", exponential_histogram=m.ExponentialHistogram(
        aggregation_temporality=DELTA,
        data_points=[m.ExponentialHistogramDataPoint(count=1, sum=1.0, scale=0, zero_count=1)]))
    post(url, "mixed", request(sum_metric("intake.mixed", 1), exponential).SerializeToString())
    post(url, "json", json_format.MessageToJson(
        request(sum_metric("intake.json", 2, format="json")), use_integers_for_enums=True).encode(),
         content_type="application/json")
    whole = request(sum_metric("intake.truncated", 1)).SerializeToString()
    post(url, "truncated", whole[:-3])
    post(url, "gzip-bomb", gzip.compress(b"\0" * (17 * 1024 * 1024)), encoding="gzip")
    post(url, "oversized", b"\0" * (5 * 1024 * 1024))
    post(url, "json-bad", b'{"resourceMetrics": 5}', content_type="application/json")
    post(url, "xml", b"<metrics/>", content_type="application/xml")
    post(url, "get", None, method="GET")
    post(url, "logs", b"", path="/v1/logs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
