"""Tensors between numpy, `TensorProto` (gRPC) and JSON (REST), and the checks on them.

`Failure` is what every server-side check raises: a gRPC status code and a message that
names the model, the input and the expected spec. The gRPC and REST front ends turn it
into a gRPC status or an HTTP error body.
"""

from __future__ import annotations

import base64
from typing import Any, Mapping

import grpc
import numpy as np

from tfcluster import contract


class Failure(Exception):
    """A request that cannot be served: gRPC status `code` and a message for people."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> Failure:
    return Failure(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> Failure:
    return Failure(grpc.StatusCode.NOT_FOUND, message)


def dtype_name(array: np.ndarray) -> str:
    """The tf.DType name of a numpy array ('string' for bytes/str/object arrays)."""
    if array.dtype.kind in "OSU":
        return "string"
    import tensorflow as tf

    return tf.as_dtype(array.dtype).name


def describe(t: contract.Tensor) -> str:
    """`observation: float32 [-1, 4]`, the way specs are written in error messages."""
    dims = ", ".join("-1" if d is None else str(d) for d in t.shape) if t.shape is not None else "..."
    return f"{t.key}: {t.dtype} [{dims}]"


def check_inputs(where: str, inputs: Mapping[str, np.ndarray], spec: Mapping[str, contract.Tensor]) -> None:
    """INVALID_ARGUMENT for an unknown or missing key or a wrong dtype: what TF Serving itself refuses.

    Shapes are left to the graph, as in TF Serving: a tensor that does not match the
    signature's declared shape is fed all the same, and the graph answers (an elementwise
    model computes; a model whose graph checks its input says what it expects).
    """
    expected = "{" + ", ".join(describe(t) for t in spec.values()) + "}"
    extra = sorted(set(inputs) - set(spec))
    if extra:
        raise invalid(
            f"{where}: input tensor alias not found in signature: {', '.join(extra)}. "
            f"Inputs expected to be in the set {expected}."
        )
    missing = sorted(set(spec) - set(inputs))
    if missing:
        raise invalid(f"{where}: missing input {', '.join(missing)}; the signature expects {expected}.")
    for key, array in inputs.items():
        t = spec[key]
        got = dtype_name(array)
        if got != t.dtype:
            raise invalid(
                f"{where}: input '{key}' has the wrong dtype: got {got} {list(array.shape)}, "
                f"expected {describe(t)}."
            )


# --- TensorProto -------------------------------------------------------------------------

def to_proto(array: Any, dtype: str | None = None):
    """numpy array (or Python value) -> TensorProto; str values are UTF-8 encoded."""
    import tensorflow as tf

    a = np.asarray(array)
    if a.dtype.kind == "U" or (a.dtype.kind == "O" and dtype in (None, "string")):
        a = np.vectorize(lambda s: s.encode() if isinstance(s, str) else s, otypes=[object])(a) if a.size else a.astype(object)
        return tf.make_tensor_proto(a, dtype=tf.string, shape=a.shape)
    if dtype is not None and dtype != "string":
        a = a.astype(tf.as_dtype(dtype).as_numpy_dtype, copy=False)
    return tf.make_tensor_proto(a)


# The repeated field `Tensor::AsProtoField` fills for each dtype, as TF Serving answers.
_TYPED_FIELD = {
    "float32": "float_val", "float64": "double_val", "int32": "int_val", "int16": "int_val", "int8": "int_val",
    "uint8": "int_val", "uint16": "int_val", "int64": "int64_val", "uint32": "uint32_val", "uint64": "uint64_val",
    "bool": "bool_val", "float16": "half_val", "bfloat16": "half_val", "complex64": "scomplex_val",
    "complex128": "dcomplex_val",
}


def to_typed_proto(array: Any):
    """numpy array -> TensorProto with the typed value fields (`float_val`, `int64_val`, `string_val`, ...),
    not `tensor_content`: what TF Serving puts in responses, and what its clients read directly."""
    import tensorflow as tf

    a = np.asarray(array)
    if a.dtype.kind in "OSU":
        return to_proto(a)  # strings are always string_val
    dtype = tf.as_dtype(a.dtype)
    field = _TYPED_FIELD.get(dtype.name)
    if field is None:
        return tf.make_tensor_proto(a)
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum, tensor_shape=tf.TensorShape(a.shape).as_proto())
    flat = a.ravel()
    if field == "half_val":
        flat = flat.view(np.uint16)
    elif field in ("scomplex_val", "dcomplex_val"):
        flat = np.stack([flat.real, flat.imag], axis=-1).ravel()
    getattr(proto, field).extend(flat.tolist())
    return proto


def from_proto(proto) -> np.ndarray:
    import tensorflow as tf

    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # malformed content / unsupported dtype
        raise invalid(f"cannot read a TensorProto of dtype {proto.dtype}: {e}") from None


# --- JSON (TF Serving's REST formats) ------------------------------------------------------

def _decode_b64(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        raise invalid(f"unexpected JSON object {value!r}; binary values are written {{\"b64\": \"...\"}}")
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    if isinstance(value, str):
        return value.encode()
    return value


def from_json(key: str, value: Any, t: contract.Tensor) -> np.ndarray:
    """A JSON value -> numpy array of the signature's dtype (REST requests carry no dtype)."""
    import tensorflow as tf

    try:
        if t.dtype == "string":
            a = np.array(_decode_b64(value), dtype=object)
            if a.size and not all(isinstance(x, bytes) for x in a.flat):
                raise ValueError("expected strings")
            return a
        return np.array(value, dtype=tf.as_dtype(t.dtype).as_numpy_dtype)
    except Failure:
        raise
    except (ValueError, TypeError, OverflowError) as e:
        raise invalid(f"input '{key}': cannot read JSON value as {describe(t)}: {e}") from None


def to_json(key: str, array: np.ndarray) -> Any:
    """numpy -> JSON: strings as text, or {"b64": ...} for `*_bytes` keys and non-UTF-8 bytes."""
    if array.dtype.kind in "OS":
        def enc(b):
            b = b if isinstance(b, bytes) else str(b).encode()
            if not key.endswith("_bytes"):
                try:
                    return b.decode()
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(b).decode()}

        return np.vectorize(enc, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()
