#!/usr/bin/env python3
"""A small OTLP/HTTP receiver that no code of libappsignal's decodes for: every request is parsed
with the official OpenTelemetry protobuf classes (PyPI package `opentelemetry-proto`).

    python3 examples/otlp_receiver.py [--port N]

It prints `{"listening": "http://127.0.0.1:PORT"}` on its first line, then serves:

- POST /v1/metrics, /v1/traces, /v1/logs: protobuf bodies, gzip or not. A request whose
  `x-appsignal-export-id` header (with the path) was seen before is answered 200 and not counted
  again (`duplicates`). Answers are empty protobuf responses (no partial success).
- GET /summary: JSON with what arrived: counter totals, gauge values, histogram count/sum/min/max
  (keyed `name{k=v,...}` like the reference Push API receiver), spans, log records, resources.
  Delta sums and histograms add up into those totals; cumulative ones are levels, not amounts:
  their points are listed as they came, per series (`cumulative_sums`: [time, start, value,
  monotonic]; `cumulative_histograms`: [time, start, count, sum]), and each metrics request's
  `service.instance.id` values are in `metrics_instance_ids` (one list per request).
- POST /control?status=503&count=2&retry_after=1: answer the next `count` export requests with
  `status` (and a `Retry-After` header when given), counted in `failed_on_purpose`.

Stdlib only, besides the protobuf classes.
"""

import argparse
import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

MAX_BODY = 64 * 1024 * 1024
REQUESTS = {
    "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest,
                    metrics_service_pb2.ExportMetricsServiceResponse),
    "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest,
                   trace_service_pb2.ExportTraceServiceResponse),
    "/v1/logs": (logs_service_pb2.ExportLogsServiceRequest,
                 logs_service_pb2.ExportLogsServiceResponse),
}


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def series(name, attrs):
    pairs = sorted(f"{k}={v}" for k, v in attrs.items())
    return f"{name}{{{','.join(pairs)}}}"


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.seen = set()
        self.requests = {"metrics": 0, "traces": 0, "logs": 0}
        self.duplicates = 0
        self.bad_requests = 0
        self.failed_on_purpose = 0
        self.fail_next = 0
        self.fail_status = 503
        self.retry_after = None
        self.counters = {}
        self.gauges = {}  # series -> (time, value)
        self.histograms = {}
        self.spans = []
        self.logs = []
        self.resources = []
        self.scopes = []
        self.export_ids = []
        self.temporalities = set()
        self.cumulative_sums = {}
        self.cumulative_histograms = {}
        self.metrics_instance_ids = []

    def add_resource(self, resource):
        attrs = attributes(resource.attributes)
        if attrs not in self.resources:
            self.resources.append(attrs)

    def add_scope(self, scope):
        entry = {"name": scope.name, "version": scope.version,
                 "attributes": attributes(scope.attributes)}
        if entry not in self.scopes:
            self.scopes.append(entry)

    def metrics(self, request):
        self.metrics_instance_ids.append([
            any_value(kv.value) for rm in request.resource_metrics
            for kv in rm.resource.attributes if kv.key == "service.instance.id"])
        cumulative = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        for rm in request.resource_metrics:
            self.add_resource(rm.resource)
            for sm in rm.scope_metrics:
                self.add_scope(sm.scope)
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    if kind == "sum":
                        self.temporalities.add(("sum", m.sum.aggregation_temporality,
                                                m.sum.is_monotonic))
                        for p in m.sum.data_points:
                            key = series(m.name, attributes(p.attributes))
                            value = p.as_double if p.HasField("as_double") else p.as_int
                            if m.sum.aggregation_temporality == cumulative:
                                self.cumulative_sums.setdefault(key, []).append(
                                    [p.time_unix_nano, p.start_time_unix_nano, value,
                                     m.sum.is_monotonic])
                            else:
                                self.counters[key] = self.counters.get(key, 0.0) + value
                    elif kind == "gauge":
                        for p in m.gauge.data_points:
                            key = series(m.name, attributes(p.attributes))
                            value = p.as_double if p.HasField("as_double") else p.as_int
                            old = self.gauges.get(key)
                            if old is None or p.time_unix_nano >= old[0]:
                                self.gauges[key] = (p.time_unix_nano, value)
                    elif kind == "exponential_histogram":
                        eh = m.exponential_histogram
                        self.temporalities.add(("exponential_histogram",
                                                eh.aggregation_temporality, False))
                        for p in eh.data_points:
                            key = series(m.name, attributes(p.attributes))
                            if eh.aggregation_temporality == cumulative:
                                self.cumulative_histograms.setdefault(key, []).append(
                                    [p.time_unix_nano, p.start_time_unix_nano, p.count, p.sum])
                                continue
                            buckets = (sum(p.positive.bucket_counts)
                                       + sum(p.negative.bucket_counts) + p.zero_count)
                            h = self.histograms.setdefault(key, {
                                "count": 0, "sum": 0.0, "min": None, "max": None,
                                "bucket_total": 0, "scales": []})
                            h["count"] += p.count
                            h["sum"] += p.sum
                            h["bucket_total"] += buckets
                            h["min"] = p.min if h["min"] is None else min(h["min"], p.min)
                            h["max"] = p.max if h["max"] is None else max(h["max"], p.max)
                            if p.scale not in h["scales"]:
                                h["scales"].append(p.scale)

    def traces(self, request):
        for rs in request.resource_spans:
            self.add_resource(rs.resource)
            for ss in rs.scope_spans:
                self.add_scope(ss.scope)
                for s in ss.spans:
                    self.spans.append({
                        "name": s.name,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "kind": s.kind,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "attributes": attributes(s.attributes),
                        "events": [{"name": e.name, "attributes": attributes(e.attributes)}
                                   for e in s.events],
                        "status": s.status.code,
                    })

    def logs_request(self, request):
        for rl in request.resource_logs:
            self.add_resource(rl.resource)
            for sl in rl.scope_logs:
                self.add_scope(sl.scope)
                for r in sl.log_records:
                    self.logs.append({
                        "body": any_value(r.body),
                        "severity_number": r.severity_number,
                        "severity_text": r.severity_text,
                        "time": r.time_unix_nano,
                        "attributes": attributes(r.attributes),
                        "trace_id": r.trace_id.hex(),
                    })

    def summary(self):
        return {
            "requests": self.requests,
            "duplicates": self.duplicates,
            "bad_requests": self.bad_requests,
            "failed_on_purpose": self.failed_on_purpose,
            "counters": self.counters,
            "gauges": {k: v for k, (_, v) in self.gauges.items()},
            "distributions": self.histograms,
            "spans": self.spans,
            "logs": self.logs,
            "resources": self.resources,
            "scopes": self.scopes,
            "export_ids": self.export_ids,
            "temporalities": sorted(list(t) for t in self.temporalities),
            "cumulative_sums": self.cumulative_sums,
            "cumulative_histograms": self.cumulative_histograms,
            "metrics_instance_ids": self.metrics_instance_ids,
        }


