"""DCGAN: DCGAN-tensorflow's recipe (the book's chapter 8) trained data-parallel on Ray Train.

Read top to bottom: `Config` -> data -> networks -> losses and the train step (`Task`)
-> evaluation (samples, SWD, MNIST Frechet distance) -> export and visualize.

    python jobs/train_dcgan.py --dataset anime_faces --data_dir data --input_height 96 \
        --output_height 48 --crop --epoch 25 --num_workers 2 --out_dir runs/anime
    python jobs/train_dcgan.py --hparams_path lib/tfcluster/presets/dcgan_mnist.json --data_dir data
    python jobs/train_dcgan.py --out_dir runs/anime --visualize        # grid + z-interpolation

Networks (Radford et al., 2016; DCGAN-tensorflow `model.py`): G maps z through a linear
layer to (s/16)^2 x gf_dim*8 (s/4 and gf_dim*2 for 28x28 MNIST), then batch norm/ReLU
and 5x5 stride-2 transposed convs halving the channels, tanh out. D: 5x5 stride-2 convs
df_dim x 1, 2, 4, 8 with LeakyReLU 0.2 and batch norm after the first, then one logit.
Weights N(0, 0.02); Adam(2e-4, beta1 0.5) for both; non-saturating generator loss.
Each step updates D once, then G `g_steps_per_d` times on the same z (DCGAN-tensorflow
runs G twice "to make sure that d_loss does not go to zero").
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Literal

import numpy as np

from tfcluster import config as config_mod
from tfcluster import contract
from tfcluster.config import RunConfig
from tfcluster.errors import UserError
from tfcluster.tune import spaces
from tfcluster.workloads.base import Workload

# ============================================================================ Config


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(RunConfig):
    """DCGAN settings; defaults are DCGAN-tensorflow's `main.py` flags unless noted."""

    out_dir: str = "runs/dcgan"
    """Checkpoints, metrics.jsonl, TensorBoard events, samples (DCGAN-tensorflow: --checkpoint_dir checkpoint)."""
    checkpoint_dir: str = ""
    """DCGAN-tensorflow's name for --out_dir; when given it replaces --out_dir."""
    dataset: str = "celebA"
    """`mnist`, or the name of an image folder under --data_dir (celebA, anime_faces, ...)."""
    data_dir: str = "./data"
    """Root directory of the datasets."""
    input_fname_pattern: str = "*.jpg"
    """Glob of the images inside the dataset folder."""
    input_height: int = 108
    """Height of the center crop taken from each image when --crop (pixels)."""
    input_width: int = 0
    """Width of the center crop (pixels); 0: the same as --input_height."""
    output_height: int = 64
    """Height of the generated images (pixels); divisible by 16, or 28 for MNIST."""
    output_width: int = 0
    """Width of the generated images (pixels); 0: the same as --output_height."""
    crop: bool = False
    """Center-crop input_height x input_width, then resize to the output size; without it, resize the whole image."""
    c_dim: int = 0
    """Image channels; 0: from the data (the first image, as DCGAN-tensorflow; 1 for MNIST)."""
    epoch: int = 25
    """Passes over min(images, train_size) images."""
    train_size: int = 0
    """Images per epoch (DCGAN-tensorflow: np.inf); 0: all."""
    batch_size: int = 64
    """Global batch (images per step over all workers); must divide by --num_workers."""
    learning_rate: float = 0.0002
    """Adam learning rate for D and G (DCGAN paper)."""
    beta1: float = 0.5
    """Adam beta1 (DCGAN paper)."""
    z_dim: int = 100
    """Dimension of the latent z."""
    z_dist: Literal["uniform", "normal"] = "uniform"
    """Prior of z: uniform(-1, 1) (DCGAN-tensorflow, the CelebA tutorial) or N(0, 1)."""
    gf_dim: int = 64
    """Generator filters in the last transposed conv (x8, x4, x2 before it)."""
    df_dim: int = 64
    """Discriminator filters in the first conv (x2, x4, x8 after it)."""
    g_steps_per_d: int = 2
    """Generator updates per discriminator update (2: DCGAN-tensorflow; 1: the CelebA tutorial)."""
    sample_every: int = 200
    """Write an 8x8 sample grid, evaluate SWD and checkpoint every this many steps (DCGAN-tensorflow --sample_freq)."""
    sample_dir: str = ""
    """Where sample grids go; empty: <out_dir>/samples."""
    train: bool = True
    """Train (true) or only visualize a trained run (false, as DCGAN-tensorflow's --train false)."""
    visualize: bool = False
    """Write a sample grid and a z-interpolation strip from the run in --out_dir, then exit (no training)."""
    swd_images: int = 1024
    """Real and generated images compared by the sliced Wasserstein distance at each evaluation."""
    fid_images: int = 2000
    """Generated digits for eval/fid_mnist (MNIST only)."""
    fid_cache_dir: str = ""
    """Where the MNIST classifier for eval/fid_mnist is cached; empty: <out_dir>/fid_classifier."""
    fid_epochs: int = 2
    """Epochs to train that classifier (once)."""
    jit: bool = False
    """XLA-compile the train step; off because it made this step 5x slower on CPU (DESIGN.md)."""
    steps_per_stats: int = 10
    """Print a stats line and append to metrics.jsonl every this many steps."""

    def __post_init__(self) -> None:
        fix = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen: resolve derived values once)
        if self.checkpoint_dir:
            fix("out_dir", self.checkpoint_dir)
            fix("checkpoint_dir", "")
        fix("input_width", self.input_width or self.input_height)
        fix("output_width", self.output_width or self.output_height)
        self.check_run()
        generator_plan(self.output_height, self.output_width)  # raises ValueError when not buildable
        for name in ("epoch", "batch_size", "z_dim", "gf_dim", "df_dim", "g_steps_per_d", "sample_every",
                     "input_height", "swd_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size % self.num_workers:
            raise ValueError(f"--batch_size {self.batch_size} must divide by --num_workers {self.num_workers}")
        if self.c_dim not in (0, 1, 3):
            raise ValueError(f"--c_dim must be 0 (from the data), 1 or 3, got {self.c_dim}")

    @property
    def eval_every(self) -> int:
        return self.steps_per_external_eval or self.sample_every

    @property
    def is_mnist(self) -> bool:
        return self.dataset.lower() == "mnist"

    @property
    def samples_path(self) -> str:
        return self.sample_dir or os.path.join(self.out_dir, "samples")

    @property
    def index_path(self) -> str:
        return os.path.join(self.out_dir, "data_index.txt")

    @property
    def fid_dir(self) -> str:
        return self.fid_cache_dir or os.path.join(self.out_dir, "fid_classifier")


# ============================================================================ data


def _mnist_digits(cfg: Config):
    from tfcluster.data import images

    return images.load_mnist(cfg.data_dir, cfg.dataset)


def folder_index(cfg: Config):
    """The scanned list of readable images (out_dir/data_index.txt, written by `prepare`)."""
    import tensorflow as tf

    from tfcluster.data import images

    if tf.io.gfile.exists(cfg.index_path):
        return images.read_index(cfg.index_path)
    return images.scan_folder(os.path.join(cfg.data_dir, cfg.dataset, cfg.input_fname_pattern))


def prepare(cfg: Config) -> Config:
    """Driver side, once: scan the image folder (or load MNIST), resolve c_dim, train the FID classifier."""
    from tfcluster.data import images

    # Ray Train workers run in their own working directory: hand them absolute local paths.
    cfg = config_mod.absolute_paths(cfg)
    if cfg.is_mnist:
        x, y = images.load_mnist(cfg.data_dir, cfg.dataset, labels=True)
        print(f"# data: {len(x)} MNIST digits from {cfg.data_dir}", flush=True)
        ensure_fid_classifier(cfg, x, y)
        return dataclasses.replace(cfg, c_dim=1)
    index = folder_index(cfg)
    images.write_index(index, cfg.index_path)
    print(f"# data: {index.size} images ({index.skipped} unreadable, skipped) in "
          f"{os.path.join(cfg.data_dir, cfg.dataset)}; index {cfg.index_path}", flush=True)
    return dataclasses.replace(cfg, c_dim=cfg.c_dim or index.channels)


def num_images(cfg: Config) -> int:
    return len(_mnist_digits(cfg)) if cfg.is_mnist else folder_index(cfg).size


def steps_per_epoch(num_images: int, train_size: int, batch_size: int) -> int:
    """DCGAN-tensorflow: batch_idxs = min(len(data), train_size) // batch_size."""
    n = min(num_images, train_size) if train_size > 0 else num_images
    return n // batch_size


def make_data(cfg: Config, shard: tuple[int, int] = (1, 0), *, shuffle: bool = True, seed: int | None = None):
    """Unbatched float32 images [H, W, c_dim] in [-1, 1]: shard `shard[1]` of `shard[0]`, shuffled and repeated."""
    from tfcluster.data import images

    seed = cfg.seed if seed is None else seed
    num_shards, index = shard
    if cfg.is_mnist:
        return images.array_dataset(_mnist_digits(cfg), output_height=cfg.output_height, output_width=cfg.output_width,
                                    shuffle=shuffle, seed=seed, num_shards=num_shards, shard=index)
    return images.folder_dataset(
        folder_index(cfg).files, channels=cfg.c_dim or 3, input_height=cfg.input_height, input_width=cfg.input_width,
        output_height=cfg.output_height, output_width=cfg.output_width, crop=cfg.crop, shuffle=shuffle, seed=seed,
        num_shards=num_shards, shard=index)


def sample_z(shape, dist: str, seed):
    """z from the prior, stateless: the same (seed, step) gives the same z on any worker count."""
    import tensorflow as tf

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


def generator_plan(height: int, width: int) -> tuple[int, int, int]:
    """(start height, start width, stride-2 layers) of G: 4 layers from s/16, or 2 from s/4 (MNIST's 28 = 7 x 4)."""
    if height % 16 == 0 and width % 16 == 0:
        return height // 16, width // 16, 4
    if height % 4 == 0 and width % 4 == 0 and height >= 4:
        return height // 4, width // 4, 2
    raise ValueError(f"--output_height/--output_width must be divisible by 16 (or be 28 for MNIST), got {height}x{width}")


def _init():
    import keras

    return keras.initializers.RandomNormal(0.0, 0.02)


def _bn():
    from keras import layers

    # DCGAN-tensorflow's batch_norm: decay 0.9, epsilon 1e-5.
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5)


