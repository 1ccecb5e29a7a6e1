#!/usr/bin/env python3
"""Where a served request's time goes: one export, the same one-row request (the sentence for a string
input, a fixed draw for a float one: NMT, DCGAN, a policy), each layer of the local server measured on
its own (p50 of single requests), so the difference between two rows is that layer's cost.

    python bench/serving_profile.py --model_dir runs/models/nmt/1 [--seconds 5] [--out bench/results/serving_profile.json]
    python bench/serving_profile.py --model_dir runs/models/dcgan/2 --model_name dcgan

Rows, in order (each adds one layer to the one before):
  eager          tf.saved_model.load's signature function (the in-process reference of bench/serving.py)
  session        the version as `tfcluster serve` loads it: a session over the MetaGraphDef (TF Serving's way),
                 TF_SessionRun with the server's default session config
  session_*      the same with other session settings (thread pools), to see what the session's own costs are
                 (not the intra-op pool's size: TF sizes one pool for the process, here from the eager row;
                 compare servers started with --tensorflow_intra_op_parallelism for that); session_as_exported:
                 with the inter-op setting of the export's session_config.pbtxt (-1: ops on the calling thread)
  core           the server's request path without the network: PredictRequest proto -> numpy -> checks ->
                 session -> typed TensorProto response, metrics (no batching)
  core_batching  the same through the batching queue (serving/batching.config)
  grpc           a real round trip to `tfcluster serve` (a subprocess, --enable_batching), official stubs
Also: output lengths (tokens) of the translation, so a long decode and a fixed cost per request can be told
apart. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from report import emit  # noqa: E402  (bench/report.py, beside this file)
import serving  # noqa: E402  (bench/serving.py)

import numpy as np  # noqa: E402


def p50_ms(fn, seconds: float) -> float:
    """Median milliseconds of `fn()` over `seconds`, after 5 warm-up calls (bench/serving.py's timer)."""
    for _ in range(5):
        fn()
    return serving.p50_ms(fn, seconds)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model_dir", required=True, help="an exported version folder (<base>/<model>/<version>)")
    ap.add_argument("--model_name", default="nmt", help="the name it is served under (default: nmt)")
    ap.add_argument("--sentence", default="A man in an orange hat starring at something.")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2

    from tfcluster.serving import LocalServer, protos
    from tfcluster.serving.batching import Batcher, BatchOptions
    from tfcluster.serving.metrics import Metrics
    from tfcluster.serving.models import ModelManager, Options, Servable, read_meta_graph, register_ops
    from tfcluster.serving.service import Core

    path = os.path.abspath(a.model_dir)
    register_ops(read_meta_graph(path, {"serve"}), path)
    fn = tf.saved_model.load(path).signatures["serving_default"]
    inputs = serving.one_row(fn, a.sentence)
    rows: dict[str, float] = {}
    x = {k: tf.constant(v) for k, v in inputs.items()}
    out = fn(**x)
    translation = out["translation"].numpy()[0].decode() if "translation" in out else None
    rows["eager"] = p50_ms(lambda: fn(**x), a.seconds)

    # (session config, take the inter-op setting of the export's session_config.pbtxt: -1, its ops on the
    # calling thread; the intra-op threads it may name need a pool per session, which only a server started
    # that way has)
    sessions = {"session": (None, False),
                "session_inter_op_1": (tf.compat.v1.ConfigProto(inter_op_parallelism_threads=1), False),
                "session_per_session_threads": (tf.compat.v1.ConfigProto(use_per_session_threads=True), False),
                "session_as_exported": (None, True)}
    for name, (config, as_exported) in sessions.items():
        servable = Servable(a.model_name, 1, path, {"serve"}, config, model_inter_op=as_exported)
        run = servable.signatures["serving_default"].run
        rows[name] = p50_ms(lambda: run(inputs), a.seconds)
        del servable

    with tempfile.TemporaryDirectory(prefix="serving-profile-") as tmp:
        base = os.path.join(tmp, a.model_name)
        os.makedirs(base)
        os.symlink(path, os.path.join(base, "1"))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = a.model_name
        for k, v in inputs.items():
            request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
        params = protos.parse_text(os.path.join(ROOT, "serving", "batching.config"), protos.BatchingParameters, "batching")
        # as `tfcluster serve` batches by default: an idle server runs a lone request at once
        batching = dataclasses.replace(BatchOptions.from_proto(params), run_when_idle=True)
        for name, batcher in (("core", None), ("core_batching", Batcher(batching))):
            manager = ModelManager(Options(tags={"serve"}, session_config=tf.compat.v1.ConfigProto()))
            config = model_server_config_pb2.ModelServerConfig()
            config.model_config_list.config.add(name=a.model_name, base_path=base, model_platform="tensorflow")
            manager.apply_config(config)
            core = Core(manager, Metrics(), batcher)
            rows[name] = p50_ms(lambda: core.predict_proto(request), a.seconds)
            manager.stop()
        with LocalServer(model_name=a.model_name, model_base_path=base, enable_batching=True,
                         batching_parameters_file=os.path.join(ROOT, "serving", "batching.config"),
                         log_path=os.path.join(tmp, "server.log")) as srv:
            srv.wait_until_available(a.model_name, timeout_s=300)
            channel = grpc.insecure_channel(srv.target)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            rows["grpc"] = p50_ms(lambda: stub.Predict(request, timeout=30), a.seconds)
            channel.close()

    order = list(rows)
    steps = {f"{b} - {a_}": round(rows[b] - rows[a_], 3) for a_, b in zip(order, order[1:])}
    text = {"sentence": a.sentence, "translation": translation, "output_tokens": len(translation.split())} if translation else {}
    emit({"benchmark": "serving_profile", "model_dir": a.model_dir, **text, "p50_ms": {k: round(v, 3) for k, v in rows.items()},
          "differences_ms": steps, "grpc_overhead_over_eager_ms": round(rows["grpc"] - rows["eager"], 3),
          "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
