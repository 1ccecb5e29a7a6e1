"""`tfcluster.serving.Client`: TF Serving's gRPC API from Python, numpy in and out.

    from tfcluster.serving import Client
    with Client("localhost:8500", timeout_s=10) as c:
        c.wait_until_available("nmt", timeout_s=60)          # -> the AVAILABLE version
        out = c.predict("nmt", {"source": ["a man rides a bike ."]})
        out["translation"]                                   # numpy array of bytes
        c.predict("pg", {"observation": [[0.0, 0.1, 0.0, -0.1]]}, label="stable")
        c.metadata("pg").signatures["serving_default"]        # a contract.ModelSpec
        c.status("pg")                                       # [VersionStatus(...)]

It speaks only the official `tensorflow_serving.apis` protos, so it works the same against
`tensorflow_model_server` and against `tfcluster serve`. Every call has a deadline
(`timeout_s`); UNAVAILABLE (server starting, restarting, or its batch queue full) is
retried with exponential backoff; the receive limit is raised from gRPC's 4 MiB to
`max_receive_mb` (image grids and long batches exceed 4 MiB). Failures raise
`ServingError` (a `UserError`: one line naming the call, model, input and spec).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Mapping

import grpc
import numpy as np

from tfcluster import contract
from tfcluster.errors import UserError

STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}


class ServingError(UserError):
    """A failed call: `code` is the grpc.StatusCode, `details` the server's message."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, details: str = ""):
        super().__init__(message)
        self.code, self.details = code, details


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str  # START LOADING AVAILABLE UNLOADING END
    error_code: str = "OK"
    error_message: str = ""


@dataclass(frozen=True)
class Metadata:
    model: str
    version: int
    signatures: dict[str, contract.ModelSpec]  # signature name -> inputs/outputs (contract types)
    methods: dict[str, str]  # signature name -> method_name (tensorflow/serving/predict, ...)


def _spec_from_signature_def(model: str, name: str, sdef) -> contract.ModelSpec:
    import tensorflow as tf

    def tensors(m):
        out = []
        for k, info in sorted(m.items()):
            shape = None if info.tensor_shape.unknown_rank else tuple(None if d.size < 0 else d.size for d in info.tensor_shape.dim)
            out.append(contract.Tensor(k, tf.as_dtype(info.dtype).name if info.dtype else "invalid", shape))
        return tuple(out)

    return contract.ModelSpec(name=model, inputs=tensors(sdef.inputs), outputs=tensors(sdef.outputs), signature=name)


