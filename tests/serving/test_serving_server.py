"""The local model server end to end, started as a subprocess like a user would.

One server for the module (batching on, REST + Prometheus on, polling every 2 s) over a
repository of tiny contract-following models exported with tfcluster.export.save_version.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf

from tfcluster import contract
from tfcluster.serving import Client, LocalServer, ServingError, tiny
from tfcluster.serving.client import STATE_NAMES  # noqa: F401  (the client's view of states)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from serving_stub_client import StubClient  # noqa: E402

POLL_S = 2
OBS = np.array([[0.1, -0.2, 0.3, 0.05], [1.0, 2.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]], np.float32)
SENTENCES = np.array([b"a man rides a bike .", b"two dogs play in the snow ."], dtype=object)


def in_process(path: str, **inputs) -> dict[str, np.ndarray]:
    fn = tf.saved_model.load(path).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k])


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models"))
    paths = {
        "pg1": tiny.export(tiny.pg_policy(0), base, contract.PG, warmup=[{"observation": OBS[:1]}]),
        "pg2": tiny.export(tiny.pg_policy(1), base, contract.PG),
        "nmt1": tiny.export(tiny.nmt_echo(), base, contract.NMT, warmup=[{"source": ["a man rides a bike ."]}]),
        "dcgan1": tiny.export(tiny.dcgan_ramp(z_dim=8, size=4), base, contract.DCGAN),
        "probe1": tiny.export(tiny.batch_probe(), base, tiny.PROBE),
        "rolling1": tiny.export(tiny.pg_policy(10), base, contract.PG, name="rolling"),
    }
    cfg = os.path.join(base, "models.config")
    with open(cfg, "w") as f:
        f.write(f"""model_config_list {{
  config {{ name: "pg" base_path: "{base}/pg" model_platform: "tensorflow" model_version_policy {{ all {{}} }}
           version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }} }}
  config {{ name: "nmt" base_path: "{base}/nmt" model_platform: "tensorflow" }}
  config {{ name: "dcgan" base_path: "{base}/dcgan" model_platform: "tensorflow" }}
  config {{ name: "probe" base_path: "{base}/probe" model_platform: "tensorflow" }}
  config {{ name: "rolling" base_path: "{base}/rolling" model_platform: "tensorflow"
           model_version_policy {{ latest {{ num_versions: 1 }} }} }}
}}
""")
    batching = os.path.join(base, "batching.config")
    with open(batching, "w") as f:
        f.write("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 20000 }\nnum_batch_threads { value: 1 }\n")
    return {"base": base, "config": cfg, "batching": batching, **paths}


@pytest.fixture(scope="module")
def server(repo):
    srv = LocalServer(
        model_config_file=repo["config"],
        enable_batching=True,
        batching_parameters_file=repo["batching"],
        monitoring_config_file=os.path.join(ROOT, "serving", "monitoring.config"),
        file_system_poll_wait_seconds=POLL_S,
        log_path=os.path.join(repo["base"], "server.log"),
    ).start()
    try:
        srv.wait_until_available("pg", "nmt", "dcgan", "probe", "rolling", timeout_s=180)
        yield srv
    finally:
        assert srv.stop() == 0, srv.log_tail()


@pytest.fixture(scope="module")
def stub(server):
    c = StubClient(server.target)
    yield c
    c.close()


def test_stub_client_imports_no_tfcluster():
    tree = ast.parse(open(os.path.join(HERE, "serving_stub_client.py")).read())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in modules if m and m.startswith("tfcluster")]


def test_stub_client_gets_in_process_outputs_and_status(stub, repo):
    for version, label, path in [(1, None, repo["pg1"]), (None, "canary", repo["pg2"]), (None, None, repo["pg2"])]:
        out, served = stub.predict("pg", {"observation": OBS}, version=version, label=label)
        assert served == int(os.path.basename(path))
        assert_same(out, in_process(path, observation=OBS))
    out, served = stub.predict("nmt", {"source": SENTENCES})
    assert_same(out, in_process(repo["nmt1"], source=SENTENCES))
    assert out["translation"][0] == b". BIKE A RIDES MAN A"
    assert stub.status("pg") == [(1, "AVAILABLE", 0, ""), (2, "AVAILABLE", 0, "")]
    assert stub.status("nmt", version=1) == [(1, "AVAILABLE", 0, "")]


def test_unknown_input_key_is_invalid_argument_and_server_keeps_serving(stub, repo):
    with pytest.raises(grpc.RpcError) as e:
        stub.predict("pg", {"obs": OBS})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == (
        "model pg version 2 signature serving_default: input tensor alias not found in signature: obs. "
        "Inputs expected to be in the set {observation: float32 [-1, 4]}."
    )
    out, _ = stub.predict("pg", {"observation": OBS})
    assert_same(out, in_process(repo["pg2"], observation=OBS))


def test_metadata_is_a_signature_def_map_in_an_any(stub):
    type_url, version, sigs = stub.metadata("pg")
    assert type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    assert version == 2
    sig = sigs.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    obs = sig.inputs["observation"]
    assert obs.dtype == tf.float32.as_datatype_enum and [d.size for d in obs.tensor_shape.dim] == [-1, 4]
    assert sorted(sig.outputs) == ["action", "probabilities"]


def _request(model="pg", inputs=None, version=None, label=None, signature=""):
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name, req.model_spec.signature_name = model, signature
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    for k, v in (inputs if inputs is not None else {"observation": OBS}).items():
        req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    return req


BAD = [
    ("unknown model", _request(model="nope"), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope); model 'nope' is not served here (models: dcgan, nmt, pg, probe, rolling)"),
    ("unknown version", _request(version=7), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Specific(pg, 7); available versions of pg: [1, 2]"),
    ("unknown label", _request(label="beta"), grpc.StatusCode.NOT_FOUND,
     "Unrecognized servable version label: beta for model pg (labels: canary=2, stable=1)"),
    ("wrong dtype", _request(inputs={"observation": OBS.astype(np.float64)}), grpc.StatusCode.INVALID_ARGUMENT,
     "model pg version 2 signature serving_default: input 'observation' has the wrong dtype: got float64 [3, 4], "
     "expected observation: float32 [-1, 4]."),
    # A shape is the graph's to check, as in TF Serving: this model's graph says what it expects.
    ("wrong shape", _request(inputs={"observation": OBS[:, :3]}), grpc.StatusCode.INVALID_ARGUMENT,
     "model pg version 2 signature serving_default: observation must have shape [batch, 4]; got shape [3, 3]"),
    ("missing input", _request(inputs={}), grpc.StatusCode.INVALID_ARGUMENT,
     "model pg version 2 signature serving_default: missing input observation; the signature expects "
     "{observation: float32 [-1, 4]}."),
    ("batch above the limit", _request(model="probe", inputs={"x": np.zeros((9, 1), np.float32)}), grpc.StatusCode.INVALID_ARGUMENT,
     "model probe version 1 signature serving_default: batch of 9 rows is larger than max_batch_size 8 "
     "(--batching_parameters_file); send at most that many rows per request"),
    ("unknown signature", _request(signature="classify"), grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "classify" not found. Model pg version 2 has the signatures: serving_default.'),
]


@pytest.mark.parametrize("name,request_,code,message", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_exact_status_and_server_keeps_serving(stub, repo, name, request_, code, message):
    with pytest.raises(grpc.RpcError) as e:
        stub.predictions.Predict(request_, timeout=10)
    assert (e.value.code(), e.value.details()) == (code, message)
    out, _ = stub.predict("pg", {"observation": OBS}, version=1)
    assert_same(out, in_process(repo["pg1"], observation=OBS))


def test_classify_and_regress_on_a_predict_signature_say_what_is_missing(stub):
    """TF Serving's default (no --enable_signature_method_name_check): any signature whose inputs and
    outputs fit may be classified; pg's float observation does not."""
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    for call, req, api in [
        (stub.predictions.Classify, classification_pb2.ClassificationRequest(), "Classify"),
        (stub.predictions.Regress, regression_pb2.RegressionRequest(), "Regress"),
    ]:
        req.model_spec.name = "pg"
        req.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.0)
        with pytest.raises(grpc.RpcError) as e:
            call(req, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details() == (
            f"model pg version 2 signature serving_default: {api} input must be a string tensor of serialized "
            "tf.Example, got float32"
        )


def test_client_predict_metadata_status(server, repo):
    with Client(server.target, timeout_s=10) as c:
        out = c.predict("nmt", "a man rides a bike .")
        assert_same(out, in_process(repo["nmt1"], source=np.array([b"a man rides a bike ."], dtype=object)))
        out = c.predict("pg", {"observation": OBS.tolist()}, label="stable")  # Python lists take the contract dtype
        assert_same(out, in_process(repo["pg1"], observation=OBS))
        md = c.metadata("pg", version=1)
        assert md.version == 1
        assert md.signatures["serving_default"].inputs == (contract.Tensor("observation", "float32", (None, 4)),)
        assert [(s.version, s.state) for s in c.status("pg")] == [(1, "AVAILABLE"), (2, "AVAILABLE")]
        assert c.wait_until_available("pg", timeout_s=5) == 2
        with pytest.raises(ServingError) as e:
            c.predict("pg", {"observation": np.zeros((1, 5), np.float32)})
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert str(e.value).startswith(f"Predict pg at {server.target}: INVALID_ARGUMENT: model pg version 2 ")
        assert str(e.value).endswith("observation must have shape [batch, 4]; got shape [1, 5]")
        with pytest.raises(ServingError) as e:
            c.wait_until_available("absent", timeout_s=0.5, poll_s=0.1)
        assert "absent not AVAILABLE" in str(e.value) and "\n" not in str(e.value)


def test_unreachable_server_is_one_line():
    from tfcluster.serving.local import free_port

    with Client(f"127.0.0.1:{free_port()}", timeout_s=2, retries=1, backoff_s=0.01) as c:
        with pytest.raises(ServingError) as e:
            c.status("pg")
    msg = str(e.value)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and "\n" not in msg
    assert msg.startswith("cannot reach a model server at 127.0.0.1:") and "(2 tries)" in msg


def test_cli_predict(server, repo, tmp_path, capsys):
    from tfcluster.serving import cli

    assert cli.main(["--server", server.target, "--model", "nmt", "a man rides a bike .", "hello world"]) == 0
    assert capsys.readouterr().out == ". BIKE A RIDES MAN A\nWORLD HELLO\n"
    assert cli.main(["--server", server.target, "--model", "pg", "--version", "1", "--observation", json.dumps(OBS[0].tolist())]) == 0
    want = in_process(repo["pg1"], observation=OBS[:1])
    assert capsys.readouterr().out == (
        f"action: {json.dumps(want['action'].tolist())}\nprobabilities: {json.dumps(want['probabilities'].tolist())}\n"
    )
    grid = tmp_path / "grid.png"
    assert cli.main(["--server", server.target, "--model", "dcgan", "--num_images", "5", "--out", str(grid)]) == 0
    assert capsys.readouterr().out == f"wrote {grid}: 5 images 4x4x1 in a grid\n"
    from PIL import Image

    assert Image.open(grid).size == (3 * 6 + 2, 2 * 6 + 2)  # 3 columns x 2 rows of 4x4 + 2-pixel borders
    with pytest.raises(SystemExit) as e:
        cli.main(["--server", server.target, "--model", "pg", "--observation", "[1, 2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --observation: not valid JSON") and err.count("\n") == 1


def _http(url: str, body: dict | None = None) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if r.headers.get_content_type() == "application/json" else text
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def test_rest_api(server, repo):
    url = server.rest_url
    assert _http(f"{url}/v1/models/pg/labels/stable") == (
        200, {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    )
    code, md = _http(f"{url}/v1/models/pg/versions/1/metadata")
    assert code == 200 and md["model_spec"] == {"name": "pg", "version": "1", "signature_name": ""}
    assert md["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["observation"]["dtype"] == "DT_FLOAT"
    want = in_process(repo["pg1"], observation=OBS)
    code, rows = _http(f"{url}/v1/models/pg/versions/1:predict", {"instances": OBS.tolist()})
    assert code == 200
    assert [r["action"] for r in rows["predictions"]] == want["action"].tolist()
    np.testing.assert_array_equal(np.array([r["probabilities"] for r in rows["predictions"]], np.float32), want["probabilities"])
    code, cols = _http(f"{url}/v1/models/nmt:predict", {"inputs": {"source": [s.decode() for s in SENTENCES]}})
    assert code == 200 and cols["outputs"]["translation"] == [". BIKE A RIDES MAN A", ". SNOW THE IN PLAY DOGS TWO"]
    assert _http(f"{url}/v1/models/pg:predict", {"instances": [{"obs": [1, 2, 3, 4]}]}) == (
        400, {"error": "model pg version 2 signature serving_default: input tensor alias not found in signature: obs. "
                       "Inputs expected to be in the set {observation: float32 [-1, 4]}."}
    )
    assert _http(f"{url}/v1/models/nope")[0] == 404
    code, text = _http(f"{url}/monitoring/prometheus/metrics")
    assert code == 200
    assert ':tensorflow:serving:request_count{model_name="pg",status="OK"}' in text
    assert ':tensorflow:serving:request_count{model_name="pg",status="INVALID_ARGUMENT"}' in text
    assert "# TYPE :tensorflow:serving:request_latency histogram" in text


def _raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type"), r.getheader("Allow"), r.read()
    finally:
        conn.close()


MALFORMED = [
    ("json nested past the parser's limit", "POST", "/v1/models/pg:predict",
     b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested too deeply"),
    ("json nested past what a tensor can be", "POST", "/v1/models/pg:predict",
     b'{"instances": ' + b"[" * 900 + b"1" + b"]" * 900 + b"}", 400, ""),
    ("strings nested deeply", "POST", "/v1/models/nmt:predict",
     b'{"instances": ' + b"[" * 900 + b'"a"' + b"]" * 900 + b"}", 400, ""),
    ("not JSON", "POST", "/v1/models/pg:predict", b"{instances", 400, "JSON parse error"),
    ("not UTF-8", "POST", "/v1/models/pg:predict", b'{"instances": "' + bytes([0xFF, 0xFE]) + b'"}', 400, ""),
    ("a JSON list body", "POST", "/v1/models/pg:predict", b"[1, 2]", 400, "must be a JSON object"),
    ("a signature name of the wrong type", "POST", "/v1/models/pg:predict", b'{"signature_name": 5, "instances": [[1,2,3,4]]}', 400, ""),
    ("PUT on a model URL", "PUT", "/v1/models/pg:predict", b"{}", 405, "Method PUT is not allowed on /v1/models/pg:predict; use POST"),
    ("DELETE on a status URL", "DELETE", "/v1/models/pg", None, 405, "use GET"),
    ("an unknown method", "BREW", "/v1/models/pg", None, 501, "Unsupported method"),
    ("PUT elsewhere", "PUT", "/v2/other", b"{}", 404, "Malformed request: PUT /v2/other"),
]


@pytest.mark.parametrize("name,method,path,body,status,message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_rest_malformed_requests_are_json_errors_never_500(server, name, method, path, body, status, message):
    code, ctype, allow, raw = _raw(server.rest_url, method, path, body)
    assert code == status, raw[:500]
    assert ctype == "application/json", raw[:300]
    err = json.loads(raw)["error"]
    assert message in err and "Traceback" not in err and "RecursionError" not in err
    if code == 405:
        assert allow in ("GET", "POST")
    assert _http(f"{server.rest_url}/v1/models/pg/versions/1")[0] == 200  # still serving


def test_rest_bad_content_length_is_400(server):
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(server.rest_url)
    with socket.create_connection((u.hostname, u.port), timeout=20) as s:
        s.sendall(b"POST /v1/models/pg:predict HTTP/1.0\r\nContent-Length: -5\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split()[1] == b"400" and "bad Content-Length" in json.loads(body)["error"]


def test_grpc_health(server):
    from tfcluster.serving import protos

    with grpc.insecure_channel(server.target) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check", request_serializer=protos.HealthCheckRequest.SerializeToString,
                               response_deserializer=protos.HealthCheckResponse.FromString)
        assert check(protos.HealthCheckRequest(service=""), timeout=5).status == protos.HealthCheckResponse.SERVING
        assert check(protos.HealthCheckRequest(service="nmt"), timeout=5).status == protos.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            check(protos.HealthCheckRequest(service="nope"), timeout=5)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_versions_run_on_the_threads_their_exports_ask_for(server, repo):
    """The tiny NMT export asks for one intra-op thread (contract.NMT), NMT and DCGAN for their ops on the calling
    thread: at start-up the server gave each session a pool of its own (for NMT's sake only), loaded the NMT
    version on one thread, NMT and DCGAN inline, and the others on the server's threads."""
    from tfcluster.serving.server import model_server_config, models_asking_for_threads, parser

    assert models_asking_for_threads(model_server_config(parser().parse_args(["--model_config_file", repo["config"]]))) == ["nmt"]
    with open(server.log_path) as f:
        log = f.read()
    assert "owns its intra-op pool (TF_OVERRIDE_GLOBAL_THREADPOOL=1): nmt ask" in log
    loaded = [ln for ln in log.splitlines() if "Successfully loaded servable version" in ln]
    assert [ln for ln in loaded if "intra-op thread" in ln] == [ln for ln in loaded if "{name: nmt " in ln] != []
    inline = [ln for ln in loaded if "{name: dcgan " in ln or "{name: nmt " in ln]
    assert [ln for ln in loaded if "on the calling thread" in ln] == inline and len(inline) >= 2


def test_batching_merges_concurrent_requests(stub):
    n = 6
    barrier, results, errors = threading.Barrier(n), [None] * n, []

    def one(i):
        barrier.wait()
        try:
            results[i] = stub.predict("probe", {"x": np.array([[float(i)]], np.float32)})[0]
        except grpc.RpcError as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], [[2.0 * i]])  # each caller gets its own row back
    assert max(int(out["rows"][0]) for out in results) > 1  # and the model saw merged batches


def _client_loop(stub, stop, seen, failures):
    while not stop.is_set():
        try:
            out, v = stub.predict("rolling", {"observation": OBS})
            seen.append((time.monotonic(), v, out))
        except grpc.RpcError as e:
            failures.append((e.code(), e.details()))


def test_new_version_is_served_within_two_polls_without_failed_requests(stub, repo):
    stop, seen, failures = threading.Event(), [], []
    loop = threading.Thread(target=_client_loop, args=(stub, stop, seen, failures))
    loop.start()
    try:
        path = tiny.export(tiny.pg_policy(11), repo["base"], contract.PG, name="rolling")
        exported = time.monotonic()
        while not any(v == 2 for _, v, _ in seen) and time.monotonic() - exported < 6 * POLL_S:
            time.sleep(0.05)
    finally:
        stop.set()
        loop.join()
    assert failures == []
    first_v2 = min(t for t, v, _ in seen if v == 2)
    assert first_v2 - exported <= 2 * POLL_S
    assert_same(next(out for _, v, out in seen if v == 2), in_process(path, observation=OBS))
    assert [v for _, v, _ in seen] == sorted(v for _, v, _ in seen)  # never back to version 1


def _wait_status(stub, model, version, pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = stub.status(model, version=version)
            if pred(st):
                return st
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{model} version {version}: status not reached; last {st if 'st' in dir() else None}")


def test_corrupt_and_half_written_versions_are_skipped(stub, repo, server):
    base = os.path.join(repo["base"], "rolling")
    _wait_status(stub, "rolling", 2, lambda s: s[0][1] == "AVAILABLE", 6 * POLL_S)
    stop, seen, failures = threading.Event(), [], []
    loop = threading.Thread(target=_client_loop, args=(stub, stop, seen, failures))
    loop.start()
    try:
        os.makedirs(os.path.join(base, "3"))
        with open(os.path.join(base, "3", "saved_model.pb"), "wb") as f:
            f.write(b"\x00 not a SavedModel \xff")
        st = _wait_status(stub, "rolling", 3, lambda s: s[0][1] == "END", 6 * POLL_S)
        assert st[0][2] == grpc.StatusCode.UNKNOWN.value[0] and st[0][3]
        # a copy in progress: variables first, saved_model.pb last
        staging = tiny.export(tiny.pg_policy(12), os.path.join(repo["base"], "staging"), contract.PG, name="rolling")
        half = os.path.join(base, "4")
        shutil.copytree(staging, half, ignore=shutil.ignore_patterns("saved_model.pb"))
        _wait_status(stub, "rolling", 4, lambda s: s[0][1] == "END", 6 * POLL_S)
        assert stub.status("rolling", version=2)[0][1] == "AVAILABLE"  # the previous version keeps serving
        shutil.copy(os.path.join(staging, "saved_model.pb"), half)
        _wait_status(stub, "rolling", 4, lambda s: s[0][1] == "AVAILABLE", 6 * POLL_S)
        deadline = time.monotonic() + 2 * POLL_S
        while not any(v == 4 for _, v, _ in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        loop.join()
    assert failures == []
    assert {v for _, v, _ in seen} <= {2, 4} and seen[-1][1] == 4
    assert_same(seen[-1][2], in_process(staging, observation=OBS))
    _wait_status(stub, "rolling", 2, lambda s: s[0][1] == "END", 4 * POLL_S)  # unloaded once 4 serves
    log = open(server.log_path).read()
    assert "Loading servable {name: rolling version: 3} failed (attempt 1)" in log
    assert "version(s) [2] keep serving" in log


def test_reload_config(stub, repo):
    from tensorflow_serving.apis import model_management_pb2
    from tensorflow_serving.config import model_server_config_pb2
    from google.protobuf import text_format

    original = text_format.Parse(open(repo["config"]).read(), model_server_config_pb2.ModelServerConfig())

    def reload(cfg):
        return stub.models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=cfg), timeout=30).status

    changed = model_server_config_pb2.ModelServerConfig()
    changed.CopyFrom(original)
    pg = next(c for c in changed.model_config_list.config if c.name == "pg")
    pg.version_labels["stable"] = 2
    del changed.model_config_list.config[2]  # dcgan
    assert reload(changed).error_code == 0
    assert stub.predict("pg", {"observation": OBS}, label="stable")[1] == 2
    with pytest.raises(grpc.RpcError) as e:
        stub.status("dcgan")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND

    pg.version_labels["stable"] = 9
    status = reload(changed)
    assert status.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert status.error_message.startswith("Request to assign label to version 9 of model pg, which is not currently available")
    assert stub.predict("pg", {"observation": OBS}, label="stable")[1] == 2  # labels unchanged

    assert reload(original).error_code == 0
    _wait_status(stub, "dcgan", None, lambda s: s[-1][1] == "AVAILABLE", 30)
    assert stub.predict("pg", {"observation": OBS}, label="stable")[1] == 1


def test_warmup_records_replayed_before_serving(server, repo):
    log = open(server.log_path).read()
    for path in (repo["pg1"], repo["nmt1"]):
        assert f"Finished reading warmup data for model at {path}/assets.extra/tf_serving_warmup_requests. Number of warmup records read: 1." in log


def test_example_client_script(server, repo):
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "serving", "example_client.py"), "--server", server.target, "--model", "nmt", "a man rides a bike ."],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {
        "model": "nmt", "version": 1, "outputs": {"translation": [". BIKE A RIDES MAN A"], "score": [-3.0]}
    }
