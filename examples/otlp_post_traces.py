#!/usr/bin/env python3
"""Posts OTLP/HTTP traces built with the official OpenTelemetry protobuf classes (PyPI package
`opentelemetry-proto`) to an intake, the way an app in another language would.

    python3 examples/otlp_post_traces.py http://127.0.0.1:8099

It sends a fixed scenario and prints one JSON line per request: {"step", "status",
"rejected", "message"} (`rejected`/`message` from the answer's `partial_success`), and first a
line {"ids": {...}} with the trace and span ids it used (hex):

- checkout (protobuf): trace A, root SERVER span `GET /checkout` {http.route=/checkout,
  http.response.status_code=200, appsignal.tag.user=u-17} with two children: CLIENT
  `SELECT users` {db.query.text with a literal, db.system.name=postgresql} and INTERNAL
  `charge card` (an `exception` event PaymentDeclined "card declined", status ERROR), which has a
  CLIENT child `POST api.payments`. Spans in the order an SDK exports them (as they end).
- report (OTLP/JSON, gzip): trace B, root `nightly report` {appsignal.namespace=cron,
  appsignal.action_name=Reports#nightly}, status ERROR "disk full", one child `write file`.
- orphan (protobuf): trace C, one span `late child` whose parent is not in the request.
- partial (protobuf): `kept span` and a span with a 4-byte trace id (rejected: partial success).
- then bad requests: truncated body (400), garbage (400), gzip bomb (413), oversized body (413 or
  reset), JSON that is not a request (400).

Stdlib only, besides the protobuf classes; the request helpers are in examples/otlp_http.py.
"""

import base64
import gzip
import json
import sys
import time

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
from opentelemetry.proto.resource.v1 import resource_pb2 as resource
from opentelemetry.proto.trace.v1 import trace_pb2 as t

import otlp_http
from otlp_http import attrs

MS = 1_000_000
T0 = time.time_ns() - 2000 * MS

TRACE_A = bytes.fromhex("5b8efff798038103d269b633813fc60c")
TRACE_B = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
TRACE_C = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
ROOT, SQL, CHARGE, POST = (bytes.fromhex(h) for h in (
    "eee19b7ec3c1b174", "b7ad6b7169203331", "00f067aa0ba902b7", "53995c3f42cd8ad8"))
REPORT, WRITE = bytes.fromhex("1000000000000001"), bytes.fromhex("1000000000000002")
LATE, ABSENT = bytes.fromhex("2000000000000001"), bytes.fromhex("2000000000000099")


def span(trace, span_id, parent, name, kind, start_ms, end_ms, **kv):
    return t.Span(trace_id=trace, span_id=span_id, parent_span_id=parent, name=name, kind=kind,
                  start_time_unix_nano=T0 + start_ms * MS, end_time_unix_nano=T0 + end_ms * MS,
                  attributes=attrs(**{k.replace("__", "."): v for k, v in kv.items()}))


def request(*spans):
    return ts.ExportTraceServiceRequest(resource_spans=[t.ResourceSpans(
        resource=resource.Resource(attributes=attrs(**{"service.name": "shop-py"})),
        scope_spans=[t.ScopeSpans(spans=list(spans))])])


def checkout():
    charge = span(TRACE_A, CHARGE, ROOT, "charge card", t.Span.SPAN_KIND_INTERNAL, 40, 200)
    charge.events.append(t.Span.Event(name="exception", time_unix_nano=T0 + 199 * MS,
                                      attributes=attrs(**{
                                          "exception.type": "PaymentDeclined",
                                          "exception.message": "card declined",
                                          "exception.stacktrace":
                                              "Traceback (most recent call last):\n"
                                              "  File \"pay.py\", line 3, in charge\n"
                                              "PaymentDeclined: card declined"})))
    charge.status.code = t.Status.STATUS_CODE_ERROR
    return request(
        span(TRACE_A, POST, CHARGE, "POST api.payments", t.Span.SPAN_KIND_CLIENT, 50, 190,
             http__request__method="POST"),
        span(TRACE_A, SQL, ROOT, "SELECT users", t.Span.SPAN_KIND_CLIENT, 10, 30,
             db__query__text="SELECT * FROM users WHERE email = 'a@example.com'",
             db__system__name="postgresql"),
        charge,
        span(TRACE_A, ROOT, b"", "GET /checkout", t.Span.SPAN_KIND_SERVER, 0, 250,
             http__route="/checkout", http__response__status_code=200,
             appsignal__tag__user="u-17"))


def report_json():
    root = span(TRACE_B, REPORT, b"", "nightly report", t.Span.SPAN_KIND_INTERNAL, 0, 1500,
                appsignal__namespace="cron", appsignal__action_name="Reports#nightly")
    root.status.code = t.Status.STATUS_CODE_ERROR
    root.status.message = "disk full"
    body = json_format.MessageToDict(request(
        span(TRACE_B, WRITE, REPORT, "write file", t.Span.SPAN_KIND_INTERNAL, 100, 1400), root),
        use_integers_for_enums=True)
    # OTLP/JSON writes trace and span ids as hex, not protobuf JSON's base64.
    for rs in body["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in s:
                        s[key] = base64.b64decode(s[key]).hex()
    return json.dumps(body).encode()


def post(url, step, body, content_type="application/x-protobuf", encoding=None):
    otlp_http.post(url, step, body, path="/v1/traces", answer=ts.ExportTraceServiceResponse,
                   rejected="rejected_spans", content_type=content_type, encoding=encoding)


def main():
    url = sys.argv[1]
    print(json.dumps({"ids": {
        "trace_a": TRACE_A.hex(), "trace_b": TRACE_B.hex(), "trace_c": TRACE_C.hex(),
        "root": ROOT.hex(), "sql": SQL.hex(), "charge": CHARGE.hex(), "post": POST.hex(),
        "report": REPORT.hex(), "write": WRITE.hex(), "late": LATE.hex(),
        "absent": ABSENT.hex()}}), flush=True)
    post(url, "checkout", checkout().SerializeToString())
    post(url, "report", gzip.compress(report_json()), content_type="application/json",
         encoding="gzip")
    post(url, "orphan", request(span(TRACE_C, LATE, ABSENT, "late child",
                                     t.Span.SPAN_KIND_INTERNAL, 0, 5)).SerializeToString())
    bad = span(TRACE_C, LATE, b"", "bad trace id", t.Span.SPAN_KIND_INTERNAL, 0, 5)
    bad.trace_id = b"\x01\x02\x03\x04"
    post(url, "partial", request(
        span(TRACE_C, bytes.fromhex("3000000000000001"), b"", "kept span",
             t.Span.SPAN_KIND_INTERNAL, 0, 5), bad).SerializeToString())
    whole = checkout().SerializeToString()
    post(url, "truncated", whole[:-3])
    post(url, "garbage", b"\xff\xfe\xfd garbage \x00\x01")
    post(url, "gzip-bomb", gzip.compress(b"\0" * (17 * 1024 * 1024)), encoding="gzip")
    post(url, "oversized", b"\0" * (5 * 1024 * 1024))
    post(url, "json-bad", b'{"resourceSpans": [{"scopeSpans": 5}]}',
         content_type="application/json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