STATE = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", content_type="application/x-protobuf", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if urlparse(self.path).path == "/summary":
            with STATE.lock:
                body = json.dumps(STATE.summary()).encode()
            self.reply(200, body, "application/json")
        else:
            self.reply(404, b"not found", "text/plain")

    def do_POST(self):
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.reply(413, b"too large", "text/plain")
            return
        body = self.rfile.read(length)
        if url.path == "/control":
            q = parse_qs(url.query)
            with STATE.lock:
                STATE.fail_next = int(q.get("count", ["1"])[0])
                STATE.fail_status = int(q.get("status", ["503"])[0])
                STATE.retry_after = q.get("retry_after", [None])[0]
            self.reply(200, b"{}", "application/json")
            return
        if url.path not in REQUESTS:
            self.reply(404, b"not found", "text/plain")
            return
        request_class, response_class = REQUESTS[url.path]
        with STATE.lock:
            if STATE.fail_next > 0:
                STATE.fail_next -= 1
                STATE.failed_on_purpose += 1
                headers = [("Retry-After", STATE.retry_after)] if STATE.retry_after else []
                self.reply(STATE.fail_status, b"failing on purpose", "text/plain", headers)
                return
        try:
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            request = request_class()
            request.ParseFromString(body)
        except (OSError, EOFError, DecodeError) as e:
            with STATE.lock:
                STATE.bad_requests += 1
            self.reply(400, str(e).encode(), "text/plain")
            return
        export_id = self.headers.get("x-appsignal-export-id", "")
        with STATE.lock:
            key = (url.path, export_id)
            if export_id and key in STATE.seen:
                STATE.duplicates += 1
            else:
                STATE.seen.add(key)
                STATE.export_ids.append(f"{url.path}:{export_id}")
                signal = url.path.rsplit("/", 1)[1]
                STATE.requests[signal] += 1
                if signal == "metrics":
                    STATE.metrics(request)
                elif signal == "traces":
                    STATE.traces(request)
                else:
                    STATE.logs_request(request)
        self.reply(200, response_class().SerializeToString())


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A sender killed mid-request (the tests SIGKILL leaders) resets its connection: not news.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = Server(("127.0.0.1", args.port), Handler)
    print(json.dumps({"listening": f"http://127.0.0.1:{server.server_address[1]}"}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
