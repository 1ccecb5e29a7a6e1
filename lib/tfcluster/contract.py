"""The serving contract: model names, signatures and tensor keys, written once.

Every exporter, the gRPC client, the warmup-record writer, the local model server
and the Helm values read these names, so no string is repeated anywhere else.

| model | `serving_default` inputs                 | outputs                                   |
|-------|------------------------------------------|-------------------------------------------|
| nmt   | source: string [batch]                   | translation: string [batch], score: float |
| dcgan | z: float32 [batch, z_dim]                | images: uint8 [batch, H, W, C]            |
| dqn   | observation: float32/uint8 [batch, ...]  | action: int64 [batch], q_values [batch,A] |
| pg    | observation: float32 [batch, obs]        | action: int64 [batch], probabilities      |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
# A tensorflow.ConfigProto text proto: the thread settings a model's graph runs best with, for
# `tfcluster serve` (TF Serving ignores assets.extra files it does not know).
SESSION_CONFIG_FILE = "assets.extra/session_config.pbtxt"


@dataclass(frozen=True)
class Tensor:
    """One named tensor of a signature: key, dtype name (tf.DType.name) and shape (None = any)."""

    key: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class ModelSpec:
    """The serving contract of one workload's SavedModel."""

    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    signature: str = DEFAULT_SIGNATURE
    # The threads one run of the graph runs best on, written into each export as SESSION_CONFIG_FILE
    # (its session's intra_op_parallelism_threads and inter_op_parallelism_threads); 0 = the server
    # decides (TF: one per core). inter_op_threads=-1: every op of a run on the calling thread.
    intra_op_threads: int = 0
    inter_op_threads: int = 0

    def input(self, key: str) -> Tensor:
        return next(t for t in self.inputs if t.key == key)

    def output(self, key: str) -> Tensor:
        return next(t for t in self.outputs if t.key == key)


@dataclass(frozen=True)
class ReleaseCheck:
    """How `tfcluster release` judges a served version of a workload's model: `evaluate(served, data)`
    calls the version through the serving API (`served(inputs, signature=None)` -> outputs) on the
    evaluation set named by `data` (the release command's --source_file, --image_dir, --env, ...) and
    returns `metric`; `mode` says whether higher ("max") or lower ("min") is better. `from_run(cfg)`
    gives the evaluation set of a training run (its dev data, its env) for `--promote`."""

    metric: str
    mode: Literal["max", "min"]
    evaluate: Callable[[Any, dict[str, Any]], float]
    from_run: Callable[[Any], dict[str, Any]]


NMT = ModelSpec(
    name="nmt",
    inputs=(Tensor("source", "string", (None,)),),
    outputs=(Tensor("translation", "string", (None,)), Tensor("score", "float32", (None,))),
    # Beam search runs thousands of small ops per sentence: on one intra-op thread each runs inline,
    # with no hand-off to a pool, and on the calling thread (inter-op -1) none waits for a pool thread
    # to wake; the server runs batches side by side on the other cores instead.
    intra_op_threads=1,
    inter_op_threads=-1,
)
DCGAN = ModelSpec(
    name="dcgan",
    inputs=(Tensor("z", "float32", (None, None)),),
    outputs=(Tensor("images", "uint8", (None, None, None, None)),),
    # A chain of convolutions, one op after another: run on the request's own thread, each op's work
    # still spread over the cores, instead of handed to an inter-op thread that has gone to sleep
    # between requests and back (about 0.8 ms a request through `tfcluster serve`, bench/serving.py).
    inter_op_threads=-1,
)
DQN = ModelSpec(
    name="dqn",
    inputs=(Tensor("observation", "float32", (None, None)),),
    outputs=(Tensor("action", "int64", (None,)), Tensor("q_values", "float32", (None, None))),
)
PG = ModelSpec(
    name="pg",
    inputs=(Tensor("observation", "float32", (None, None)),),
    outputs=(Tensor("action", "int64", (None,)), Tensor("probabilities", "float32", (None, None))),
)

MODELS: dict[str, ModelSpec] = {m.name: m for m in (NMT, DCGAN, DQN, PG)}


def spec(name: str) -> ModelSpec:
    """The contract of model `name`; a one-line error for an unknown name."""
    from tfcluster.errors import UserError

    try:
        return MODELS[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
