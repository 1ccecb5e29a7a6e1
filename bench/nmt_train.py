"""NMT train-step throughput: tfcluster's step against a plain Keras model, same batches, same run.

    python bench/nmt_train.py --data ../shared/data/multi30k [--steps 20] [--out bench/results/nmt_train.json]

Both models: 2-layer LSTM encoder and decoder, 128 units, Luong (dot) attention with an
attention layer, output projection, Adam, batch 128 of Multi30k en->de (simple
tokenizer). The reference is what a Keras user writes: a functional model with
`keras.layers.LSTM` and `keras.layers.Attention`, trained with `train_on_batch`.
tfcluster's step is measured without input feeding (the goal: >= 1.0x) and with it (its cost).
Without --data a synthetic corpus of the same shape is used. Prints JSON.

Input at compute speed (`--what pipeline`): the real job's steady-state target tokens/s
(`run_loop` with the `--hparams_path` preset's Task on its tf.data pipeline, which tokenizes and
maps to ids once, caches, then shuffles, buckets and batches each epoch; the window after the
first epoch) against the same Task's step on batches of that pipeline already on the device,
cycled, in the same process; goal >= 0.95x.
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
    from tfcluster.workloads import nmt

    st, tt = nmt.vocabularies(cfg)  # the run's word or subword vocabularies, as its Task reads them
    ds = text.train_dataset(
        text.resolve(cfg.train_prefix, cfg.src), text.resolve(cfg.train_prefix, cfg.tgt), st, tt,
        batch_size=cfg.batch_size, src_max_len=cfg.src_max_len,
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


def pipeline_vs_device(cfg, window: int, work: str, num_batches: int = 48) -> tuple[float, float]:
    """(tgt tokens/s of the real job in a `window`-step stats window after the first epoch, tgt tokens/s of
    the same Task's step cycling `num_batches` of its batches already on the device)."""
    import dataclasses

    import tensorflow as tf

    from tfcluster.data import text
    from tfcluster.train.loop import WorkerContext, run_loop
    from tfcluster.workloads import nmt

    pairs = text.check_parallel(text.resolve(cfg.train_prefix, cfg.src), text.resolve(cfg.train_prefix, cfg.tgt))
    epoch = -(-pairs // cfg.batch_size)
    steps = window * (epoch // window + 2)  # the last window starts after the first epoch filled the cache
    c = dataclasses.replace(cfg, out_dir=tempfile.mkdtemp(dir=work), num_train_steps=steps, steps_per_stats=window,
                            steps_per_external_eval=10**9, dev_prefix="", test_prefix="", max_train_minutes=0.0,
                            avg_ckpts=False, vocab_prefix=os.path.join(cfg.out_dir, "vocab"))
    c = nmt.prepare(c)  # the prepared vocabularies, into this run's folder
    job = float(run_loop(lambda s: nmt.Task(c, s, WorkerContext()), c)["perf/tgt_tokens_per_s"])

    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        task = nmt.Task(c, strategy, WorkerContext())
    it = iter(task.dataset(tf.distribute.InputContext()))
    on_device = [tuple(tf.identity(x) for x in next(it)) for _ in range(num_batches)]
    spec = tuple(tf.TensorSpec([None] * len(x.shape), x.dtype) for x in on_device[0])

    @tf.function(input_signature=[spec])
    def step(batch):
        return task.replica_step(batch)["predict_count"]

    step(on_device[0])  # trace
    tokens, t0 = 0.0, time.perf_counter()
    for i in range(window):
        tokens += float(step(on_device[i % num_batches]))
    return job, tokens / (time.perf_counter() - t0)


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
    ap.add_argument("--out", default="", help="default: bench/results/nmt_train.json (step), nmt_pipeline.json (pipeline)")
    ap.add_argument("--what", choices=["step", "pipeline"], default="step",
                    help="step: against plain Keras; pipeline: the real job against batches on the device")
    ap.add_argument("--hparams_path", default="nmt_multi30k_en_de", help="--what pipeline: the preset to run")
    ap.add_argument("--window", type=int, default=60, help="--what pipeline: steps per timed window")
    ap.add_argument("--rounds", type=int, default=2, help="--what pipeline: measurements of each side")
    a = ap.parse_args()
    a.out = a.out or f"bench/results/nmt_{'train' if a.what == 'step' else 'pipeline'}.json"

    from tfcluster.data import toy
    from tfcluster.workloads import nmt

    work = tempfile.mkdtemp(prefix="bench-nmt-")
    if a.data:
        prefix, src, tgt, tok = os.path.join(a.data, "train"), "en", "de", "simple"
    else:
        prefix, src, tgt, tok = toy.write_corpus(os.path.join(work, "data"), vocab=False)["train"], "src", "tgt", "space"
    if a.what == "pipeline":
        import statistics

        from tfcluster import config as config_mod

        preset = config_mod.load_json(a.hparams_path)
        cfg = nmt.prepare(config_mod.build(nmt.Config, {**preset, "src": src, "tgt": tgt, "tokenize": tok, "train_prefix": prefix,
                                                        "out_dir": os.path.join(work, "run")}))
        jobs, devices = [], []
        for r in range(a.rounds):
            job, device = pipeline_vs_device(cfg, a.window, work)
            jobs.append(job), devices.append(device)
            print(f"# round {r}: real job {job:.0f} tgt tokens/s, on-device batches {device:.0f}", file=sys.stderr, flush=True)
        emit({"benchmark": "nmt_input_pipeline", "data": a.data or "synthetic", "preset": a.hparams_path,
              "real_job_tgt_tokens_per_s": [round(x, 1) for x in jobs],
              "on_device_tgt_tokens_per_s": [round(x, 1) for x in devices],
              "ratio": round(statistics.median(jobs) / statistics.median(devices), 3), "goal_ratio": 0.95,
              "window_steps": a.window, "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}, a.out)
        return
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
