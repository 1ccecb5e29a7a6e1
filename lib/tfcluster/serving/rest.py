"""TF Serving's REST API (`--rest_api_port`) and the Prometheus endpoint.

  GET  /v1/models/<m>[/versions/<v>|/labels/<l>]            model status
  GET  /v1/models/<m>[/versions/<v>|/labels/<l>]/metadata   signatures
  POST /v1/models/<m>[/versions/<v>|/labels/<l>]:predict    {"instances": [...]} or {"inputs": ...}
  POST ...:classify / ...:regress                           {"examples": [...]}
  GET  <prometheus path> (from --monitoring_config_file)    Prometheus text

JSON follows TF Serving: the row format (`instances` -> `predictions`) and the columnar
format (`inputs` -> `outputs`); strings as text, binary as {"b64": "..."}; errors as
{"error": "..."} with the HTTP status of the gRPC code.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
from google.protobuf import json_format

from tfcluster.serving.service import Core, as_failure
from tfcluster.serving.tensors import Failure, from_json, invalid, to_json

log = logging.getLogger("tfcluster.serving")

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify|regress))?/?$"
)

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def _model_spec(name: str, version: str | None, label: str | None, signature: str = ""):
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        spec.version.value = int(version)
    elif label is not None:
        spec.version_label = label
    return spec


def _to_dict(msg) -> dict:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def parse_predict_body(body: dict, inputs_spec: dict) -> tuple[dict[str, np.ndarray], bool]:
    """A REST predict body -> (inputs, row_format). `inputs_spec`: key -> contract.Tensor."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object with 'instances' or 'inputs'")
    has_rows, has_cols = "instances" in body, "inputs" in body
    if has_rows == has_cols:
        raise invalid("the request body must have exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    keys = list(inputs_spec)
    if has_rows:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise invalid("'instances' must be a non-empty list")
        named = all(isinstance(r, dict) and "b64" not in r for r in rows)
        if named:
            cols: dict[str, list] = {}
            for i, r in enumerate(rows):
                if set(r) != set(cols or r):
                    raise invalid(f"instance {i} has keys {sorted(r)}; every instance needs the same keys")
                for k, v in r.items():
                    cols.setdefault(k, []).append(v)
        elif len(keys) == 1:
            cols = {keys[0]: rows}
        else:
            raise invalid(f"the signature has inputs {keys}: each instance must be an object with those keys")
        arrays = {}
        for k, v in cols.items():
            if k not in inputs_spec:
                arrays[k] = np.array(v, dtype=object)  # reported as an unknown alias by the signature check
            else:
                arrays[k] = from_json(k, v, inputs_spec[k])
        return arrays, True
    cols_in = body["inputs"]
    if isinstance(cols_in, dict) and not (set(cols_in) == {"b64"}):
        return {k: from_json(k, v, inputs_spec[k]) if k in inputs_spec else np.array(v, dtype=object) for k, v in cols_in.items()}, False
    if len(keys) != 1:
        raise invalid(f"the signature has inputs {keys}: 'inputs' must be an object with those keys")
    return {keys[0]: from_json(keys[0], cols_in, inputs_spec[keys[0]])}, False


def format_predict(outputs: dict[str, np.ndarray], rows: bool) -> dict:
    if rows:
        n = {a.shape[0] if a.ndim else None for a in outputs.values()}
        if len(n) != 1 or None in n:
            raise invalid(
                "outputs have different batch sizes "
                f"({ {k: list(a.shape) for k, a in outputs.items()} }); use the columnar format ('inputs')"
            )
        if len(outputs) == 1:
            ((k, a),) = outputs.items()
            return {"predictions": to_json(k, a)}
        cols = {k: to_json(k, a) for k, a in outputs.items()}
        return {"predictions": [{k: cols[k][i] for k in cols} for i in range(n.pop())]}
    if len(outputs) == 1:
        ((k, a),) = outputs.items()
        return {"outputs": to_json(k, a)}
    return {"outputs": {k: to_json(k, a) for k, a in outputs.items()}}


def _feature(name: str, value) -> "object":
    """A JSON feature value (number, string, {"b64": ...}, or a list of one kind) -> tf.train.Feature,
    typed as TF Serving's REST API types it: integers int64_list, other numbers float_list, text bytes_list."""
    import base64

    from tensorflow.core.example import feature_pb2

    values = value if isinstance(value, list) else [value]
    f = feature_pb2.Feature()
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        f.int64_list.value.extend(values)
    elif values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        f.float_list.value.extend(float(v) for v in values)
    elif values and all(isinstance(v, str) or (isinstance(v, dict) and set(v) == {"b64"}) for v in values):
        try:
            f.bytes_list.value.extend(v.encode() if isinstance(v, str) else base64.b64decode(v["b64"], validate=True)
                                      for v in values)
        except (ValueError, TypeError) as e:
            raise invalid(f"feature {name!r}: bad base64 value: {e}") from None
    else:
        raise invalid(f"feature {name!r}: expected a number, a string, {{\"b64\": ...}} or a non-empty list of one of them, "
                      f"got {json.dumps(value)[:80]}")
    return f


def _example(obj, where: str):
    from tensorflow.core.example import example_pb2

    if not isinstance(obj, dict):
        raise invalid(f"{where} must be a JSON object of feature name -> value")
    ex = example_pb2.Example()
    for k, v in obj.items():
        ex.features.feature[k].CopyFrom(_feature(k, v))
    return ex


def examples_request(body, kind: str, spec):
    """A REST :classify/:regress body {"signature_name", "context", "examples"} -> Classification/RegressionRequest."""
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object with 'examples'")
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise invalid("'examples' must be a non-empty list of JSON objects")
    req = (classification_pb2.ClassificationRequest if kind == "classify" else regression_pb2.RegressionRequest)()
    req.model_spec.CopyFrom(spec)
    if "context" in body:
        target = req.input.example_list_with_context
        target.context.CopyFrom(_example(body["context"], "'context'"))
    else:
        target = req.input.example_list
    for i, e in enumerate(examples):
        target.examples.add().CopyFrom(_example(e, f"example {i}"))
    return req


def format_classify(resp) -> dict:
    return {"results": [[[c.label, c.score] for c in cl.classes] for cl in resp.result.classifications]}


def format_regress(resp) -> dict:
    return {"results": [r.value for r in resp.result.regressions]}


def make_handler(core: Core, monitoring_path: str | None, timeout_s: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: drains cleanly
        server_version = "tfcluster-model-server"

        def log_message(self, fmt, *args):  # quiet: one debug line per request
            log.debug("rest %s", fmt % args)

        def _send(self, status: int, body: bytes, ctype: str = "application/json", headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj, headers: dict | None = None) -> None:
            self._send(status, (json.dumps(obj, indent=1) + "\n").encode(), headers=headers)

        def _error(self, f: Failure) -> None:
            self._json(HTTP_STATUS.get(f.code, 500), {"error": f.message})

        def send_error(self, code, message=None, explain=None):
            """http.server's own errors (a malformed request line, an unknown method) as JSON, not HTML."""
            try:
                self._json(code, {"error": message or explain or self.responses.get(code, ("error",))[0]})
            except OSError:
                pass  # the client went away

        def _not_allowed(self):
            """405 with an Allow header on a known URL (POST for :predict/:classify/:regress, else GET); 404 elsewhere."""
            path = self.path.split("?", 1)[0]
            m = _PATH.match(path)
            if not m and path != monitoring_path:
                return self._json(404, {"error": f"Malformed request: {self.command} {path}"})
            allowed = "POST" if m and m["verb"] else "GET"
            self._json(405, {"error": f"Method {self.command} is not allowed on {path}; use {allowed}"}, {"Allow": allowed})

        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = do_CONNECT = _not_allowed

        def _read_body(self) -> object:
            length = self.headers.get("Content-Length")
            try:
                n = int(length) if length is not None else 0
                if n < 0:
                    raise ValueError
            except ValueError:
                raise invalid(f"bad Content-Length header {length!r}") from None
            raw = self.rfile.read(n)
            try:
                return json.loads(raw or b"{}")
            except RecursionError:
                raise invalid("JSON parse error: the request body is nested too deeply") from None
            except ValueError as e:  # JSONDecodeError, and bytes that are not UTF-8
                raise invalid(f"JSON parse error: {e}") from None

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if monitoring_path and path == monitoring_path:
                return self._send(200, core.metrics.text().encode(), "text/plain; version=0.0.4; charset=utf-8")
            m = _PATH.match(path)
            if not m or m["verb"]:
                return self._json(404, {"error": f"Malformed request: GET {path}"})
            try:
                spec = _model_spec(m["name"], m["version"], m["label"])
                if m["metadata"]:
                    from tensorflow_serving.apis import get_model_metadata_pb2

                    req = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"])
                    resp = core.metadata_proto(req, "REST")
                    d = _to_dict(resp)
                    d["metadata"]["signature_def"].pop("@type", None)
                    return self._json(200, d)
                from tensorflow_serving.apis import get_model_status_pb2

                resp = core.status_proto(get_model_status_pb2.GetModelStatusRequest(model_spec=spec))
                return self._json(200, _to_dict(resp))
            except Exception as e:  # noqa: BLE001
                return self._error(as_failure(e))

        def do_POST(self):
            path = self.path.split("?", 1)[0]
            m = _PATH.match(path)
            if not m or not m["verb"]:
                return self._json(404, {"error": f"Malformed request: POST {path}"})
            try:
                body = self._read_body()
                spec = _model_spec(m["name"], m["version"], m["label"], body.get("signature_name", "") if isinstance(body, dict) else "")
                if m["verb"] == "classify":
                    return self._json(200, format_classify(core.classify_proto(examples_request(body, "classify", spec), "REST")))
                if m["verb"] == "regress":
                    return self._json(200, format_regress(core.regress_proto(examples_request(body, "regress", spec), "REST")))

                def go():
                    servable = core.manager.resolve(spec)
                    sig = servable.signature(spec.signature_name)
                    inputs, rows = parse_predict_body(body, sig.inputs)
                    out = core.run(servable, sig, inputs)
                    return format_predict(out, rows)

                return self._json(200, core.timed(spec.name, "predict", "REST", go))
            except Exception as e:  # noqa: BLE001
                return self._error(as_failure(e))

    return Handler


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() waits for in-flight requests


class RestServer:
    def __init__(self, core: Core, host: str, port: int, monitoring_path: str | None, timeout_s: float):
        self.httpd = _HTTPServer((host, port), make_handler(core, monitoring_path, timeout_s))
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, then wait for in-flight requests (block_on_close)."""
        self.httpd.shutdown()
        self.httpd.server_close()
