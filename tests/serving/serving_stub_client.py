"""A client made only of the official `tensorflow_serving.apis` stubs (plus grpc, numpy, tf).

It must not import tfcluster: what it does here works the same against
`tensorflow_model_server`. test_serving_server.py checks that by reading this file.
"""

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


class StubClient:
    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(self, model, inputs, version=None, label=None, signature="serving_default", timeout=10.0):
        """-> (outputs as numpy, served version)."""
        req = predict_pb2.PredictRequest()
        req.model_spec.name = model
        req.model_spec.signature_name = signature
        if version is not None:
            req.model_spec.version.value = version
        if label is not None:
            req.model_spec.version_label = label
        for k, v in inputs.items():
            req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
        resp = self.predictions.Predict(req, timeout=timeout)
        return {k: tf.make_ndarray(v) for k, v in resp.outputs.items()}, resp.model_spec.version.value

    def status(self, model, version=None):
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = model
        if version is not None:
            req.model_spec.version.value = version
        resp = self.models.GetModelStatus(req, timeout=10.0)
        return [(s.version, get_model_status_pb2.ModelVersionStatus.State.Name(s.state), s.status.error_code, s.status.error_message)
                for s in resp.model_version_status]

    def metadata(self, model):
        req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        req.model_spec.name = model
        resp = self.predictions.GetModelMetadata(req, timeout=10.0)
        any_ = resp.metadata["signature_def"]
        sigs = get_model_metadata_pb2.SignatureDefMap()
        assert any_.Unpack(sigs)
        return any_.type_url, resp.model_spec.version.value, sigs

    def close(self):
        self.channel.close()


__all__ = ["StubClient", "np"]
