"""Fixtures for the container and Kubernetes tests.

* `chart` / `render`: the tf-serving chart through helm-python-sdk (a real Helm engine, offline).
* `crd_schema`: the KubeRay CRD openAPIV3Schema from ../shared/schemas/kuberay (skipped when absent).
* `fake_kube`: a FAKE Kubernetes API server on loopback (127.0.0.1, an ephemeral port), a small
  http.server that implements only what `tfcluster deploy` and `submit` call, records every
  request, and a kubeconfig that points the real `kubernetes` client at it.
"""

from __future__ import annotations

import copy
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from kube_support import KUBERAY_SCHEMAS, CHART, strict_schema  # noqa: E402


@pytest.fixture(scope="session")
def chart():
    import helm_python

    with helm_python.Chart.load(str(CHART)) as c:
        yield c


@pytest.fixture(scope="session")
def render(chart):
    """render(values) -> list of objects (NOTES.txt and empty documents dropped)."""

    def _render(values=None, release="nmt", namespace="serving"):
        out = chart.render(values or {}, name=release, namespace=namespace, is_install=True)
        objs = []
        for path, text in sorted(out.items()):
            if path.endswith(".yaml"):
                objs += [o for o in yaml.safe_load_all(text) if o]
        return objs

    return _render


_CRD_CACHE: dict[str, dict] = {}


@pytest.fixture(scope="session")
def crd_schema():
    """crd_schema("RayCluster"|"RayJob") -> the v1 openAPIV3Schema, strict."""
    files = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}

    def _get(kind):
        path = KUBERAY_SCHEMAS / files[kind]
        if not path.exists():
            pytest.skip(f"KubeRay CRD schemas not found at {KUBERAY_SCHEMAS} (a fresh clone has no ../shared); "
                        "RayCluster/RayJob validation skipped")
        if kind not in _CRD_CACHE:
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            crd = yaml.load(path.read_text(), Loader=loader)
            v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
            _CRD_CACHE[kind] = strict_schema(v1["schema"]["openAPIV3Schema"])
        return _CRD_CACHE[kind]

    return _get


# ---------------------------------------------------------------------------- fake API server


class FakeKube:
    """State and request log of the fake API server."""

    def __init__(self):
        self.objects: dict[str, dict] = {}  # REST path -> object
        self.requests: list[dict] = []  # {"method", "path", "query", "content_type", "body"}
        self.deployment_status: list[dict] = []  # statuses handed out in order (the last one repeats)
        self.model_status: dict[str, list[dict]] = {}  # model -> REST status bodies in order
        self.rayjob_status: list[dict] = []
        self.next_rv = 1
        self.lock = threading.Lock()

    def bump(self, obj):
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.next_rv)
        self.next_rv += 1

    def applies(self):
        return [r for r in self.requests if r["method"] == "PATCH" and r["content_type"] == "application/apply-patch+yaml"]


def _handler(state: FakeKube):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):  # quiet
            pass

        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code, reason, message):
            self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                              "message": message, "code": code})

        def _read(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            ctype = (self.headers.get("Content-Type") or "").split(";")[0]
            body = yaml.safe_load(raw) if raw else None  # JSON is YAML
            return ctype, body

        def _log(self, ctype=None, body=None):
            u = urllib.parse.urlsplit(self.path)
            entry = {"method": self.command, "path": u.path, "query": dict(urllib.parse.parse_qsl(u.query)),
                     "content_type": ctype, "body": body, "auth": self.headers.get("Authorization")}
            with state.lock:
                state.requests.append(entry)
            return u.path

        def do_GET(self):
            path = self._log()
            if "/proxy/v1/models/" in path:
                model = path.rsplit("/", 1)[-1]
                seq = state.model_status.get(model)
                if not seq:
                    return self._send(404, {"error": f"Could not find any versions of model {model}"})
                body = seq.pop(0) if len(seq) > 1 else seq[0]
                return self._send(200, body)
            base = path[: -len("/status")] if path.endswith("/status") else path
            obj = state.objects.get(base)
            if obj is None:
                return self._status(404, "NotFound", f"{base.rsplit('/', 1)[-1]} not found")
            obj = copy.deepcopy(obj)
            if obj["kind"] == "Deployment" and state.deployment_status:
                st = state.deployment_status.pop(0) if len(state.deployment_status) > 1 else state.deployment_status[0]
                obj["status"] = st
            if obj["kind"] == "RayJob" and state.rayjob_status:
                obj["status"] = state.rayjob_status.pop(0) if len(state.rayjob_status) > 1 else state.rayjob_status[0]
            return self._send(200, obj)

        def do_PATCH(self):
            ctype, body = self._read()
            path = self._log(ctype, body)
            q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            with state.lock:
                if ctype == "application/apply-patch+yaml":
                    if not q.get("fieldManager"):
                        return self._status(422, "Invalid", "fieldManager is required for apply requests")
                    if path.rsplit("/", 1)[-1] != body["metadata"]["name"]:
                        return self._status(400, "BadRequest", "the name of the object does not match the name on the URL")
                    if "/monitoring.coreos.com/" in path:
                        return self._status(404, "NotFound", "the server could not find the requested resource")
                    obj = copy.deepcopy(body)
                    obj["metadata"].setdefault("generation", 1)
                    if obj["kind"] == "Deployment":
                        obj["spec"].setdefault("replicas", 1)  # the API server's default
                    state.bump(obj)
                    if q.get("dryRun") != "All":
                        state.objects[path] = obj
                    return self._send(200, obj)
                obj = state.objects.get(path)
                if obj is None:
                    return self._status(404, "NotFound", "not found")
                if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                    return self._status(415, "UnsupportedMediaType", f"unsupported patch type {ctype}")
                want_rv = (body.get("metadata") or {}).get("resourceVersion")
                if want_rv and want_rv != obj["metadata"]["resourceVersion"]:
                    return self._status(409, "Conflict", "the object has been modified; please apply your changes to the latest version")
                for k, v in (body.get("data") or {}).items():
                    obj.setdefault("data", {})[k] = v
                for k, v in ((body.get("metadata") or {}).get("annotations") or {}).items():
                    obj["metadata"].setdefault("annotations", {})[k] = v
                state.bump(obj)
                return self._send(200, obj)

        def do_POST(self):
            ctype, body = self._read()
            path = self._log(ctype, body)
            if not path.startswith("/apis/ray.io/v1/namespaces/") or not path.endswith("/rayjobs"):
                return self._status(404, "NotFound", "the server could not find the requested resource")
            key = f"{path}/{body['metadata']['name']}"
            with state.lock:
                if key in state.objects:
                    return self._status(409, "AlreadyExists", f"rayjobs.ray.io \"{body['metadata']['name']}\" already exists")
                obj = copy.deepcopy(body)
                obj["metadata"]["namespace"] = path.split("/")[5]
                state.bump(obj)
                state.objects[key] = obj
            return self._send(201, obj)

    return Handler


@pytest.fixture
def fake_kube(tmp_path):
    """A fake Kubernetes API server on loopback 127.0.0.1 and a kubeconfig for it: (state, kubeconfig path)."""
    state = FakeKube()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host = f"http://127.0.0.1:{server.server_address[1]}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake-loopback", "cluster": {"server": host}}],
        "users": [{"name": "tester", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake-loopback", "user": "tester", "namespace": "serving"}}],
    }))
    state.host = host
    try:
        yield state, str(kubeconfig)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def no_kube_env(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return monkeypatch
