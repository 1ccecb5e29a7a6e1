"""DCGAN's model part: data pipeline, networks, losses, the training task, evaluation, export, visualize.

TensorFlow is imported at the top here; `tfcluster.workloads.dcgan` (Config, the image index,
the contract) imports this module only when it trains, exports or visualizes, so `--help`
and a sweep driver stay free of TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcluster import contract
from tfcluster.errors import UserError
from tfcluster.train import precision
from tfcluster.train.loop import TaskBase
from tfcluster.workloads.dcgan import (Config, _mnist_digits, folder_index, generator_plan, num_images, prepare,
                                      steps_per_epoch)

def make_data(cfg: Config, shard: tuple[int, int] = (1, 0), *, shuffle: bool = True, seed: int | None = None,
              cache: bool = True):
    """Unbatched float32 images [H, W, c_dim] in [-1, 1]: shard `shard[1]` of `shard[0]`, shuffled and repeated;
    the training pipeline caches the decoded images (--cache_images), a one-off sample (`cache=False`) does not."""
    from tfcluster.data import images

    seed = cfg.seed if seed is None else seed
    num_shards, index = shard
    if cfg.is_mnist:
        return images.array_dataset(_mnist_digits(cfg), output_height=cfg.output_height, output_width=cfg.output_width,
                                    shuffle=shuffle, seed=seed, num_shards=num_shards, shard=index)
    files = folder_index(cfg).files
    channels = cfg.c_dim or 3
    plan, buffer = None, 0  # no cache: decode every epoch
    if shuffle and cache and cfg.cache_images != "none":
        import hashlib

        key = hashlib.sha1("\n".join([*files, f"{cfg.input_height}x{cfg.input_width} crop={cfg.crop}"]).encode()).hexdigest()[:12]
        fraction = {"memory": 1.0, "disk": 0.0}.get(cfg.cache_images, 0.2)  # auto: a fifth of the free memory
        plan, buffer = images.cache_plan(len(files), cfg.output_height, cfg.output_width, channels,
                                         os.path.join(cfg.out_dir, "cache"), key, shard, memory_fraction=fraction)
    return images.folder_dataset(
        files, channels=channels, input_height=cfg.input_height, input_width=cfg.input_width,
        output_height=cfg.output_height, output_width=cfg.output_width, crop=cfg.crop, shuffle=shuffle, seed=seed,
        num_shards=num_shards, shard=index, cache=plan, shuffle_buffer=buffer)


def sample_z(shape, dist: str, seed):
    """z from the prior, stateless: the same (seed, step) gives the same z on any worker count."""
    if dist == "normal":
        return tf.random.stateless_normal(shape, seed=seed)
    return tf.random.stateless_uniform(shape, seed=seed, minval=-1.0, maxval=1.0)


def fixed_z(cfg: Config, n: int, seed: int) -> np.ndarray:
    """A fixed batch of z (sample grids, SWD, visualize), from numpy so it is identical everywhere."""
    rng = np.random.default_rng(seed)
    if cfg.z_dist == "normal":
        return rng.standard_normal((n, cfg.z_dim)).astype(np.float32)
    return rng.uniform(-1.0, 1.0, (n, cfg.z_dim)).astype(np.float32)


# ============================================================================ networks


def _init():
    return keras.initializers.RandomNormal(0.0, 0.02)


def _bn():
    from keras import layers

    # DCGAN-tensorflow's batch_norm: decay 0.9, epsilon 1e-5.
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5)


def build_generator(cfg: Config, c_dim: int | None = None):
    from keras import layers

    c_dim = c_dim or cfg.c_dim or 3
    sh, sw, n_up = generator_plan(cfg.output_height, cfg.output_width)
    ch = cfg.gf_dim * 2 ** (n_up - 1)
    z = keras.Input((cfg.z_dim,), name="z")
    x = layers.Dense(sh * sw * ch, kernel_initializer=_init(), name="g_h0_lin")(z)
    x = layers.Reshape((sh, sw, ch))(x)
    x = layers.ReLU()(_bn()(x))
    for i in range(1, n_up):
        ch //= 2
        x = layers.Conv2DTranspose(ch, 5, strides=2, padding="same", kernel_initializer=_init(), name=f"g_h{i}")(x)
        x = layers.ReLU()(_bn()(x))
    x = layers.Conv2DTranspose(c_dim, 5, strides=2, padding="same", kernel_initializer=_init(), name=f"g_h{n_up}")(x)
    # The output in float32 under every precision (Keras's mixed-precision recipe): images, losses and exports.
    return keras.Model(z, layers.Activation("tanh", dtype="float32")(x), name="generator")


def build_discriminator(cfg: Config, c_dim: int | None = None):
    from keras import layers

    c_dim = c_dim or cfg.c_dim or 3
    image = keras.Input((cfg.output_height, cfg.output_width, c_dim), name="image")
    x = image
    for i in range(4):
        x = layers.Conv2D(cfg.df_dim * 2**i, 5, strides=2, padding="same", kernel_initializer=_init(), name=f"d_h{i}")(x)
        if i > 0:
            x = _bn()(x)
        x = layers.LeakyReLU(0.2)(x)
    x = layers.Flatten()(x)
    logits = layers.Dense(1, kernel_initializer=_init(), name="d_h4_lin")(x)
    return keras.Model(image, layers.Activation("linear", dtype="float32", name="d_logits")(logits), name="discriminator")


def build(cfg: Config):
    """(generator, discriminator, g_optimizer, d_optimizer); optimizers built so checkpoints restore eagerly."""
    g, d = build_generator(cfg), build_discriminator(cfg)
    g_opt = precision.loss_scaled(keras.optimizers.Adam(cfg.learning_rate, beta_1=cfg.beta1, name="g_adam"), cfg.precision)
    d_opt = precision.loss_scaled(keras.optimizers.Adam(cfg.learning_rate, beta_1=cfg.beta1, name="d_adam"), cfg.precision)
    g_opt.build(g.trainable_variables)
    d_opt.build(d.trainable_variables)
    return g, d, g_opt, d_opt


def forward_flops(cfg: Config, c_dim: int = 3) -> tuple[float, float]:
    """Forward FLOPs per image of (G, D): 2 x multiply-adds of the convs and linear layers."""
    sh, sw, n_up = generator_plan(cfg.output_height, cfg.output_width)
    ch = cfg.gf_dim * 2 ** (n_up - 1)
    g = 2.0 * cfg.z_dim * sh * sw * ch
    h, w = sh, sw
    for i in range(n_up):
        out_ch = ch // 2 if i < n_up - 1 else c_dim
        g += 2.0 * h * w * ch * out_ch * 25  # a stride-2 transposed conv: every input pixel x 5x5 x cin x cout
        h, w, ch = 2 * h, 2 * w, out_ch
    d, cin = 0.0, c_dim
    h, w = cfg.output_height, cfg.output_width
    for i in range(4):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        d += 2.0 * h * w * cin * cfg.df_dim * 2**i * 25
        cin = cfg.df_dim * 2**i
    d += 2.0 * h * w * cin
    return g, d


def train_step_flops(cfg: Config, c_dim: int = 3) -> float:
    """FLOPs per image of one train step; backward = 2 x forward where weights and inputs need gradients.

    D update: G forward, D forward and backward on real and fake (G + 6 D);
    each G update: G forward and backward, D forward and input-gradient (3 G + 2 D).
    """
    g, d = forward_flops(cfg, c_dim)
    return g + 6 * d + cfg.g_steps_per_d * (3 * g + 2 * d)


# ============================================================================ losses and the train step


def d_losses(real_logits, fake_logits):
    """Per-example D loss: sigmoid cross-entropy of real -> 1 plus fake -> 0 (DCGAN-tensorflow d_loss)."""
    real = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones_like(real_logits), logits=real_logits)
    fake = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.zeros_like(fake_logits), logits=fake_logits)
    return tf.reshape(real + fake, [-1])


def g_losses(fake_logits):
    """Per-example non-saturating G loss: -log D(G(z)) (Goodfellow et al., 2014, sec. 3)."""
    return tf.reshape(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones_like(fake_logits), logits=fake_logits), [-1])


def to_uint8(images):
    """tanh output [-1, 1] -> uint8 [0, 255] (round to nearest)."""
    return tf.cast(tf.round(tf.clip_by_value((images + 1.0) * 127.5, 0.0, 255.0)), tf.uint8)


class Task(TaskBase):
    """What the shared loop trains (`tfcluster.train.loop.Task`): built inside `strategy.scope()`."""

    best_metric = ("eval/swd", "min")

    def __init__(self, cfg: Config, strategy: Any = None, ctx: Any = None):
        from tfcluster.train.loop import WorkerContext

        if not cfg.c_dim:
            cfg = prepare(cfg) if cfg.is_mnist else dataclasses.replace(cfg, c_dim=folder_index(cfg).channels)
        self.cfg, self.ctx = cfg, ctx or WorkerContext()
        self.steps_per_epoch = steps_per_epoch(num_images(cfg), cfg.train_size, cfg.batch_size)
        if self.steps_per_epoch < 1:
            raise UserError(f"{num_images(cfg)} images (--train_size {cfg.train_size or 'all'}) make no batch of "
                            f"--batch_size {cfg.batch_size}; lower --batch_size")
        self.num_steps = cfg.epoch * self.steps_per_epoch
        self.generator, self.discriminator, self.g_opt, self.d_opt = build(cfg)
        self._d_gradients, self._g_gradients = self.xla(self.d_gradients, cfg), self.xla(self.g_gradients, cfg)
        self._eval: dict[str, Any] = {}

    def trackables(self) -> dict[str, Any]:
        return {"generator": self.generator, "discriminator": self.discriminator,
                "g_optimizer": self.g_opt, "d_optimizer": self.d_opt}

    def after_restore(self) -> None:
        """Adam keeps its rate in a checkpointed variable: the config's rate wins (PBT changes it)."""
        for opt in (self.g_opt, self.d_opt):
            opt.learning_rate.assign(self.cfg.learning_rate)

    def dataset(self, input_context):
        """This pipeline's shard, per-replica batches with their z: (images [b, H, W, C], z [b, z_dim])."""
        cfg = self.cfg
        per_replica = input_context.get_per_replica_batch_size(cfg.batch_size)
        pid = input_context.input_pipeline_id
        ds = make_data(cfg, (input_context.num_input_pipelines, pid), seed=cfg.seed + pid)
        ds = ds.batch(per_replica, drop_remainder=True).enumerate()
        ds = ds.map(lambda i, x: (x, sample_z([per_replica, cfg.z_dim], cfg.z_dist, tf.stack([cfg.seed + pid, i]))))
        return ds.prefetch(tf.data.AUTOTUNE)

    def replica_step(self, batch) -> dict[str, Any]:
        return self._train_step(*batch)

    def d_gradients(self, images, z):
        """D's per-example losses, logits and (loss-scaled) gradients: what --jit_compile compiles."""
        g, d = self.generator, self.discriminator
        scale = 1.0 / self.cfg.batch_size  # per-example sums / global batch: replicas' gradients add up to the mean
        fake = g(z, training=True)
        with tf.GradientTape() as tape:
            real_logits = d(images, training=True)
            fake_logits = d(fake, training=True)
            d_loss = d_losses(real_logits, fake_logits)
            loss = precision.scale_loss(self.d_opt, tf.reduce_sum(d_loss) * scale)
        return d_loss, real_logits, fake_logits, tape.gradient(loss, d.trainable_variables)

    def g_gradients(self, z):
        g, d = self.generator, self.discriminator
        with tf.GradientTape() as tape:
            g_loss = g_losses(d(g(z, training=True), training=True))
            loss = precision.scale_loss(self.g_opt, tf.reduce_sum(g_loss) / self.cfg.batch_size)
        return g_loss, tape.gradient(loss, g.trainable_variables)

    def _train_step(self, images, z):
        g, d = self.generator, self.discriminator
        d_loss, real_logits, fake_logits, grads = self._d_gradients(images, z)
        self.d_opt.apply_gradients(zip(grads, d.trainable_variables))
        for _ in range(self.cfg.g_steps_per_d):
            g_loss, grads = self._g_gradients(z)
            self.g_opt.apply_gradients(zip(grads, g.trainable_variables))
        return {
            "d_loss_scale": precision.loss_scale(self.d_opt) * tf.cast(tf.shape(images)[0], tf.float32),
            "g_loss_scale": precision.loss_scale(self.g_opt) * tf.cast(tf.shape(images)[0], tf.float32),
            "d_loss": tf.reduce_sum(d_loss),
            "g_loss": tf.reduce_sum(g_loss),
            "d_real": tf.reduce_sum(tf.sigmoid(real_logits)),
            "d_fake": tf.reduce_sum(tf.sigmoid(fake_logits)),
            "images": tf.cast(tf.shape(images)[0], tf.float32),
        }

    def stats(self, sums: dict[str, float], steps: int, seconds: float) -> dict[str, float]:
        n = max(sums["images"], 1.0)
        return {
            "train/d_loss": sums["d_loss"] / n,
            "train/g_loss": sums["g_loss"] / n,
            "train/d_real": sums["d_real"] / n,
            "train/d_fake": sums["d_fake"] / n,
            "perf/images_per_s": sums["images"] / max(seconds, 1e-9),
            "perf/step_s": seconds / max(steps, 1),
            **({"train/d_loss_scale": sums["d_loss_scale"] / n, "train/g_loss_scale": sums["g_loss_scale"] / n}
               if precision.is_scaled(self.d_opt) else {}),
        }

    # ------------------------------------------------------------------------ evaluate (chief only)

    def generate(self, z: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """G(z) in inference mode (batch-norm moving averages), float32 [-1, 1]."""
        if "gen" not in self._eval:
            self._eval["gen"] = tf.function(lambda z: self.generator(z, training=False), reduce_retracing=True)
        return np.concatenate([self._eval["gen"](tf.constant(z[i : i + batch_size])).numpy()
                               for i in range(0, len(z), batch_size)])

    def evaluate(self, step: int) -> dict[str, float]:
        """Write the fixed-z sample grid, return eval/swd (and eval/fid_mnist for MNIST)."""
        from tfcluster.eval import swd
        from tfcluster.metrics import MetricsWriter

        cfg = self.cfg
        epoch, idx = divmod(step - 1, self.steps_per_epoch)
        grid = image_grid(self.generate(fixed_z(cfg, 64, cfg.seed))[:64], 8, 8, already_uint8=False)
        save_png(grid, os.path.join(cfg.samples_path, f"train_{epoch:02d}_{idx:04d}.png"))
        if "writer" not in self._eval:
            self._eval["writer"] = MetricsWriter(cfg.out_dir)
        self._eval["writer"].image("samples", step, grid[None])

        if "swd_real" not in self._eval:
            real = real_images(cfg, cfg.swd_images)
            self._eval["swd_n"] = len(real)
            self._eval["swd_real"] = swd.descriptors(real, seed=cfg.seed, min_res=min(16, cfg.output_height))
        fake = quantize(self.generate(fixed_z(cfg, self._eval["swd_n"], cfg.seed + 1)))
        out = {f"eval/{k}": v for k, v in swd.swd(self._eval["swd_real"], fake, seed=cfg.seed,
                                                      min_res=min(16, cfg.output_height)).items()}
        if cfg.is_mnist:
            out["eval/fid_mnist"] = self.fid_mnist(self.generate(fixed_z(cfg, cfg.fid_images, cfg.seed + 2)))
        return out

    def fid_mnist(self, fake: np.ndarray) -> float:
        from tfcluster.eval import fid_mnist

        cfg = self.cfg
        if "fid" not in self._eval:
            x, y = _mnist_labels(cfg)
            path = ensure_fid_classifier(cfg, x, y)
            rng = np.random.default_rng(cfg.seed)
            real = x[rng.permutation(len(x))[: cfg.fid_images]]
            self._eval["fid"] = fid_mnist.MnistFid(path, fid_mnist.to_model_range(real, cfg.output_height, cfg.output_width))
        return self._eval["fid"](quantize(fake))


def _mnist_labels(cfg: Config):
    from tfcluster.data import images

    return images.load_mnist(cfg.data_dir, cfg.dataset, labels=True)


def ensure_fid_classifier(cfg: Config, x=None, y=None) -> str:
    """Train the MNIST classifier for eval/fid_mnist once; later runs reuse the cached weights."""
    from tfcluster.eval import fid_mnist

    path = fid_mnist.classifier_path(cfg.fid_dir, cfg.output_height, cfg.output_width)
    if not tf.io.gfile.exists(path):
        if x is None:
            x, y = _mnist_labels(cfg)
        acc = fid_mnist.train_classifier(x, y, path, height=cfg.output_height, width=cfg.output_width,
                                         epochs=cfg.fid_epochs, seed=cfg.seed)
        print(f"# eval/fid_mnist classifier: held-out accuracy {acc:.4f}, cached in {path}", flush=True)
    return path


def real_images(cfg: Config, n: int) -> np.ndarray:
    """A fixed, seeded sample of up to `n` real training images, float32 [-1, 1], as the train pipeline makes them."""
    ds = make_data(cfg, shuffle=True, seed=cfg.seed + 12345, cache=False)
    n = min(n, num_images(cfg))
    return quantize(np.concatenate([b for b in ds.batch(256).take(math.ceil(n / 256)).as_numpy_iterator()])[:n])


def quantize(images: np.ndarray) -> np.ndarray:
    """Round [-1, 1] floats to the 256 levels an exported image has, back in [-1, 1]."""
    return np.round((np.clip(images, -1, 1) + 1.0) * 127.5) / 127.5 - 1.0


# ============================================================================ export and visualize


def image_grid(images, rows: int, cols: int, *, already_uint8: bool = True) -> np.ndarray:
    """Tile images [N, H, W, C] into one [rows*H, cols*W, C] uint8 image (DCGAN-tensorflow `merge`); blanks pad."""
    images = np.asarray(images)
    if not already_uint8:
        images = np.round((np.clip(images, -1, 1) + 1.0) * 127.5).astype(np.uint8)
    n, h, w, c = images.shape
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(min(n, rows * cols)):
        r, q = divmod(i, cols)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = images[i]
    return grid


def save_png(image: np.ndarray, path: str) -> str:
    """Write a uint8 [H, W, C] image as PNG (local path or a TensorFlow file-system URI)."""
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(tf.io.encode_png(image).numpy())
    return path


def interpolate(z0: np.ndarray, z1: np.ndarray, n: int) -> np.ndarray:
    """n points on the straight line from z0 to z1, both ends included: [n, z_dim]."""
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
    return ((1.0 - t) * z0[None] + t * z1[None]).astype(np.float32)


def serving_module(generator, z_dim: int):
    """A tf.Module whose `serve` is the contract's signature: z float32 [batch, z_dim] -> images uint8."""
    from tfcluster import export as export_mod

    z_key = contract.DCGAN.inputs[0].key
    out_key = contract.DCGAN.outputs[0].key
    module = tf.Module()  # save_version tracks the variables `serve` reads, not the Keras model

    @tf.function(input_signature=[tf.TensorSpec([None, z_dim], tf.float32, name=z_key)])
    def serve(z):
        z = export_mod.require_shape(z, [z_dim], f"{z_key} must have shape [batch, {z_dim}]")
        return {out_key: to_uint8(generator(z, training=False))}

    module.serve = serve
    return module


def export(generator, cfg: Config, model_base_path: str) -> str:
    """Save G as the next version of `<model_base_path>/dcgan/` with the serving signature and a warmup request."""
    from tfcluster import export as export_mod

    module = serving_module(generator, cfg.z_dim)
    sig = module.serve.get_concrete_function()
    warm = {contract.DCGAN.inputs[0].key: np.zeros((1, cfg.z_dim), np.float32)}
    return export_mod.save_version(module, {contract.DCGAN.signature: sig}, model_base_path, contract.DCGAN,
                                   warmup=[warm])


def load_generator(cfg: Config, which: str = "best"):
    """G with the weights of the run's best (or last) checkpoint."""
    from tfcluster.train.loop import restore_run

    g = build_generator(cfg)
    restore_run(cfg.out_dir, which, generator=g)
    return g


def export_checkpoint(cfg: Config, which: str = "best") -> str:
    return export(load_generator(cfg, which), cfg, cfg.model_base_path)


def visualize(cfg: Config, which: str = "best") -> list[str]:
    """Visualize mode: an 8x8 grid of random samples and an 8 x 8 z-interpolation strip."""
    g = load_generator(cfg, which)
    rng_seed = cfg.seed + 7
    grid = image_grid(g(fixed_z(cfg, 64, rng_seed), training=False).numpy(), 8, 8, already_uint8=False)
    ends = fixed_z(cfg, 16, rng_seed + 1)
    zs = np.concatenate([interpolate(ends[2 * i], ends[2 * i + 1], 8) for i in range(8)])
    strip = image_grid(g(zs, training=False).numpy(), 8, 8, already_uint8=False)
    paths = [save_png(grid, os.path.join(cfg.samples_path, "visualize_grid.png")),
             save_png(strip, os.path.join(cfg.samples_path, "visualize_interpolation.png"))]
    for p in paths:
        print(p, flush=True)
    return paths
