"""Tiny stand-in SavedModels that follow the serving contract, exported in about a second.

For tests, `bench/serving.py` and trying the server without training a workload:

* `pg_policy(seed)`: observation float32 [batch, 4] -> action int64, probabilities float32
  (a fixed linear softmax policy; `seed` picks the weights, so versions differ; its graph
  refuses another width with `observation must have shape [batch, 4]`);
* `nmt_echo()`: source string [batch] -> translation string, score float32 (upper-cases
  the sentence and reverses its words; stands in for a translation model);
* `dcgan_ramp(z_dim, size)`: z float32 [batch, z_dim] -> images uint8 [batch, size, size, 1];
* `batch_probe()`: x float32 [batch, 1] -> y = 2x, rows = the batch size the model saw
  (shows server-side batching).

`export(model, base, spec=..., warmup=...)` writes the next version through
`tfcluster.export.save_version`, as the workloads do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tfcluster import contract


def _tf():
    import tensorflow as tf

    return tf


def pg_policy(seed: int = 0, obs_dim: int = 4, actions: int = 2):
    tf = _tf()
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(obs_dim, actions)).astype(np.float32)
    b = rng.normal(size=(actions,)).astype(np.float32)

    class Policy(tf.Module):
        def __init__(self):
            super().__init__()
            self.w, self.b = tf.Variable(w), tf.Variable(b)

        @tf.function(input_signature=[tf.TensorSpec([None, obs_dim], tf.float32, name=contract.PG.inputs[0].key)])
        def serve(self, observation):
            from tfcluster import export

            # The graph checks its input, as the pg workload's export does (TF Serving feeds any shape).
            observation = export.require_shape(observation, [obs_dim], f"observation must have shape [batch, {obs_dim}]")
            p = tf.nn.softmax(tf.matmul(observation, self.w) + self.b)
            return {contract.PG.outputs[0].key: tf.argmax(p, axis=-1, output_type=tf.int64), contract.PG.outputs[1].key: p}

    return Policy()


def nmt_echo():
    tf = _tf()

    class Echo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.NMT.inputs[0].key)])
        def serve(self, source):
            words = tf.strings.split(tf.strings.upper(source))
            translation = tf.strings.reduce_join(tf.reverse(words, axis=[-1]).to_tensor(default_value=""), axis=-1, separator=" ")
            translation = tf.strings.strip(tf.strings.regex_replace(translation, " +", " "))
            score = -0.5 * tf.cast(words.row_lengths(), tf.float32)
            return {contract.NMT.outputs[0].key: translation, contract.NMT.outputs[1].key: score}

    return Echo()


def dcgan_ramp(z_dim: int = 8, size: int = 4):
    tf = _tf()

    class Ramp(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, z_dim], tf.float32, name=contract.DCGAN.inputs[0].key)])
        def serve(self, z):
            base = tf.reshape(tf.range(size * size, dtype=tf.float32) / (size * size), [1, size, size, 1])
            shift = tf.reshape(tf.reduce_mean(z, axis=-1), [-1, 1, 1, 1])
            img = tf.clip_by_value((base + 0.1 * shift) * 255.0, 0.0, 255.0)
            return {contract.DCGAN.outputs[0].key: tf.cast(img, tf.uint8)}

    return Ramp()


def batch_probe():
    tf = _tf()

    class Probe(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x):
            n = tf.shape(x, out_type=tf.int64)[0]
            # A few milliseconds of work that the outputs depend on, so that a run holds its batch slot long
            # enough for requests sent at the same moment to queue behind it and merge: a bare 2x ran in
            # tens of microseconds, and concurrent requests could each find the server idle and run alone.
            m = tf.while_loop(lambda i, m: i < 200, lambda i, m: (i + 1, tf.tanh(tf.matmul(m, m))),
                              (tf.constant(0), tf.eye(64) * 0.5))[1]
            return {"y": 2.0 * x + 0.0 * tf.reduce_sum(m), "rows": tf.fill([n], n)}

    return Probe()


PROBE = contract.ModelSpec(
    name="probe",
    inputs=(contract.Tensor("x", "float32", (None, 1)),),
    outputs=(contract.Tensor("y", "float32", (None, 1)), contract.Tensor("rows", "int64", (None,))),
)


def export(module: Any, model_base_path: str, spec: contract.ModelSpec, *, name: str | None = None,
           warmup: list[dict] | None = None, version: int | None = None) -> str:
    """Export `module.serve` as `serving_default` of the next version of `name` (default: spec.name)."""
    from dataclasses import replace

    from tfcluster.export import save_version

    spec = replace(spec, name=name or spec.name)
    return save_version(module, {spec.signature: module.serve}, model_base_path, spec, warmup=warmup, version=version)
