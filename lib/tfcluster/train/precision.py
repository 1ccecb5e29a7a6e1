"""Mixed precision for the data-parallel workloads (`--precision`), the Keras way.

`--precision` takes Keras's policy names: `float32`, `mixed_bfloat16` (bfloat16 compute,
float32 variables: Ampere and later GPUs, TPUs, recent CPUs) and `mixed_float16` (float16
compute with a dynamic loss scale: Volta and later GPUs). A workload builds its models
inside `policy(cfg.precision)`, so every Keras layer it creates takes the policy; what
numerics need in float32 (logits, softmax and losses, attention scores, batch-norm
statistics, CTC) is cast back explicitly by the model code. Variables stay float32 under
every policy, so checkpoints restore across precisions and exported signatures keep their
float32 inputs and outputs.

`loss_scaled(optimizer, precision)` wraps an optimizer in Keras's `LossScaleOptimizer` for
float16 (dynamic scale: halved on a non-finite gradient, which skips the step, doubled
after 2,000 good steps); `scale_loss` / `loss_scale` read it the same for every optimizer.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@contextlib.contextmanager
def policy(name: str) -> Iterator[None]:
    """Layers created inside take the Keras dtype policy `name`; the global policy is restored after."""
    import keras

    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; one of {', '.join(PRECISIONS)}")
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def compute_dtype(name: str) -> str:
    return {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}[name]


def loss_scaled(optimizer: Any, precision: str) -> Any:
    """`optimizer`, wrapped in a dynamic LossScaleOptimizer under mixed_float16."""
    import keras

    if precision != "mixed_float16":
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer, name=f"{optimizer.name}_loss_scale")


def is_scaled(optimizer: Any) -> bool:
    import keras

    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def scale_loss(optimizer: Any, loss: Any) -> Any:
    """The loss to differentiate: multiplied by the current loss scale under float16, else as it is."""
    return optimizer.scale_loss(loss) if is_scaled(optimizer) else loss


def loss_scale(optimizer: Any) -> Any:
    """The current loss scale (a float32 tensor; 1 without loss scaling)."""
    import tensorflow as tf

    if is_scaled(optimizer):
        return tf.cast(tf.convert_to_tensor(optimizer.dynamic_scale), tf.float32)
    return tf.constant(1.0)
