"""NMT train-step throughput: tfcluster's step against a plain Keras model, same batches, same run.

    python bench/nmt_train.py --data ../shared/data/multi30k [--steps 20] [--out bench/results/nmt_train.json]

Both models: 2-layer LSTM encoder and decoder, 128 units, Luong (dot) attention with an
attention layer, output projection, Adam, batch 128 of Multi30k en->de (simple
tokenizer). The reference is what a Keras user writes: a functional model with
`keras.layers.LSTM` and `keras.layers.Attention`, trained with `train_on_batch`.
tfcluster's step is measured without input feeding (the goal: >= 1.0x) and with it (its cost).
Without --data a synthetic corpus of the same shape is used. Prints JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "lib"))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from report import emit  # noqa: E402  (bench/report.py, beside this file)

import numpy as np  # noqa: E402


def batches(cfg, n):
    from tfcluster.data import text

    st, tt = (text.lookup_table(p) for p in cfg.vocab_files)
    ds = text.train_dataset(
        text.resolve(cfg.train_prefix, cfg.src), text.resolve(cfg.train_prefix, cfg.tgt), st, tt,
        batch_size=cfg.batch_size, tokenizer=cfg.tokenize, src_max_len=cfg.src_max_len,
        tgt_max_len=cfg.tgt_max_len, num_buckets=cfg.num_buckets, seed=0,
    )
    return [tuple(t.numpy() for t in b) for b, _ in zip(ds, range(n))]


def time_steps(step, data, warmup):
    for b in data[:warmup]:
        step(b)
    tokens, t0 = 0, time.perf_counter()
    for b in data[warmup:]:
        step(b)
        tokens += int(b[4].sum())
    return tokens / (time.perf_counter() - t0)


def tfcluster_step(cfg):
    import tensorflow as tf

    from tfcluster.train.loop import WorkerContext
    from tfcluster.workloads import nmt

    strategy = tf.distribute.get_strategy()
    task = nmt.Task(cfg, strategy, WorkerContext())
    spec = (tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32))

    @tf.function(input_signature=[spec])
    def step(batch):
        return task.replica_step(batch)["loss_sum"]

    return lambda b: step(tuple(tf.constant(x) for x in b)).numpy()


def keras_reference(cfg, vs, vt):
    import keras

    u = cfg.num_units
    src = keras.Input((None,), dtype="int32")
    tgt = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(vs, u, mask_zero=False)(src)
    states = []
    for _ in range(cfg.num_layers):
        x, h, c = keras.layers.LSTM(u, return_sequences=True, return_state=True, dropout=cfg.dropout)(x)
        states.append([h, c])
    memory = x
    y = keras.layers.Embedding(vt, u)(tgt)
    for i in range(cfg.num_layers):
        y = keras.layers.LSTM(u, return_sequences=True, dropout=cfg.dropout)(y, initial_state=states[i])
    context = keras.layers.Attention()([y, keras.layers.Dense(u, use_bias=False)(memory)])
    att = keras.layers.Dense(u, use_bias=False)(keras.layers.Concatenate()([y, context]))
    logits = keras.layers.Dense(vt, use_bias=False)(att)
    model = keras.Model([src, tgt], logits)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def step(b):
        s, _, t_in, t_out, t_len = b
        weights = (np.arange(t_out.shape[1])[None, :] < t_len[:, None]).astype("float32")
        return model.train_on_batch([s, t_in], t_out, sample_weight=weights)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="", help="Multi30k folder (train.en.gz, train.de.gz); empty: synthetic")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--num_units", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--out", default="bench/results/nmt_train.json")
    a = ap.parse_args()

    from tfcluster.data import toy
    from tfcluster.workloads import nmt

    work = tempfile.mkdtemp(prefix="bench-nmt-")
    if a.data:
        prefix, src, tgt, tok = os.path.join(a.data, "train"), "en", "de", "simple"
    else:
        prefix, src, tgt, tok = toy.write_corpus(os.path.join(work, "data"), vocab=False)["train"], "src", "tgt", "space"
    base = dict(src=src, tgt=tgt, train_prefix=prefix, tokenize=tok, vocab_size=8000, num_layers=2,
                num_units=a.num_units, attention="luong", optimizer="adam", learning_rate=0.001,
                batch_size=a.batch_size, dropout=0.0, out_dir=os.path.join(work, "run"))
    cfg = nmt.prepare(nmt.Config(**base))
    data = batches(cfg, a.warmup + a.steps)
    vs, vt = nmt.vocab_sizes(cfg)

    results = {}
    import keras

    keras.utils.set_random_seed(0)
    results["keras_reference_tgt_tokens_per_s"] = time_steps(keras_reference(cfg, vs, vt), data, a.warmup)
    results["tfcluster_no_input_feeding_tgt_tokens_per_s"] = time_steps(
        tfcluster_step(nmt.Config(**{**base, "input_feeding": False})), data, a.warmup)
    results["tfcluster_input_feeding_tgt_tokens_per_s"] = time_steps(
        tfcluster_step(nmt.Config(**{**base, "input_feeding": True})), data, a.warmup)
    ref = results["keras_reference_tgt_tokens_per_s"]
    results["speedup_no_input_feeding_vs_keras"] = results["tfcluster_no_input_feeding_tgt_tokens_per_s"] / ref
    results["speedup_input_feeding_vs_keras"] = results["tfcluster_input_feeding_tgt_tokens_per_s"] / ref
    results["input_feeding_slowdown"] = (
        results["tfcluster_no_input_feeding_tgt_tokens_per_s"] / results["tfcluster_input_feeding_tgt_tokens_per_s"])
    results["setup"] = {"data": a.data or "synthetic", "layers": 2, "units": a.num_units, "batch_size": a.batch_size,
                        "src_vocab": vs, "tgt_vocab": vt, "steps": a.steps, "warmup": a.warmup,
                        "mean_tgt_tokens_per_batch": float(np.mean([b[4].sum() for b in data])),
                        "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}
    emit(results, a.out)


if __name__ == "__main__":
    main()
