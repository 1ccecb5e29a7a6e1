"""Server start-up errors and SIGTERM draining, with the server as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from tfcluster.serving import LocalServer, tiny

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _serve(*flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "lib")}
    return subprocess.run([sys.executable, "-m", "tfcluster.serving.server", *flags], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(
    "flags,error",
    [
        ((), "error: give --model_base_path (with --model_name) or --model_config_file"),
        (("--model_config_file=/nonexistent/models.config",), "error: --model_config_file not found: /nonexistent/models.config"),
        (("--model_base_path=/m", "--enable_batching=maybe"), "argument --enable_batching: expected true or false, got 'maybe'"),
    ],
)
def test_bad_flags_end_with_one_line(flags, error):
    r = _serve(*flags)
    assert r.returncode == 2
    assert error in r.stderr.strip().splitlines()[-1]


def test_sigterm_drains_in_flight_requests(tmp_path):
    tiny.export(tiny.batch_probe(), str(tmp_path), tiny.PROBE)
    batching = tmp_path / "batching.config"
    # a lone request waits 1.5 s in the batch queue: it is in flight when SIGTERM arrives
    batching.write_text("max_batch_size { value: 4 }\nbatch_timeout_micros { value: 1500000 }\nnum_batch_threads { value: 1 }\n")
    srv = LocalServer(model_name="probe", model_base_path=str(tmp_path / "probe"), enable_batching=True,
                      batching_parameters_file=str(batching), rest_api_port=0).start()
    try:
        srv.wait_until_available("probe", timeout_s=120)
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
        import tensorflow as tf

        channel = grpc.insecure_channel(srv.target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "probe"
        req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[3.0]], np.float32)))
        result = {}

        def call():
            try:
                result["y"] = tf.make_ndarray(stub.Predict(req, timeout=30).outputs["y"])
            except grpc.RpcError as e:
                result["error"] = (e.code(), e.details())

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.5)  # ordering only: let the request reach the server's batch queue
        srv.proc.terminate()
        t.join(30)
        assert "error" not in result, result  # the in-flight request finished, with its answer
        np.testing.assert_array_equal(result["y"], np.array([[6.0]], np.float32))
        assert srv.proc.wait(30) == 0
        log = open(srv.log_path).read()
        assert "Received SIGTERM: draining in-flight requests" in log and "Drained and stopped" in log
        channel.close()
    finally:
        srv.stop()
