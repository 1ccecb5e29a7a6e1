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


# TensorProto's field number for each typed field. Numeric repeated fields are packed on the wire, so a
# response's values are merged in as one length-delimited field, its bytes made by numpy, instead of
# element by element through Python ints and floats: for a 48x48x3 uint8 image that was 0.25 ms of the
# GIL per response, a third of the server's Python time under 16 clients (bench/serving.py, DCGAN).
_FIELD_NUMBER = {"float_val": 5, "double_val": 6, "int_val": 7, "scomplex_val": 9, "int64_val": 10, "bool_val": 11,
                 "dcomplex_val": 12, "half_val": 13, "uint32_val": 16, "uint64_val": 17}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _varints(values: np.ndarray) -> bytes:
    """Protobuf varints of integers, one after another (a packed field's payload), all as wide as the
    largest: a parser takes a varint with padding groups (0x80 ... 0x00) as its value, and the message
    it fills is written back in the shortest form. Negative ints are their 64-bit two's complement, as
    protobuf writes int32 and int64."""
    v = values.astype(np.int64, copy=False).view(np.uint64) if values.dtype.kind == "i" else values
    if not v.size:
        return b""
    width = max(1, (int(v.max()).bit_length() + 6) // 7)  # 7-bit groups of the largest value
    out = np.empty((v.size, width), np.uint8)
    for k in range(width):  # low group first
        out[:, k] = v >> (7 * k) & 0x7F
    out[:, :-1] |= 0x80  # more to come
    return out.tobytes()


def _packed(field: str, flat: np.ndarray) -> bytes:
    """The wire bytes of `field`'s packed values for a flat, native-byte-order array of its dtype."""
    if flat.dtype.kind == "c":  # real, imaginary, real, ...
        flat = flat.view(flat.real.dtype)
    if field in ("float_val", "scomplex_val"):
        return flat.astype("<f4", copy=False).tobytes()
    if field in ("double_val", "dcomplex_val"):
        return flat.astype("<f8", copy=False).tobytes()
    if field == "half_val":  # the halves' bits, as int32 values
        return _varints(flat.view(np.uint16))
    if field == "bool_val":
        return flat.astype(np.uint8).tobytes()
    return _varints(flat)


def to_typed_proto(array: Any, into=None):
    """numpy array -> TensorProto with the typed value fields (`float_val`, `int_val`, `string_val`, ...),
    not `tensor_content`: what TF Serving puts in responses, and what its clients read directly.
    `into`: an empty TensorProto to fill (a response's output map entry) instead of a new one."""
    import tensorflow as tf

    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto() if into is None else into
    a = np.asarray(array)
    dtype = None if a.dtype.kind in "OSU" else tf.as_dtype(a.dtype)
    field = _TYPED_FIELD.get(dtype.name) if dtype is not None else None
    if field is None:  # strings (always string_val) and dtypes without a typed field
        proto.CopyFrom(to_proto(a) if dtype is None else tf.make_tensor_proto(a))
        return proto
    proto.dtype = dtype.as_datatype_enum
    proto.tensor_shape.CopyFrom(tf.TensorShape(a.shape).as_proto())
    data = _packed(field, np.ascontiguousarray(a, a.dtype.newbyteorder("=")).ravel())
    if data:
        proto.MergeFromString(_varint(_FIELD_NUMBER[field] << 3 | 2) + _varint(len(data)) + data)
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
