"""What the OTLP/HTTP example senders share (examples/otlp_post.py, examples/otlp_post_traces.py):
attributes built with the official protobuf classes, and one request posted with its outcome
printed as a JSON line {"step", "status", "rejected", "message"}.

Stdlib only, besides the protobuf classes of the PyPI package `opentelemetry-proto`.
"""

import http.client
import json
from urllib.parse import urlparse

from google.protobuf import json_format
from opentelemetry.proto.common.v1 import common_pb2 as common


def attrs(**kv):
    """OTLP attributes: bools as bool_value, ints as int_value, anything else as a string."""
    out = []
    for k, v in kv.items():
        if isinstance(v, bool):
            value = common.AnyValue(bool_value=v)
        elif isinstance(v, int):
            value = common.AnyValue(int_value=v)
        else:
            value = common.AnyValue(string_value=str(v))
        out.append(common.KeyValue(key=k, value=value))
    return out


def post(url, step, body, *, path, answer, rejected, content_type="application/x-protobuf",
         encoding=None, method="POST"):
    """Sends `body` to `url` + `path` and prints the outcome. On a 200 the answer is decoded as
    `answer` (the export service's response class) and its partial success reported: `rejected`
    names its count field (rejected_spans, rejected_data_points). A connection cut is
    status "reset"."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    result = {"step": step}
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        result["status"] = response.status
        if response.status == 200:
            decoded = answer()
            if content_type == "application/json":
                json_format.Parse(data, decoded)
            else:
                decoded.ParseFromString(data)
            result["rejected"] = getattr(decoded.partial_success, rejected)
            result["message"] = decoded.partial_success.error_message
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        result["status"] = "reset"
        result["message"] = str(e)
    finally:
        conn.close()
    print(json.dumps(result), flush=True)