def build_generator(cfg: Config, c_dim: int | None = None):
    import keras
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
    return keras.Model(z, layers.Activation("tanh")(x), name="generator")


def build_discriminator(cfg: Config, c_dim: int | None = None):
    import keras
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
    return keras.Model(image, layers.Dense(1, kernel_initializer=_init(), name="d_h4_lin")(x), name="discriminator")


def build(cfg: Config):
    """(generator, discriminator, g_optimizer, d_optimizer); optimizers built so checkpoints restore eagerly."""
    import keras

    g, d = build_generator(cfg), build_discriminator(cfg)
    g_opt = keras.optimizers.Adam(cfg.learning_rate, beta_1=cfg.beta1, name="g_adam")
    d_opt = keras.optimizers.Adam(cfg.learning_rate, beta_1=cfg.beta1, name="d_adam")
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
    import tensorflow as tf

    real = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones_like(real_logits), logits=real_logits)
    fake = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.zeros_like(fake_logits), logits=fake_logits)
    return tf.reshape(real + fake, [-1])


def g_losses(fake_logits):
    """Per-example non-saturating G loss: -log D(G(z)) (Goodfellow et al., 2014, sec. 3)."""
    import tensorflow as tf

    return tf.reshape(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones_like(fake_logits), logits=fake_logits), [-1])


