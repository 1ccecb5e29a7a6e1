"""Export: SavedModel + named signatures + warmup records -> `<base>/<model>/<version>/`.

A version is written under a hidden temporary folder next to its final place and then
renamed, so a model server polling `<base>/<model>/` (TF Serving or tfcluster's own)
never sees half a model: it only ever lists complete, numeric version folders.

In a bucket (`--model_base_path s3://...`, `gs://...`), where there is no rename, the version is
written locally and uploaded file by file with `saved_model.pb` last: a version folder that has
its SavedModel file has all of its variables and assets, and the servers (and
`tfcluster sync-models`) take only such folders. A failed upload removes what it wrote.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any, Mapping

import numpy as np

from tfcluster import contract
from tfcluster.errors import UserError

_VERSION = re.compile(r"^\d+$")


def versions(base: str, name: str) -> list[int]:
    """The numeric version folders of model `name` under `base` (a folder or a bucket URI), ascending."""
    from tfcluster import storage

    return sorted(int(p) for p in storage.listdir(storage.join(base, name)) if _VERSION.match(p))


def next_version(base: str, name: str) -> int:
    vs = versions(base, name)
    return (vs[-1] + 1) if vs else 1


def require_shape(x, dims: list[int | None], message: str):
    """`x` behind an in-graph check that its shape is `[batch, *dims]` (None: any size).

    Everything computed from the returned tensor depends on the check, so a request of the
    wrong shape fails with `message` (INVALID_ARGUMENT) before any layer sees it, whichever
    op the runtime would otherwise have scheduled first.
    """
    import tensorflow as tf

    shape = tf.shape(x, out_type=tf.int64)
    fixed = [(i + 1, d) for i, d in enumerate(dims) if d is not None]

    def dims_match():
        if not fixed:
            return tf.constant(True)
        idx = tf.constant([i for i, _ in fixed], tf.int64)
        return tf.reduce_all(tf.equal(tf.gather(shape, idx), tf.constant([d for _, d in fixed], tf.int64)))

    ok = tf.cond(tf.equal(tf.size(shape), len(dims) + 1), dims_match, lambda: tf.constant(False))
    check = tf.debugging.Assert(ok, [message, "got shape", shape])
    with tf.control_dependencies([check]):
        return tf.identity(x)


def warmup_log(spec: contract.ModelSpec, inputs: Mapping[str, Any]):
    """A `PredictionLog` holding one Predict request for the warmup file."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    req = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=spec.name, signature_name=spec.signature)
    )
    for key, value in inputs.items():
        t = spec.input(key)
        req.inputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(value), dtype=tf.as_dtype(t.dtype)))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))


def write_warmup(saved_model_dir: str, spec: contract.ModelSpec, requests: list[Mapping[str, Any]]) -> str:
    """Write `assets.extra/tf_serving_warmup_requests` (TFRecord of PredictionLog)."""
    import tensorflow as tf

    path = os.path.join(saved_model_dir, contract.WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as w:
        for inputs in requests:
            w.write(warmup_log(spec, inputs).SerializeToString())
    return path


def write_session_config(saved_model_dir: str, spec: contract.ModelSpec) -> str:
    """Write `assets.extra/session_config.pbtxt`, a ConfigProto text proto: the intra-op and inter-op threads
    `tfcluster serve` runs this model's session with (`ModelSpec.intra_op_threads`, `.inter_op_threads`)."""
    import tensorflow as tf
    from google.protobuf import text_format

    cfg = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=spec.intra_op_threads,
                                   inter_op_parallelism_threads=spec.inter_op_threads)
    path = os.path.join(saved_model_dir, contract.SESSION_CONFIG_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text_format.MessageToString(cfg))
    return path


def captured_variables(functions) -> list:
    """The tf.Variables the concrete `functions` read, each once.

    Tracking these (and not the Keras layers or models that own them) is what makes the
    SavedModel servable by TensorFlow Serving: a Keras 3 variable is a wrapper whose own
    checkpoint entry restores, in a session-based loader (TF Serving, `saved_model_cli run`,
    `tf.compat.v1.saved_model.load`), into a variable that the graph never reads, so every
    request would fail with "Could not find variable". `tf.saved_model.load` hid this.
    """
    seen: dict[int, Any] = {}
    for fn in functions:
        for v in fn.variables:
            seen.setdefault(id(v), v)
    return list(seen.values())


def save_version(
    module: Any,
    signatures: Mapping[str, Any],
    model_base_path: str,
    spec: contract.ModelSpec,
    *,
    warmup: list[Mapping[str, Any]] | None = None,
    version: int | None = None,
) -> str:
    """Save `module` with `signatures` as the next (or the given) version; returns its path.

    `signatures` maps signature names to concrete functions; `spec.signature` must be one.
    """
    import shutil
    import tempfile

    import tensorflow as tf

    from tfcluster import storage

    if spec.signature not in signatures:
        raise ValueError(f"export of {spec.name} lacks the {spec.signature!r} signature")
    remote = storage.is_uri(model_base_path)
    model_dir = storage.join(model_base_path, spec.name)
    if not remote:
        tf.io.gfile.makedirs(model_dir)
    version = version or next_version(model_base_path, spec.name)
    final = storage.join(model_dir, str(version))
    if storage.exists(final):
        raise UserError(f"version {version} of {spec.name} already exists at {storage.display(final)}")
    tmp = (tempfile.mkdtemp(prefix=f"export-{spec.name}-{version}-", dir=storage.cache_root()) if remote
           else os.path.join(model_dir, f".tmp-{version}-{uuid.uuid4().hex[:8]}"))
    signatures = {k: f.get_concrete_function() if hasattr(f, "get_concrete_function") else f for k, f in signatures.items()}
    module.serving_variables = captured_variables(signatures.values())
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        if warmup:
            write_warmup(tmp, spec, warmup)
        if spec.intra_op_threads or spec.inter_op_threads:
            write_session_config(tmp, spec)
        if remote:
            storage.upload_tree(tmp, final)  # saved_model.pb last
        else:
            tf.io.gfile.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def check_signature(path: str, spec: contract.ModelSpec) -> None:
    """Raise ValueError when the SavedModel at `path` does not match the contract."""
    import tensorflow as tf

    from tfcluster import storage

    loaded = tf.saved_model.load(storage.local_tree(path))
    fn = loaded.signatures.get(spec.signature)
    if fn is None:
        raise ValueError(f"{path}: no {spec.signature!r} signature")
    ins = fn.structured_input_signature[1]
    outs = fn.structured_outputs
    for t in spec.inputs:
        if t.key not in ins or ins[t.key].dtype.name != t.dtype:
            raise ValueError(f"{path}: input {t.key!r} should be {t.dtype}, got {ins.get(t.key)}")
    for t in spec.outputs:
        if t.key not in outs or outs[t.key].dtype.name != t.dtype:
            raise ValueError(f"{path}: output {t.key!r} should be {t.dtype}, got {outs.get(t.key)}")
