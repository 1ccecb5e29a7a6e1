"""`tfcluster serve` against TensorFlow Serving's own model-server tests, on TF Serving's own test models.

The models and the expected REST metadata come from TF Serving's repository (copied into
`../shared/data/tfserving_testdata`, original layout with zero-padded version folders). The
checks re-express `tensorflow_serving/model_servers/tensorflow_model_server_test.py` and the
REST API document (`g3doc/api_rest.md`) as clients of the local model server: the same
requests, the same expected values. Skipped with a message when `../shared` is absent.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf

from tfcluster.serving import LocalServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTDATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "tfserving_testdata")
RPC_TIMEOUT = 10.0

pytestmark = pytest.mark.skipif(
    not os.path.isdir(TESTDATA), reason=f"TF Serving's test models are not at {TESTDATA} (../shared absent)"
)

MODELS = {"tf1": "saved_model_half_plus_two_cpu", "tf2": "saved_model_half_plus_two_tf2_cpu"}


@pytest.fixture(scope="module", params=sorted(MODELS))
def server(request, tmp_path_factory):
    """One server per model: `default` (half_plus_two), `half_plus_three` and the two-version model, from one config."""
    tmp = tmp_path_factory.mktemp(f"tfs-{request.param}")
    cfg = tmp / "models.config"
    cfg.write_text(f"""model_config_list {{
  config {{ name: "default" base_path: "{TESTDATA}/{MODELS[request.param]}" model_platform: "tensorflow" }}
  config {{ name: "half_plus_three" base_path: "{TESTDATA}/saved_model_half_plus_three" model_platform: "tensorflow" }}
  config {{ name: "two_versions" base_path: "{TESTDATA}/saved_model_half_plus_two_2_versions" model_platform: "tensorflow"
           model_version_policy {{ all {{}} }} }}
}}
""")
    srv = LocalServer(model_config_file=str(cfg), file_system_poll_wait_seconds=0,
                      log_path=str(tmp / "server.log")).start()
    try:
        srv.wait_until_available("default", "half_plus_three", "two_versions", timeout_s=180)
        yield request.param, srv
    finally:
        assert srv.stop() == 0, srv.log_tail()


@pytest.fixture(scope="module")
def stubs(server):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(server[1].target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)
    channel.close()


def _rest(srv, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(srv.rest_url + path, data=data), timeout=RPC_TIMEOUT) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _verify_spec(spec, name, signature, version):
    assert (spec.name, spec.signature_name, spec.version.value) == (name, signature, version)


# ---------------------------------------------------------------------------- gRPC


def test_get_model_status(stubs):
    from tensorflow_serving.apis import get_model_status_pb2

    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "default"
    result = stubs[1].GetModelStatus(req, RPC_TIMEOUT)
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123  # the folder is 00000123
    assert result.model_version_status[0].status.error_code == 0


@pytest.mark.parametrize("model,expected", [("default", 3.0), ("half_plus_three", 4.0)])
@pytest.mark.parametrize("specify_output", [True, False])
def test_predict(stubs, model, expected, specify_output):
    """VerifyPredictRequest: x of shape [1] (the signature says [-1, 1]) in float_val, y read from float_val."""
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.inputs["x"].dtype = types_pb2.DT_FLOAT
    req.inputs["x"].float_val.append(2.0)
    req.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        req.output_filter.append("y")
    result = stubs[0].Predict(req, RPC_TIMEOUT)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert len(result.outputs["y"].float_val) == 1 and result.outputs["y"].float_val[0] == expected
    assert not result.outputs["y"].tensor_content
    np.testing.assert_array_equal(tf.make_ndarray(result.outputs["y"]), [expected])  # clients' way keeps working
    _verify_spec(result.model_spec, model, "serving_default", 123)


def test_predict_in_a_batch_of_the_declared_shape(stubs):
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "default"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0], [3.0], [4.0]], np.float32)))
    out = stubs[0].Predict(req, RPC_TIMEOUT).outputs["y"]
    assert [d.size for d in out.tensor_shape.dim] == [3, 1] and list(out.float_val) == [3.0, 3.5, 4.0]


def test_classify(stubs):
    from tensorflow_serving.apis import classification_pb2

    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "default"
    req.model_spec.signature_name = "classify_x_to_y"
    req.input.example_list.examples.add().features.feature["x"].float_list.value.extend([2.0])
    result = stubs[0].Classify(req, RPC_TIMEOUT)
    assert len(result.result.classifications) == 1 and len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    _verify_spec(result.model_spec, "default", "classify_x_to_y", 123)


@pytest.mark.parametrize("signature,feature,expected", [
    ("regress_x_to_y", "x", 3.0),
    ("regress_x_to_y2", "x", 4.0),  # y2 = a*x + c, c = 3
])
def test_regress(stubs, signature, feature, expected):
    from tensorflow_serving.apis import regression_pb2

    req = regression_pb2.RegressionRequest()
    req.model_spec.name = "default"
    req.model_spec.signature_name = signature
    req.input.example_list.examples.add().features.feature[feature].float_list.value.extend([2.0])
    result = stubs[0].Regress(req, RPC_TIMEOUT)
    assert len(result.result.regressions) == 1 and result.result.regressions[0].value == expected
    _verify_spec(result.model_spec, "default", signature, 123)


def test_regress_with_context(stubs):
    """ExampleListWithContext: the context's features are merged into every example."""
    from tensorflow_serving.apis import regression_pb2

    req = regression_pb2.RegressionRequest()
    req.model_spec.name = "default"
    req.model_spec.signature_name = "regress_x_to_y"
    lwc = req.input.example_list_with_context
    lwc.context.features.feature["unused"].int64_list.value.append(1)
    for x in (2.0, 4.0):
        lwc.examples.add().features.feature["x"].float_list.value.append(x)
    assert [r.value for r in stubs[0].Regress(req, RPC_TIMEOUT).result.regressions] == [3.0, 4.0]