def to_uint8(images):
    """tanh output [-1, 1] -> uint8 [0, 255] (round to nearest)."""
    import tensorflow as tf

    return tf.cast(tf.round(tf.clip_by_value((images + 1.0) * 127.5, 0.0, 255.0)), tf.uint8)


class Task:
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
        self._step = self._train_step
        if cfg.jit:
            import tensorflow as tf

            self._step = tf.function(self._train_step, jit_compile=True)
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
        import tensorflow as tf

        cfg = self.cfg
        per_replica = input_context.get_per_replica_batch_size(cfg.batch_size)
        pid = input_context.input_pipeline_id
        ds = make_data(cfg, (input_context.num_input_pipelines, pid), seed=cfg.seed + pid)
        ds = ds.batch(per_replica, drop_remainder=True).enumerate()
        ds = ds.map(lambda i, x: (x, sample_z([per_replica, cfg.z_dim], cfg.z_dist, tf.stack([cfg.seed + pid, i]))))
        return ds.prefetch(tf.data.AUTOTUNE)

    def replica_step(self, batch) -> dict[str, Any]:
        return self._step(*batch)

    def _train_step(self, images, z):
        import tensorflow as tf

        g, d = self.generator, self.discriminator
        scale = 1.0 / self.cfg.batch_size  # per-example sums / global batch: replicas' gradients add up to the mean
        fake = g(z, training=True)
        with tf.GradientTape() as tape:
            real_logits = d(images, training=True)
            fake_logits = d(fake, training=True)
            d_loss = d_losses(real_logits, fake_logits)
            loss = tf.reduce_sum(d_loss) * scale
        self.d_opt.apply_gradients(zip(tape.gradient(loss, d.trainable_variables), d.trainable_variables))
        for _ in range(self.cfg.g_steps_per_d):
            with tf.GradientTape() as tape:
                g_loss = g_losses(d(g(z, training=True), training=True))
                loss = tf.reduce_sum(g_loss) * scale
            self.g_opt.apply_gradients(zip(tape.gradient(loss, g.trainable_variables), g.trainable_variables))
        return {
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
        }

    # ------------------------------------------------------------------------ evaluate (chief only)

    def generate(self, z: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """G(z) in inference mode (batch-norm moving averages), float32 [-1, 1]."""
        import tensorflow as tf

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
    import tensorflow as tf

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
    ds = make_data(cfg, shuffle=True, seed=cfg.seed + 12345)
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
    import tensorflow as tf

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
    import tensorflow as tf

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


def offline(cfg: Config) -> bool:
    """`--visualize` or `--train false`: write the sample grid and interpolation of a trained run instead of training."""
    if cfg.visualize or not cfg.train:
        visualize(cfg)
        return True
    return False


def planned_steps(cfg: Config) -> int:
    """Training steps of `cfg`: epochs x steps per epoch over its images."""
    return cfg.epoch * steps_per_epoch(num_images(cfg), cfg.train_size, cfg.batch_size)


WORKLOAD = Workload(
    name="dcgan", config=Config, serving=contract.DCGAN, task=Task, export=export_checkpoint,
    prepare=prepare, offline=offline, metric="eval/swd", mode="min", search_space=spaces.dcgan_space,
    planned_steps=planned_steps, description=__doc__.splitlines()[0],
)
