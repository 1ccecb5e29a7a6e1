#!/usr/bin/env python3
"""Training steps per second of each data-parallel workload under each --precision (and with
--jit_compile), on whatever device TensorFlow has: made to run as it is on a GPU node.

    python bench/gpu_check.py [--workloads nmt,dcgan,ocr] [--steps 50] [--out bench/results/gpu_check.json]
    python bench/gpu_check.py --quick          # small models and few steps: a CPU smoke run

Each cell builds the workload's real Task under the precision's Keras policy (as the training loop
does), feeds it generated data (a word-for-word toy corpus, random 64x64 images, drawn digit lines),
runs `--warmup` steps (tracing, XLA compilation) and times `--steps` more. float32 without XLA is
the reference each row is divided by. Prints one JSON object with the device's name.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from report import emit  # noqa: E402  (bench/report.py, beside this file)


def configs(work: str, quick: bool) -> dict:
    """Each workload's Config at the size its presets train (smaller with --quick)."""
    import numpy as np
    from PIL import Image

    from tfcluster.data import toy
    from tfcluster.workloads import dcgan, nmt, ocr

    p = toy.write_corpus(os.path.join(work, "corpus"), sizes={"train": 4000})
    faces = os.path.join(work, "images", "faces")
    os.makedirs(faces)
    rng = np.random.default_rng(0)
    for i in range(256):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(os.path.join(faces, f"{i}.jpg"))
    units = 64 if quick else 512
    return {
        "nmt": nmt.Config(src="src", tgt="tgt", train_prefix=p["train"], vocab_prefix=p["vocab"],
                          out_dir=os.path.join(work, "nmt"), num_units=units, num_layers=2, encoder_type="bi",
                          attention="scaled_luong", input_feeding=False, optimizer="adam", learning_rate=0.001,
                          batch_size=32 if quick else 128),
        "dcgan": dcgan.Config(dataset="faces", data_dir=os.path.join(work, "images"), input_height=64,
                              output_height=32 if quick else 64, gf_dim=16 if quick else 64,
                              df_dim=16 if quick else 64, batch_size=16 if quick else 64,
                              out_dir=os.path.join(work, "dcgan")),
        "ocr": ocr.Config(out_dir=os.path.join(work, "ocr"), batch_size=16 if quick else 64,
                          filters=16 if quick else 64, num_units=32 if quick else 128),
    }


def steps_per_s(wl, cfg, warmup: int, steps: int) -> float:
    import tensorflow as tf

    from tfcluster.train import precision
    from tfcluster.train.loop import WorkerContext

    strategy = tf.distribute.get_strategy()
    cfg = wl.prepare(cfg)
    with precision.policy(cfg.precision):
        task = wl.task(cfg, strategy, WorkerContext())
    ds = strategy.distribute_datasets_from_function(task.dataset)
    it = iter(ds)
    @tf.function
    def step(it):  # the loop's step; with --jit_compile the Task compiles its forward and backward pass
        return strategy.run(task.replica_step, args=(next(it),))

    for _ in range(warmup):
        out = step(it)
    tf.nest.map_structure(lambda t: t.numpy(), out)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = step(it)
    tf.nest.map_structure(lambda t: t.numpy(), out)
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="nmt,dcgan,ocr")
    ap.add_argument("--precisions", default="float32,mixed_bfloat16,mixed_float16")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="small models and 5 steps (a CPU smoke run)")
    ap.add_argument("--out", default="bench/results/gpu_check.json")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.warmup = 5, 2

    import dataclasses

    import tensorflow as tf

    from tfcluster import workloads

    gpus = tf.config.list_physical_devices("GPU")
    device = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name) if gpus
              else f"CPU ({os.cpu_count()} cores)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        cells = configs(work, a.quick)
        for name in a.workloads.split(","):
            base = cells[name]
            wl = workloads.get(name)
            reference = None
            for prec in a.precisions.split(","):
                for jit in (False, True):
                    cfg = dataclasses.replace(base, precision=prec, jit_compile=jit,
                                              out_dir=os.path.join(work, f"{name}-{prec}-{jit}"))
                    try:
                        rate = steps_per_s(wl, cfg, a.warmup, a.steps)
                        err = None
                    except Exception as e:  # noqa: BLE001 - a precision a device lacks is a row, not a crash
                        rate, err = None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    if prec == "float32" and not jit:
                        reference = rate
                    rows.append({"workload": name, "precision": prec, "jit_compile": jit,
                                 "steps_per_s": None if rate is None else round(rate, 2),
                                 "vs_float32": None if not (rate and reference) else round(rate / reference, 2),
                                 **({"error": err} if err else {})})
                    print(f"# {name:6s} {prec:15s} jit={jit!s:5s} {rows[-1]['steps_per_s']} steps/s", flush=True)
    emit({"benchmark": "gpu_check", "device": device, "tensorflow": tf.__version__, "quick": a.quick,
          "steps": a.steps, "warmup": a.warmup, "rows": rows}, a.out)


if __name__ == "__main__":
    main()
