#!/usr/bin/env python3
"""A minimal TF Serving gRPC client built only on the official `tensorflow_serving.apis` stubs.

Works against `tensorflow_model_server` and `tfcluster serve` alike:

    python serving/example_client.py --server localhost:8500 --model nmt "a man rides a bike ."
    python serving/example_client.py --server localhost:8500 --model pg --observation '[0.1, 0, -0.1, 0.2]'

It checks the model is AVAILABLE (ModelService.GetModelStatus), reads its signature
(PredictionService.GetModelMetadata), sends one Predict and prints the outputs as JSON.
"""

import argparse
import json
import sys

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("text", nargs="*", help="sentences for a string-input model")
    p.add_argument("--server", default="localhost:8500")
    p.add_argument("--model", required=True)
    p.add_argument("--signature", default="serving_default")
    p.add_argument("--observation", help="JSON observation or batch of observations")
    p.add_argument("--timeout_s", type=float, default=10.0)
    args = p.parse_args()

    # Responses can exceed gRPC's default 4 MiB receive limit (image batches): raise it.
    channel = grpc.insecure_channel(args.server, options=[("grpc.max_receive_message_length", 256 << 20)])
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    try:
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = args.model
        states = models.GetModelStatus(req, timeout=args.timeout_s).model_version_status
        available = [s.version for s in states if s.state == AVAILABLE]
        if not available:
            print(f"error: {args.model} has no AVAILABLE version", file=sys.stderr)
            return 1

        req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        req.model_spec.name = args.model
        meta = predictions.GetModelMetadata(req, timeout=args.timeout_s)
        sigs = get_model_metadata_pb2.SignatureDefMap()
        meta.metadata["signature_def"].Unpack(sigs)
        signature = sigs.signature_def[args.signature]
        (key, info), = signature.inputs.items()  # this example handles one-input signatures

        if args.observation is not None:
            value = np.asarray(json.loads(args.observation), dtype=tf.as_dtype(info.dtype).as_numpy_dtype)
            if value.ndim == len(info.tensor_shape.dim) - 1:
                value = value[None]
        else:
            value = np.asarray([s.encode() for s in args.text], dtype=object)
        req = predict_pb2.PredictRequest()
        req.model_spec.name = args.model
        req.model_spec.signature_name = args.signature
        req.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        resp = predictions.Predict(req, timeout=args.timeout_s)
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1

    out = {}
    for name, proto in resp.outputs.items():
        a = tf.make_ndarray(proto)
        out[name] = [x.decode() for x in a.reshape(-1)] if a.dtype == object else a.tolist()
    print(json.dumps({"model": resp.model_spec.name, "version": resp.model_spec.version.value, "outputs": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
