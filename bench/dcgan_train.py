#!/usr/bin/env python3
"""DCGAN train-step throughput: the tfcluster step against a plain single-process Keras DCGAN.

    python bench/dcgan_train.py [--steps 8] [--rounds 2] [--out bench/results/dcgan_train.json]

Both sides train the same networks (`dcgan.build_generator` / `build_discriminator`,
Adam 2e-4 / 0.5) at 64x64, batch 64, on the same tf.data pipeline (anime faces 96 ->
64 with the center crop, or generated JPEGs when the data is absent), in the same process:
  * tfcluster: `tfcluster.train.loop.run_loop` with `dcgan.Task`, as the Ray Train
    workers run it (one worker; perf/images_per_s of the steady-state window);
  * keras: the keras.io "DCGAN overriding train_step" pattern, `GAN.fit`, timed by a
    callback from the end of the first (tracing) batch to the end of the last.
Rounds alternate which side goes first; the medians are compared.

Input at compute speed (`--what pipeline`, also in the default run): the real job's steady-state
images/s (run_loop with the cached folder pipeline, the window after the first epoch's cache fill)
against the very same Task's step fed one batch that already sits on the device (no input
pipeline at all), in the same process; goal >= 0.95x. GFLOP/s uses
`dcgan.train_step_flops` (2 x multiply-adds, backward = 2 x forward) and is set against
a fp32 matmul peak measured in the same run. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from report import emit  # noqa: E402  (bench/report.py, beside this file)

import numpy as np  # noqa: E402

DEFAULT_DATA = os.path.join(ROOT, os.pardir, "shared", "data")


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    import tensorflow as tf

    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    f = tf.function(lambda a, b: tf.matmul(a, b))
    f(a, b).numpy()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).numpy()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def synthetic_folder(root: str, n: int = 256) -> None:
    from PIL import Image

    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8)).save(os.path.join(root, f"{i}.jpg"))


def tfcluster_images_per_s(cfg, steps: int, work: str) -> float:
    from tfcluster.train.loop import run_loop
    from tfcluster.workloads import dcgan

    out = tempfile.mkdtemp(dir=work)
    c = dataclasses.replace(cfg, out_dir=out, train_size=(steps + 1) * cfg.batch_size, epoch=1,
                            steps_per_stats=steps + 1)
    c = dcgan.prepare(c)
    metrics = run_loop(lambda s: dcgan.Task(c, s), c)
    return float(metrics["perf/images_per_s"])


def pipeline_vs_device(cfg, steps: int, work: str) -> tuple[float, float]:
    """(images/s of the real job in its last `steps`-step window, images/s of the same Task's step on one
    batch already on the device)."""
    import tensorflow as tf

    from tfcluster.train.loop import run_loop
    from tfcluster.workloads import dcgan

    out = tempfile.mkdtemp(dir=work)
    c = dataclasses.replace(cfg, out_dir=out, train_size=(3 * steps + 1) * cfg.batch_size, epoch=1,
                            steps_per_stats=steps, steps_per_external_eval=0, sample_every=10**9)
    c = dcgan.prepare(c)
    job = float(run_loop(lambda s: dcgan.Task(c, s), c)["perf/images_per_s"])  # the last window: cache warm

    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        task = dcgan.Task(c, strategy)
    batch = next(iter(task.dataset(tf.distribute.InputContext())))
    batch = tuple(tf.identity(x) for x in batch)  # on the device, outside any pipeline

    @tf.function
    def step():
        return task.replica_step(batch)

    step()  # trace
    t0 = time.perf_counter()
    for _ in range(steps):
        out_ = step()
    float(next(iter(out_.values())).numpy())
    device = steps * c.batch_size / (time.perf_counter() - t0)
    return job, device


def keras_images_per_s(cfg, steps: int) -> float:
    """The plain Keras DCGAN (keras.io's `GAN(keras.Model)` with `train_step`), same networks and data."""
    import keras
    import tensorflow as tf

    from tfcluster.workloads import dcgan

    c = dataclasses.replace(cfg, c_dim=3)
    k = c.g_steps_per_d

    class GAN(keras.Model):
        def __init__(self, discriminator, generator, z_dim):
            super().__init__()
            self.discriminator, self.generator, self.z_dim = discriminator, generator, z_dim
            self.seed_generator = keras.random.SeedGenerator(1337)

        def compile(self, d_optimizer, g_optimizer):
            super().compile()
            self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
            self.bce = keras.losses.BinaryCrossentropy(from_logits=True)

        def train_step(self, real):
            n = tf.shape(real)[0]
            z = keras.random.uniform((n, self.z_dim), -1.0, 1.0, seed=self.seed_generator)
            fake = self.generator(z, training=True)
            with tf.GradientTape() as tape:
                real_logits = self.discriminator(real, training=True)
                fake_logits = self.discriminator(fake, training=True)
                d_loss = self.bce(tf.ones_like(real_logits), real_logits) + self.bce(tf.zeros_like(fake_logits), fake_logits)
            grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
            self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))
            for _ in range(k):
                with tf.GradientTape() as tape:
                    logits = self.discriminator(self.generator(z, training=True), training=True)
                    g_loss = self.bce(tf.ones_like(logits), logits)
                grads = tape.gradient(g_loss, self.generator.trainable_weights)
                self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))
            return {"d_loss": d_loss, "g_loss": g_loss}

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    keras.utils.set_random_seed(c.seed)
    gan = GAN(dcgan.build_discriminator(c), dcgan.build_generator(c), c.z_dim)
    gan.compile(keras.optimizers.Adam(c.learning_rate, beta_1=c.beta1), keras.optimizers.Adam(c.learning_rate, beta_1=c.beta1))
    ds = dcgan.make_data(c, seed=c.seed).batch(c.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    timer = Timer()
    gan.fit(ds, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[timer])
    return steps * c.batch_size / (timer.ends[-1] - timer.ends[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=DEFAULT_DATA, help="holds anime_faces/ (generated JPEGs when absent)")
    p.add_argument("--dataset", default="anime_faces")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--g_steps_per_d", type=int, default=2, help="2: the job's default (DCGAN-tensorflow)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per measurement (after one warm-up step)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="", help="also write the JSON here")
    p.add_argument("--what", choices=["all", "pipeline"], default="all",
                   help="pipeline: only the real job against the on-device batch")
    p.add_argument("--pipeline_steps", type=int, default=20, help="steps per timed window of --what pipeline")
    p.add_argument("--cache_images", default="auto", choices=["auto", "memory", "disk", "none"],
                   help="the job's image cache (none: decode every epoch, as before the cache)")
    a = p.parse_args(argv)

    import tensorflow as tf

    from tfcluster.workloads import dcgan

    work = tempfile.mkdtemp(prefix="dcgan-bench-")
    data_dir, dataset, source = a.data_dir, a.dataset, "anime_faces"
    if not os.path.isdir(os.path.join(data_dir, dataset)):
        data_dir, dataset, source = work, "synthetic", "generated 96x96 JPEGs"
        synthetic_folder(os.path.join(work, dataset))
    cfg = dcgan.Config(dataset=dataset, data_dir=data_dir, input_height=96, output_height=a.size, crop=True,
                       batch_size=a.batch_size, g_steps_per_d=a.g_steps_per_d, swd_images=64, out_dir=work,
                       cache_images=a.cache_images)
    jobs, devices = [], []
    for r in range(a.rounds):
        job, device = pipeline_vs_device(cfg, a.pipeline_steps, work)
        jobs.append(job), devices.append(device)
        print(f"# round {r}: real job {job:.2f} images/s, on-device batch {device:.2f} images/s", file=sys.stderr, flush=True)
    pipeline = {"real_job_images_per_s": [round(x, 2) for x in jobs],
                "on_device_images_per_s": [round(x, 2) for x in devices],
                "ratio": round(statistics.median(jobs) / statistics.median(devices), 3), "goal_ratio": 0.95,
                "cache": cfg.cache_images, "timed_steps": a.pipeline_steps}
    if a.what == "pipeline":
        emit({"benchmark": "dcgan_input_pipeline", "data": source, "image_size": a.size, "batch_size": a.batch_size,
              "g_steps_per_d": a.g_steps_per_d, "pipeline": pipeline, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg()}, a.out)
        return 0
    peak = matmul_peak_gflops()
    tfc, ker = [], []
    for r in range(a.rounds):
        order = [("tfcluster", tfc), ("keras", ker)] if r % 2 == 0 else [("keras", ker), ("tfcluster", tfc)]
        for name, acc in order:
            acc.append(tfcluster_images_per_s(cfg, a.steps, work) if name == "tfcluster" else keras_images_per_s(cfg, a.steps))
            print(f"# round {r}: {name} {acc[-1]:.2f} images/s", file=sys.stderr, flush=True)
    flops = dcgan.train_step_flops(cfg, 3)
    t, k = statistics.median(tfc), statistics.median(ker)
    result = {
        "benchmark": "dcgan_train",
        "data": source,
        "image_size": a.size,
        "batch_size": a.batch_size,
        "g_steps_per_d": a.g_steps_per_d,
        "timed_steps": a.steps,
        "rounds": a.rounds,
        "tfcluster_images_per_s": [round(x, 2) for x in tfc],
        "keras_images_per_s": [round(x, 2) for x in ker],
        "tfcluster_median_images_per_s": round(t, 2),
        "keras_median_images_per_s": round(k, 2),
        "speedup_vs_keras": round(t / k, 3),
        "goal_speedup": 1.0,
        "train_step_gflop_per_image": round(flops / 1e9, 3),
        "tfcluster_gflop_per_s": round(t * flops / 1e9, 1),
        "keras_gflop_per_s": round(k * flops / 1e9, 1),
        "matmul_peak_gflop_per_s": round(peak, 1),
        "tfcluster_fraction_of_peak": round(t * flops / 1e9 / peak, 3),
        "pipeline": pipeline,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
    }
    emit(result, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