def test_multi_inference(stubs):
    from tensorflow_serving.apis import inference_pb2

    req = inference_pb2.MultiInferenceRequest()
    req.tasks.add().model_spec.name = "default"
    req.tasks[0].model_spec.signature_name = "regress_x_to_y"
    req.tasks[0].method_name = "tensorflow/serving/regress"
    req.tasks.add().model_spec.name = "default"
    req.tasks[1].model_spec.signature_name = "classify_x_to_y"
    req.tasks[1].method_name = "tensorflow/serving/classify"
    req.input.example_list.examples.add().features.feature["x"].float_list.value.extend([2.0])
    result = stubs[0].MultiInference(req, RPC_TIMEOUT)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i in range(2):
        _verify_spec(result.results[i].model_spec, "default", req.tasks[i].model_spec.signature_name, 123)


def test_multi_inference_refuses_mixed_models(stubs):
    from tensorflow_serving.apis import inference_pb2

    req = inference_pb2.MultiInferenceRequest()
    for name, sig in (("default", "regress_x_to_y"), ("half_plus_three", "regress_x_to_y")):
        t = req.tasks.add()
        t.model_spec.name, t.model_spec.signature_name, t.method_name = name, sig, "tensorflow/serving/regress"
    req.input.example_list.examples.add().features.feature["x"].float_list.value.extend([2.0])
    with pytest.raises(grpc.RpcError) as e:
        stubs[0].MultiInference(req, RPC_TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "same model name" in e.value.details()


def test_two_versions_latest_and_specific(stubs):
    from tensorflow_serving.apis import predict_pb2

    def predict(version=None):
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "two_versions"
        if version is not None:
            req.model_spec.version.value = version
        req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
        return stubs[0].Predict(req, RPC_TIMEOUT)

    assert predict().model_spec.version.value == 124
    r = predict(123)
    assert r.model_spec.version.value == 123 and list(r.outputs["y"].float_val) == [3.0]


def test_metadata_hides_internal_signatures(stubs, server):
    from tensorflow_serving.apis import get_model_metadata_pb2

    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = "default"
    resp = stubs[0].GetModelMetadata(req, RPC_TIMEOUT)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sigs)
    names = set(sigs.signature_def)
    assert "serving_default" in names and "classify_x_to_y" in names and "regress_x_to_y" in names
    assert not [n for n in names if n.startswith("__")]