class Client:
    """A channel to a model server (`host:port`) and the four calls users need."""

    def __init__(
        self,
        target: str = "localhost:8500",
        *,
        timeout_s: float = 10.0,
        tls: bool | str = False,
        max_receive_mb: int = 256,
        retries: int = 4,
        backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
    ):
        """`tls`: False (plaintext), True (system CAs) or a PEM file of CA certificates."""
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if max_receive_mb <= 0:
            raise UserError(f"max_receive_mb must be positive, got {max_receive_mb}")
        self.target, self.timeout_s = target, timeout_s
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        options = [
            ("grpc.max_receive_message_length", int(max_receive_mb) << 20),
            ("grpc.max_send_message_length", int(max_receive_mb) << 20),
        ]
        if tls:
            roots = None
            if isinstance(tls, str):
                try:
                    with open(tls, "rb") as f:
                        roots = f.read()
                except OSError as e:
                    raise UserError(f"CA certificate file {tls}: {e.strerror}") from None
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots), options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self._dtypes: dict[tuple, dict[str, contract.Tensor]] = {}

    # ---- plumbing ------------------------------------------------------------------------
    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, what: str, timeout_s: float | None = None, retries: int | None = None):
        timeout = self.timeout_s if timeout_s is None else timeout_s
        retries = self.retries if retries is None else retries
        delay = self.backoff_s
        for attempt in range(retries + 1):
            try:
                return method(request, timeout=timeout)
            except grpc.RpcError as e:
                code, details = e.code(), e.details() or ""
                if code == grpc.StatusCode.UNAVAILABLE and attempt < retries:
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, self.max_backoff_s)
                    continue
                raise self._error(what, code, details, attempt + 1) from None

    def _error(self, what: str, code, details: str, tries: int) -> ServingError:
        details = " ".join(details.split())
        if code == grpc.StatusCode.UNAVAILABLE and ("connect" in details.lower() or "DNS" in details or "refused" in details.lower()):
            msg = (
                f"cannot reach a model server at {self.target} ({tries} tries): {details}; "
                "start one (`tfcluster serve --model_config_file=...`) or check the address"
            )
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            msg = f"{what} at {self.target}: no answer within {self.timeout_s:g} s (DEADLINE_EXCEEDED); raise timeout_s or check the server"
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
            msg = f"{what} at {self.target}: {details}; raise max_receive_mb (--max_receive_mb)"
        else:
            msg = f"{what} at {self.target}: {code.name}: {details}"
        return ServingError(msg, code, details)

    @staticmethod
    def _model_spec(model: str, signature: str | None, version: int | None, label: str | None):
        from tensorflow_serving.apis import model_pb2

        if version is not None and label is not None:
            raise UserError("give a version or a label, not both")
        spec = model_pb2.ModelSpec(name=model, signature_name=signature or "")
        if version is not None:
            spec.version.value = int(version)
        elif label is not None:
            spec.version_label = label
        return spec

    @staticmethod
    def _what(call: str, model: str, version: int | None, label: str | None) -> str:
        at = f" version {version}" if version is not None else f" label {label}" if label is not None else ""
        return f"{call} {model}{at}"

    def _input_spec(self, model: str, signature: str | None, version, label) -> dict[str, contract.Tensor]:
        """Input tensors of a signature: the contract for the four workloads, else GetModelMetadata."""
        sig = signature or contract.DEFAULT_SIGNATURE
        if model in contract.MODELS and sig == contract.MODELS[model].signature:
            return {t.key: t for t in contract.MODELS[model].inputs}
        key = (model, sig, version, label)
        if key not in self._dtypes:
            md = self.metadata(model, version=version, label=label)
            if sig not in md.signatures:
                raise ServingError(f"model {model} has no signature {sig!r} (signatures: {', '.join(md.signatures)})")
            self._dtypes[key] = {t.key: t for t in md.signatures[sig].inputs}
        return self._dtypes[key]

    # ---- the API -------------------------------------------------------------------------
    def predict(
        self,
        model: str,
        inputs: Mapping[str, Any] | Any,
        *,
        signature: str | None = None,
        version: int | None = None,
        label: str | None = None,
        output_filter: list[str] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Call Predict. `inputs`: {key: numpy array / list / str} or, for a one-input signature,
        the value alone (a str becomes a batch of one). Numpy arrays keep their dtype; Python
        values take the signature's dtype. Returns {output key: numpy array} (strings as bytes).
        """
        from tensorflow_serving.apis import predict_pb2

        from tfcluster.serving.tensors import to_proto

        if not isinstance(inputs, Mapping):
            spec = self._input_spec(model, signature, version, label)
            if len(spec) != 1:
                raise UserError(f"model {model} takes inputs {sorted(spec)}: pass a dict")
            (key,) = spec
            inputs = {key: [inputs] if isinstance(inputs, (str, bytes)) else inputs}
        request = predict_pb2.PredictRequest(model_spec=self._model_spec(model, signature, version, label))
        request.output_filter.extend(output_filter or ())
        spec = None
        for key, value in inputs.items():
            if isinstance(value, np.ndarray):
                request.inputs[key].CopyFrom(to_proto(value))
                continue
            if spec is None:
                spec = self._input_spec(model, signature, version, label)
            t = spec.get(key)
            try:
                request.inputs[key].CopyFrom(to_proto(value, t.dtype if t else None))
            except (TypeError, ValueError) as e:
                from tfcluster.serving.tensors import describe

                raise UserError(f"input {key!r} of {model}: cannot convert {value!r:.60} to {describe(t) if t else 'a tensor'}: {e}") from None
        response = self._call(self._predict.Predict, request, self._what("Predict", model, version, label), timeout_s)
        import tensorflow as tf

        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None) -> Metadata:
        """GetModelMetadata: the signatures of a version (the latest by default)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=self._model_spec(model, None, version, label), metadata_field=["signature_def"]
        )
        response = self._call(self._predict.GetModelMetadata, request, self._what("GetModelMetadata", model, version, label))
        sdm = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sdm)
        sigs = {k: _spec_from_signature_def(model, k, v) for k, v in sdm.signature_def.items() if not k.startswith("__")}
        methods = {k: v.method_name for k, v in sdm.signature_def.items() if not k.startswith("__")}
        return Metadata(model, response.model_spec.version.value, sigs, methods)

    def status(self, model: str, *, version: int | None = None, label: str | None = None, timeout_s: float | None = None,
               retries: int | None = None) -> list[VersionStatus]:
        """GetModelStatus: the state of each version of `model`."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self._model_spec(model, None, version, label))
        response = self._call(self._models.GetModelStatus, request, self._what("GetModelStatus", model, version, label), timeout_s, retries)
        return [
            VersionStatus(
                s.version, STATE_NAMES.get(s.state, str(s.state)),
                grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == s.status.error_code)).name if s.status.error_code else "OK",
                s.status.error_message,
            )
            for s in response.model_version_status
        ]

    def wait_until_available(self, model: str, timeout_s: float = 60.0, *, version: int | None = None, poll_s: float = 0.25) -> int:
        """Block until `model` (or that version) is AVAILABLE; return the version.

        Connection refused / server still starting / model not found yet all mean "wait".
        Raises ServingError after `timeout_s`, naming the last thing seen.
        """
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while True:
            try:
                states = self.status(model, version=version, timeout_s=min(self.timeout_s, max(0.5, deadline - time.monotonic())), retries=0)
                ok = [s.version for s in states if s.state == "AVAILABLE"]
                if ok:
                    return max(ok)
                last = ", ".join(f"version {s.version} {s.state}" + (f" ({s.error_message})" if s.error_message else "") for s in states)
            except ServingError as e:
                if e.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                last = str(e)
            if time.monotonic() >= deadline:
                what = f"{model} version {version}" if version is not None else model
                raise ServingError(f"{what} not AVAILABLE at {self.target} after {timeout_s:g} s; last seen: {last}", grpc.StatusCode.DEADLINE_EXCEEDED)
            time.sleep(poll_s)
