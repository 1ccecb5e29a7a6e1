"""The serving core and its gRPC services: PredictionService, ModelService, Health.

`Core` does the work for both front ends (gRPC here, REST in `rest.py`) and the warmup
replay: it resolves a ModelSpec to a loaded version, checks inputs against the signature,
runs the signature (through the batcher when batching is on) and builds responses with
the protos of `tensorflow_serving.apis`, exactly as `tensorflow_model_server` fills them.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Mapping

import grpc
import numpy as np

from tfcluster.serving import protos
from tfcluster.serving.batching import Batcher
from tfcluster.serving.metrics import Metrics
from tfcluster.serving.models import (
    AVAILABLE,
    CLASSIFY_METHOD,
    PREDICT_METHOD,
    REGRESS_METHOD,
    ModelManager,
    Servable,
    Signature,
)
from tfcluster.serving.tensors import Failure, from_proto, invalid, to_typed_proto

log = logging.getLogger("tfcluster.serving")

_TF_CODES = {c.value[0]: c for c in grpc.StatusCode}


_NODE = re.compile(r"\s*\[\[\{\{.*?\}\}\]\]")
_SHAPE_ASSERT = re.compile(r"^assertion failed: \[(?P<msg>.*)\] \[got shape\] \[(?P<shape>[\d ]*)\]$")


def graph_message(message: str) -> str:
    """A graph's error for people: one line, without the `[[{{node ...}}]]` trail; an input check of an
    exported model (`tfcluster.export.require_shape`) reads `<its message>; got shape [3, 3]`."""
    msg = " ".join(_NODE.sub("", str(message)).split())
    m = _SHAPE_ASSERT.match(msg)
    if m:
        msg = f"{m['msg']}; got shape [{', '.join(m['shape'].split())}]"
    return msg


def as_failure(e: Exception) -> Failure:
    """Any exception from serving a request -> Failure (TF runtime errors keep their code)."""
    if isinstance(e, Failure):
        return e
    import tensorflow as tf

    if isinstance(e, tf.errors.OpError):
        return Failure(_TF_CODES.get(e.error_code, grpc.StatusCode.INTERNAL), graph_message(e.message))
    if isinstance(e, (TypeError, ValueError)):
        return invalid(" ".join(str(e).split()))
    if isinstance(e, RecursionError):  # a request value nested deeper than any tensor
        return invalid("the request is nested too deeply to be a tensor")
    log.exception("unexpected error while serving a request")
    return Failure(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")


class Core:
    def __init__(self, manager: ModelManager, metrics: Metrics, batcher: Batcher | None = None,
                 check_method_names: bool = False):
        self.manager, self.metrics, self.batcher = manager, metrics, batcher
        self.check_method_names = check_method_names  # --enable_signature_method_name_check
        self.draining = threading.Event()

    # ---- running a signature -------------------------------------------------------------
    def run(self, servable: Servable, sig: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        servable.check(sig, inputs)
        where = f"model {servable.name} version {servable.version} signature {sig.name}"
        try:
            if self.batcher is None:
                return sig.run(inputs)
            return self.batcher.submit((id(servable), sig.name), where, sig.run, inputs, servable.intra_op_threads).result()
        except tf.errors.OpError as e:  # the graph refused the request: say which model answered
            f = as_failure(e)
            raise Failure(f.code, f"{where}: {f.message}") from None

    def predict(self, spec, inputs: Mapping[str, np.ndarray], output_filter=()) -> tuple[Servable, Signature, dict]:
        servable = self.manager.resolve(spec)
        sig = servable.signature(spec.signature_name)
        wanted = list(output_filter)
        unknown = [k for k in wanted if k not in sig.outputs]
        if unknown:
            raise invalid(
                f"model {servable.name} version {servable.version} signature {sig.name}: output tensor alias not found "
                f"in signature: {', '.join(unknown)}. Outputs expected to be in the set {{{', '.join(sig.outputs)}}}."
            )
        out = self.run(servable, sig, inputs)
        if wanted:
            out = {k: out[k] for k in wanted}
        return servable, sig, out

    def timed(self, model: str, api: str, entrypoint: str, fn, *args):
        t0 = time.perf_counter()
        status = "OK"
        try:
            return fn(*args)
        except Exception as e:
            f = as_failure(e)
            status = f.code.name
            raise f from None
        finally:
            self.metrics.request_count.inc(model or "", status)
            self.metrics.request_latency.observe((time.perf_counter() - t0) * 1e6, model or "", api, entrypoint)

    # ---- protos --------------------------------------------------------------------------
    def predict_proto(self, request, entrypoint: str = "GRPC"):
        from tensorflow_serving.apis import predict_pb2

        def go():
            inputs = {k: from_proto(v) for k, v in request.inputs.items()}
            servable, sig, out = self.predict(request.model_spec, inputs, request.output_filter)
            resp = predict_pb2.PredictResponse()
            fill_spec(resp.model_spec, servable, sig.name)
            for k, v in out.items():
                to_typed_proto(v, into=resp.outputs[k])
            return resp

        return self.timed(request.model_spec.name, "predict", entrypoint, go)

    def metadata_proto(self, request, entrypoint: str = "GRPC"):
        from tensorflow_serving.apis import get_model_metadata_pb2

        def go():
            fields = list(request.metadata_field)
            if not fields:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            bad = [f for f in fields if f != "signature_def"]
            if bad:
                raise invalid(f"Metadata field {bad[0]} is not supported (supported: signature_def)")
            servable = self.manager.resolve(request.model_spec)
            resp = get_model_metadata_pb2.GetModelMetadataResponse()
            fill_spec(resp.model_spec, servable, None)
            resp.metadata["signature_def"].Pack(servable.signature_def_map())
            return resp

        return self.timed(request.model_spec.name, "GetModelMetadata", entrypoint, go)

    def status_proto(self, request):
        from tensorflow_serving.apis import get_model_status_pb2

        resp = get_model_status_pb2.GetModelStatusResponse()
        for vs in self.manager.status(request.model_spec):
            s = resp.model_version_status.add(version=vs.version, state=vs.state)
            s.status.SetInParent()  # TF Serving always sets it (error_code OK)
            if vs.error is not None:
                s.status.error_code, s.status.error_message = vs.error[0].value[0], vs.error[1]
        return resp

    def reload_proto(self, request):
        from tensorflow_serving.apis import model_management_pb2

        resp = model_management_pb2.ReloadConfigResponse()
        try:
            self.manager.apply_config(request.config)
            log.info("Reloaded the model config: %s", ", ".join(self.manager.models) or "no models")
        except Exception as e:  # noqa: BLE001
            f = as_failure(e)
            resp.status.error_code, resp.status.error_message = f.code.value[0], f.message
            log.error("Reload of the model config failed: %s", f.message)
        return resp

    def _examples(self, request) -> np.ndarray:
        """The request's Input (ExampleList, or ExampleListWithContext merged as TF Serving does) as serialized Examples."""
        from tensorflow.core.example import example_pb2

        which = request.input.WhichOneof("kind")
        if which == "example_list":
            exs = list(request.input.example_list.examples)
        elif which == "example_list_with_context":
            ctx = request.input.example_list_with_context.context
            exs = []
            for e in request.input.example_list_with_context.examples:
                m = example_pb2.Example()
                m.CopyFrom(ctx)
                m.MergeFrom(e)
                exs.append(m)
        else:
            raise invalid("Input is empty: set input.example_list or input.example_list_with_context")
        if not exs:
            raise invalid("Input is empty: no examples")
        return np.array([e.SerializeToString() for e in exs], dtype=object)

    def _signature_for(self, servable: Servable, name: str, api: str, method: str) -> Signature:
        """The signature for a Classify/Regress call, checked as TF Serving checks it.

        The method name is checked only with --enable_signature_method_name_check (TF Serving's
        default is off, which is what lets TF2 SavedModels, whose signatures all say
        `predict`, be classified); the inputs and outputs always are.
        """
        sig = servable.signature(name)
        where = f"model {servable.name} version {servable.version} signature {sig.name}"
        if self.check_method_names and sig.method_name != method:
            raise invalid(f"{where}: expected {api} signature method_name to be {method}. Was: {sig.method_name}")
        if len(sig.inputs) != 1:
            raise invalid(f"{where}: expected one input Tensor (serialized tf.Example), got {len(sig.inputs)}")
        (t,) = sig.inputs.values()
        if t.dtype != "string":
            raise invalid(f"{where}: {api} input must be a string tensor of serialized tf.Example, got {t.dtype}")
        if method == CLASSIFY_METHOD and not {"classes", "scores"} & set(sig.outputs):
            raise invalid(f'{where}: expected classification signature outputs to contain at least one of "classes" or "scores"')
        if method == REGRESS_METHOD and "outputs" not in sig.outputs:
            raise invalid(f"{where}: no output Tensor with alias 'outputs' in the regression signature")
        return sig

    def _run_examples(self, servable: Servable, sig: Signature, examples: np.ndarray) -> dict[str, np.ndarray]:
        (key,) = sig.inputs
        return self.run(servable, sig, {key: examples})

    @staticmethod
    def _classification(out: dict[str, np.ndarray], n: int, result) -> None:
        classes, scores = out.get("classes"), out.get("scores")
        for name, a in (("classes", classes), ("scores", scores)):
            if a is not None and (a.ndim not in (1, 2) or a.shape[0] != n):
                raise invalid(f"Expected {name} Tensor shape: [batch_size num_classes] with batch_size {n}, got {list(a.shape)}")
        if classes is not None and scores is not None and classes.shape != scores.shape:
            raise invalid(f"Tensors classes and scores should have the same shape, got {list(classes.shape)} and {list(scores.shape)}")
        cols = [a.reshape(n, -1) if a is not None else None for a in (classes, scores)]
        k = next(a.shape[1] for a in cols if a is not None)
        for i in range(n):
            c = result.classifications.add()
            for j in range(k):
                cls = c.classes.add()
                if cols[0] is not None:
                    label = cols[0][i][j]
                    cls.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
                if cols[1] is not None:
                    cls.score = float(cols[1][i][j])

    @staticmethod
    def _regression(out: dict[str, np.ndarray], n: int, result) -> None:
        values = np.asarray(out["outputs"])
        if not (values.shape == (n,) or values.shape == (n, 1)):
            raise invalid(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] with batch_size {n}, "
                          f"got {list(values.shape)}")
        for v in values.reshape(-1):
            result.regressions.add(value=float(v))

    def classify_proto(self, request, entrypoint: str = "GRPC"):
        from tensorflow_serving.apis import classification_pb2

        def go():
            servable = self.manager.resolve(request.model_spec)
            sig = self._signature_for(servable, request.model_spec.signature_name, "Classify", CLASSIFY_METHOD)
            examples = self._examples(request)
            resp = classification_pb2.ClassificationResponse()
            fill_spec(resp.model_spec, servable, sig.name)
            self._classification(self._run_examples(servable, sig, examples), len(examples), resp.result)
            return resp

        return self.timed(request.model_spec.name, "classify", entrypoint, go)

    def regress_proto(self, request, entrypoint: str = "GRPC"):
        from tensorflow_serving.apis import regression_pb2

        def go():
            servable = self.manager.resolve(request.model_spec)
            sig = self._signature_for(servable, request.model_spec.signature_name, "Regress", REGRESS_METHOD)
            examples = self._examples(request)
            resp = regression_pb2.RegressionResponse()
            fill_spec(resp.model_spec, servable, sig.name)
            self._regression(self._run_examples(servable, sig, examples), len(examples), resp.result)
            return resp

        return self.timed(request.model_spec.name, "regress", entrypoint, go)

    def multi_inference_proto(self, request, entrypoint: str = "GRPC"):
        """Several Classify/Regress tasks of one model version on the same examples (TF Serving's MultiInference)."""
        from tensorflow_serving.apis import inference_pb2

        tasks = list(request.tasks)
        model = tasks[0].model_spec.name if tasks else ""

        def go():
            if not tasks:
                raise invalid("MultiInferenceRequest has no tasks")
            names = {t.model_spec.name for t in tasks}
            if len(names) != 1:
                raise invalid(f"All tasks must use the same model name (got {', '.join(sorted(names))})")
            specs = {(t.model_spec.WhichOneof("version_choice"), t.model_spec.version.value, t.model_spec.version_label)
                     for t in tasks}
            if len(specs) != 1:
                raise invalid("All tasks must use the same model version or label")
            seen = set()
            for t in tasks:
                key = t.model_spec.signature_name or "serving_default"
                if key in seen:
                    raise invalid(f"Duplicate evaluation of signature: {key}")
                seen.add(key)
                if t.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
                    raise invalid(f"Unsupported signature method_name: {t.method_name!r} (classify or regress)")
            servable = self.manager.resolve(tasks[0].model_spec)
            examples = self._examples(request)
            resp = inference_pb2.MultiInferenceResponse()
            for t in tasks:
                api = "Classify" if t.method_name == CLASSIFY_METHOD else "Regress"
                sig = self._signature_for(servable, t.model_spec.signature_name, api, t.method_name)
                out = self._run_examples(servable, sig, examples)
                r = resp.results.add()
                fill_spec(r.model_spec, servable, sig.name)
                if t.method_name == CLASSIFY_METHOD:
                    self._classification(out, len(examples), r.classification_result)
                else:
                    self._regression(out, len(examples), r.regression_result)
            return resp

        return self.timed(model, "multi_inference", entrypoint, go)

    # ---- warmup --------------------------------------------------------------------------
    def warmup(self, servable: Servable, iterations: int = 1, limit: int = 1000) -> int:
        """Replay `assets.extra/tf_serving_warmup_requests` against a version before it serves."""
        import os

        import tensorflow as tf

        from tfcluster import contract
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(servable.path, contract.WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            return 0
        t0 = time.monotonic()
        n = 0
        for raw in tf.data.TFRecordDataset(path).take(limit):
            rec = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
            kind = rec.WhichOneof("log_type")
            if kind != "predict_log":
                raise ValueError(f"warmup record {n} of {path} is a {kind}; only predict_log is replayed")
            req = rec.predict_log.request
            sig = servable.signature(req.model_spec.signature_name)
            inputs = {k: from_proto(v) for k, v in req.inputs.items()}
            for _ in range(iterations):
                try:
                    servable.check(sig, inputs)
                    sig.run(inputs)
                except Exception as e:  # noqa: BLE001
                    raise ValueError(f"warmup record {n} of {path} failed: {as_failure(e).message}") from None
            n += 1
        log.info(
            "Finished reading warmup data for model at %s. Number of warmup records read: %d. Elapsed time (microseconds): %d.",
            path, n, (time.monotonic() - t0) * 1e6,
        )
        return n


def fill_spec(spec, servable: Servable, signature: str | None) -> None:
    spec.name = servable.name
    spec.version.value = servable.version
    if signature is not None:
        spec.signature_name = signature


# ---- gRPC servicers ----------------------------------------------------------------------

def _abort(context, e: Exception):
    f = as_failure(e)
    context.abort(f.code, f.message)


def add_services(server: grpc.Server, core: Core) -> None:
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            try:
                return core.predict_proto(request)
            except Exception as e:  # noqa: BLE001
                _abort(context, e)

        def GetModelMetadata(self, request, context):
            try:
                return core.metadata_proto(request)
            except Exception as e:  # noqa: BLE001
                _abort(context, e)

        def Classify(self, request, context):
            try:
                return core.classify_proto(request)
            except Exception as e:  # noqa: BLE001
                _abort(context, e)

        def Regress(self, request, context):
            try:
                return core.regress_proto(request)
            except Exception as e:  # noqa: BLE001
                _abort(context, e)

        def MultiInference(self, request, context):
            try:
                return core.multi_inference_proto(request)
            except Exception as e:  # noqa: BLE001
                _abort(context, e)

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            try:
                return core.status_proto(request)
            except Exception as e:  # noqa: BLE001
                _abort(context, e)

        def HandleReloadConfigRequest(self, request, context):
            return core.reload_proto(request)

    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
    server.add_generic_rpc_handlers((health_handler(core),))


def health_status(core: Core, service: str) -> int | None:
    """grpc.health.v1 status of `service` ('' = the server, a model name = that model), None if unknown."""
    R = protos.HealthCheckResponse
    if core.draining.is_set():
        return R.NOT_SERVING
    if service == "":
        return R.SERVING
    if service in core.manager.models:
        return R.SERVING if core.manager.any_available(service) else R.NOT_SERVING
    return None


def health_handler(core: Core):
    R = protos.HealthCheckResponse

    def check(request, context):
        s = health_status(core, request.service)
        if s is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}: ask for '' or a model name")
        return R(status=s)

    def watch(request, context):
        last = None
        while context.is_active():
            s = health_status(core, request.service)
            s = R.SERVICE_UNKNOWN if s is None else s
            if s != last:
                last = s
                yield R(status=s)
            if core.draining.wait(0.5) and last == R.NOT_SERVING:
                return

    return grpc.method_handlers_generic_handler(
        protos.HEALTH_SERVICE,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=protos.HealthCheckRequest.FromString, response_serializer=R.SerializeToString
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                watch, request_deserializer=protos.HealthCheckRequest.FromString, response_serializer=R.SerializeToString
            ),
        },
    )


__all__ = ["Core", "add_services", "AVAILABLE", "PREDICT_METHOD"]