def test_unknown_input_and_wrong_dtype_keep_clear_messages(stubs):
    from tensorflow_serving.apis import predict_pb2

    for key, value, words in (("z", np.array([[2.0]], np.float32), "input tensor alias not found in signature: z"),
                              ("x", np.array([[2.0]], np.float64), "has the wrong dtype: got float64")):
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "default"
        req.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        with pytest.raises(grpc.RpcError) as e:
            stubs[0].Predict(req, RPC_TIMEOUT)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details()


# ---------------------------------------------------------------------------- REST


def test_predict_rest_row_and_columnar(server):
    srv = server[1]
    assert _rest(srv, "/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]}) == (200, {"predictions": [3.0, 3.5, 4.0]})
    assert _rest(srv, "/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]}) == (200, {"outputs": [3.0, 3.5, 4.0]})


def test_classify_and_regress_rest(server):
    srv = server[1]
    assert _rest(srv, "/v1/models/default:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}) == (
        200, {"results": [[["", 3.0]]]})
    assert _rest(srv, "/v1/models/default:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}) == (
        200, {"results": [3.0]})
    # The REST document's context form: shared features once, per-example features in "examples".
    assert _rest(srv, "/v1/models/default:regress", {"signature_name": "regress_x_to_y", "context": {"unused": 7},
                                                     "examples": [{"x": 2.0}, {"x": 4.0}]}) == (200, {"results": [3.0, 4.0]})
    code, body = _rest(srv, "/v1/models/default:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": [True]}]})
    assert code == 400 and "feature 'x'" in body["error"]


def test_status_rest(server):
    assert _rest(server[1], "/v1/models/default") == (200, {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})


def test_metadata_rest_equals_tf_servings(server):
    kind, srv = server
    code, got = _rest(srv, "/v1/models/default/metadata")
    assert code == 200
    with open(os.path.join(TESTDATA, "half_plus_two_model_metadata.json")) as f:
        want = json.load(f)
    if kind == "tf1":
        assert got == want  # dict equality: the order of map entries aside
    else:
        # The TF2 model's SignatureDefs name other tensors and say `predict`; the layout is the same.
        assert got["model_spec"] == want["model_spec"]
        sigs = got["metadata"]["signature_def"]["signature_def"]
        assert set(want["metadata"]["signature_def"]["signature_def"]) <= set(sigs)
        assert not [n for n in sigs if n.startswith("__")]


def test_two_versions_metadata_rest(server):
    kind, srv = server
    code, got = _rest(srv, "/v1/models/two_versions/versions/123/metadata")
    assert code == 200 and got["model_spec"] == {"name": "two_versions", "signature_name": "", "version": "123"}
    sigs = got["metadata"]["signature_def"]["signature_def"]
    assert sigs["serving_default"]["inputs"]["x"]["dtype"] == "DT_FLOAT" and not [n for n in sigs if n.startswith("__")]


def test_method_name_check_when_asked():
    """--enable_signature_method_name_check: TF2 signatures all say `predict`, so Classify is refused by name;
    without it (TF Serving's default) the same request is answered."""
    from tensorflow_serving.apis import classification_pb2
    from tensorflow_serving.config import model_server_config_pb2

    from tfcluster.serving.metrics import Metrics
    from tfcluster.serving.models import ModelManager, Options
    from tfcluster.serving.service import Core
    from tfcluster.serving.tensors import Failure

    cfg = model_server_config_pb2.ModelServerConfig()
    cfg.model_config_list.config.add(name="default", base_path=os.path.join(TESTDATA, MODELS["tf2"]))
    mgr = ModelManager(Options())
    mgr.apply_config(cfg)
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name, req.model_spec.signature_name = "default", "classify_x_to_y"
    req.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    assert Core(mgr, Metrics()).classify_proto(req).result.classifications[0].classes[0].score == 3.0
    with pytest.raises(Failure) as e:
        Core(mgr, Metrics(), check_method_names=True).classify_proto(req)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected Classify signature method_name to be tensorflow/serving/classify. Was: tensorflow/serving/predict" in e.value.message
