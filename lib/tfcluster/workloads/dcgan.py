"""DCGAN: DCGAN-tensorflow's recipe (the book's chapter 8) trained data-parallel on Ray Train.

This module is the light part (no TensorFlow import): `Config`, the image index, `prepare`,
the offline mode and the contract object. `dcgan_model.py` holds data pipeline -> networks ->
losses and the train step (`Task`) -> evaluation (samples, SWD, MNIST Frechet distance) ->
export and visualize; its names are also reachable here (`dcgan.Task`), imported on first use.

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
import os
from typing import Any, Literal


from tfcluster import config as config_mod
from tfcluster import contract
from tfcluster.config import LoopConfig
from tfcluster.errors import UserError
from tfcluster.tune import spaces
from tfcluster.workloads.base import Workload, model_part

# The model part (`dcgan_model.py`, with TensorFlow) imports this module; this module reaches it one way
# only, lazily by name: `dcgan.Task`, `dcgan.export`, ... import it on first use.
_model = __getattr__ = model_part(__name__, "tfcluster.workloads.dcgan_model")

# ============================================================================ Config


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(LoopConfig):
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
    cache_images: Literal["auto", "memory", "disk", "none"] = "auto"
    """Keep the decoded, cropped, resized images after the first epoch: in memory as uint8 (auto: when they
    fit in a fifth of the available memory), else in a one-time file cache under out_dir/cache; none: decode every epoch."""
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
    from tfcluster import storage

    return images.scan_folder(storage.join(cfg.data_dir, cfg.dataset, cfg.input_fname_pattern))


def prepare(cfg: Config) -> Config:
    """Driver side, once: scan the image folder (or load MNIST), resolve c_dim, train the FID classifier."""
    from tfcluster.data import images

    # Ray Train workers run in their own working directory: hand them absolute local paths.
    cfg = config_mod.absolute_paths(cfg)
    if cfg.is_mnist:
        x, y = images.load_mnist(cfg.data_dir, cfg.dataset, labels=True)
        print(f"# data: {len(x)} MNIST digits from {cfg.data_dir}", flush=True)
        _model("ensure_fid_classifier")(cfg, x, y)
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


# ============================================================================ networks (sizes only)


def generator_plan(height: int, width: int) -> tuple[int, int, int]:
    """(start height, start width, stride-2 layers) of G: 4 layers from s/16, or 2 from s/4 (MNIST's 28 = 7 x 4)."""
    if height % 16 == 0 and width % 16 == 0:
        return height // 16, width // 16, 4
    if height % 4 == 0 and width % 4 == 0 and height >= 4:
        return height // 4, width // 4, 2
    raise ValueError(f"--output_height/--output_width must be divisible by 16 (or be 28 for MNIST), got {height}x{width}")


def _task(cfg: Config, strategy: Any, ctx: Any):
    return _model("Task")(cfg, strategy, ctx)


def _export(cfg: Config, which: str = "best") -> str:
    return _model("export_checkpoint")(cfg, which)


def offline(cfg: Config) -> bool:
    """`--visualize` or `--train false`: write the sample grid and interpolation of a trained run instead of training."""
    if cfg.visualize or not cfg.train:
        _model("visualize")(cfg)
        return True
    return False


def planned_steps(cfg: Config) -> int:
    """Training steps of `cfg`: epochs x steps per epoch over its images."""
    return cfg.epoch * steps_per_epoch(num_images(cfg), cfg.train_size, cfg.batch_size)


def _release_data(cfg: Config) -> dict[str, Any]:
    """--promote: the run's image folder, 256 generated images against 256 real ones."""
    if cfg.is_mnist:
        raise UserError("--promote for MNIST: give `tfcluster release --image_dir` a folder of digit images")
    from tfcluster import storage

    return {"image_dir": storage.join(cfg.data_dir, cfg.dataset), "num_images": 256, "eval_seed": 0}


def _release_swd(served: Any, data: dict[str, Any]) -> float:
    from tfcluster.eval.served import generated_swd

    return generated_swd(served, data)


WORKLOAD = Workload(
    name="dcgan", config=Config, serving=contract.DCGAN, task=_task, export=_export,
    prepare=prepare, offline=offline, metric="eval/swd", mode="min", search_space=spaces.dcgan_space,
    planned_steps=planned_steps, release=contract.ReleaseCheck("swd", "min", _release_swd, _release_data),
    description=__doc__.splitlines()[0],
)

