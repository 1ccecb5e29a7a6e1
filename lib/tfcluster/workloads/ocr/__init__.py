"""Recognize variable-length digit strings in text-line images (the book's OCR chapter: CNN + LSTM + CTC).

    python jobs/train_ocr.py --out_dir runs/ocr --model_base_path models
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train_ocr.py --num_workers 2 --out_dir /tmp/runs/ocr --model_base_path /tmp/models
    tfcluster predict --model ocr --image number.png

Training images are drawn on the fly, as the seed's `genIDCard` does: a random string of
`--min_digits`..`--max_digits` digits, rendered with a random font (every TrueType/OpenType
font found on the machine, plus Pillow's own), size, spacing, position, slant and colours,
then blurred and noised, as a 32x256 grey image. The model is a small CNN, a bidirectional
LSTM (`--num_units` 64) and CTC (greedy or beam decoding). Quality is measured on a fixed
set of `--eval_images` generated images: `eval/sequence_accuracy` (whole string right) and
`eval/char_error_rate` (edit distance per reference digit).

The SavedModel's `serving_default` takes uint8 images [batch, 32, 256, 1] and returns the
digit string and its log-probability; `serving_png` takes encoded PNG/JPEG bytes of any size
(scaled to height 32, padded with the image's own background) and returns the same.

This module has no TensorFlow import (flags, presets and the data generator are light);
the model, its training task and the export are in `ocr/model.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
from typing import Any, Literal

import numpy as np

from tfcluster import contract
from tfcluster.config import LoopConfig
from tfcluster.workloads.base import Workload, model_part

HEIGHT, WIDTH = 32, 256
DIGITS = "0123456789"
BLANK = len(DIGITS)  # the CTC blank is the last class

OCR = contract.ModelSpec(
    name="ocr",
    inputs=(contract.Tensor("image", "uint8", (None, HEIGHT, WIDTH, 1)),),
    outputs=(contract.Tensor("digits", "string", (None,)), contract.Tensor("score", "float32", (None,))),
)
PNG_SIGNATURE = "serving_png"
PNG_INPUT = "image_bytes"  # a `_bytes` key: REST clients send {"b64": ...}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(LoopConfig):
    """OCR settings; the shapes are the seed's (32x256 grey lines, 64-unit LSTM)."""

    out_dir: str = "runs/ocr"
    """Checkpoints, metrics.jsonl, TensorBoard events and config.json."""
    num_train_steps: int = 4000
    """Training steps (global batches)."""
    batch_size: int = 64
    """Global batch (images per step over all workers); must divide by --num_workers."""
    learning_rate: float = 0.001
    """Adam learning rate (peak of the schedule)."""
    decay_scheme: Literal["cosine", "constant"] = "cosine"
    """Learning-rate schedule after a short warmup: cosine decay to 5% of the peak, or constant."""
    num_units: int = 64
    """LSTM units per direction."""
    filters: int = 32
    """Channels of the first convolutions (doubled twice deeper in the CNN)."""
    min_digits: int = 1
    """Shortest digit string drawn."""
    max_digits: int = 18
    """Longest digit string drawn (18: an ID-card number)."""
    fonts: str = ""
    """Comma-separated font files or globs to draw with; empty: every .ttf/.otf under the system font folders, plus Pillow's own."""
    noise: float = 1.0
    """Strength of the distortions (blur, noise, slant, lines, contrast); 0: clean renders."""
    eval_images: int = 1000
    """Images in the fixed evaluation set."""
    eval_seed: int = 20_241_129
    """Seed of the evaluation set (never used for training images)."""
    beam_width: int = 0
    """CTC decoding: 0 greedy, else beam search of this width (evaluation and export)."""
    steps_per_stats: int = 100
    """Print a stats line and append to metrics.jsonl every this many steps."""
    steps_per_external_eval: int = 500
    """Evaluate on the fixed set and checkpoint every this many steps."""

    def __post_init__(self) -> None:
        self.check_run()
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(f"--min_digits {self.min_digits} and --max_digits {self.max_digits}: need 1 <= min <= max")
        if self.max_digits > 30:
            raise ValueError(f"--max_digits {self.max_digits}: at most 30 digits fit a {WIDTH}-pixel line")
        if self.batch_size % self.num_workers:
            raise ValueError(f"--batch_size {self.batch_size} must divide by --num_workers {self.num_workers}")
        if self.num_train_steps < 1 or self.eval_images < 1:
            raise ValueError("--num_train_steps and --eval_images must be at least 1")


# ============================================================================ drawing digit strings

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts")


@functools.cache
def find_fonts(spec: str = "") -> tuple[str | None, ...]:
    """Font files to draw with (None: Pillow's built-in scalable font)."""
    from tfcluster.errors import UserError

    if spec:
        found: list[str] = []
        from tfcluster import storage

        for part in filter(None, (p.strip() for p in spec.split(","))):
            # Local globs, or s3:// / gs:// objects fetched into the node cache.
            matches = storage.glob(part if storage.is_uri(part) else os.path.expanduser(part))
            if not matches:
                raise UserError(f"--fonts: no font file matches {storage.display(part)!r}")
            found += storage.local_copies(matches)
        return tuple(found)
    found = []
    for d in FONT_DIRS:
        for ext in ("ttf", "otf", "TTF", "OTF"):
            found += glob.glob(os.path.join(os.path.expanduser(d), "**", f"*.{ext}"), recursive=True)
    usable = [f for f in sorted(set(found)) if _draws_digits(f)]
    return (*usable, None)


def _draws_digits(path: str) -> bool:
    """Symbol and icon fonts have no digit glyphs: keep fonts whose digits differ from each other."""
    from PIL import ImageFont

    try:
        font = ImageFont.truetype(path, 24)
        shapes = {bytes(font.getmask(d)) for d in "0158"}
    except OSError:
        return False
    return len(shapes) == 4


@functools.lru_cache(maxsize=512)
def _font(path: str | None, size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size) if path is None else ImageFont.truetype(path, size)


def random_digits(rng: np.random.Generator, min_digits: int, max_digits: int) -> str:
    n = int(rng.integers(min_digits, max_digits + 1))
    return "".join(DIGITS[i] for i in rng.integers(0, 10, size=n))


def render(text: str, rng: np.random.Generator, fonts: tuple[str | None, ...], noise: float = 1.0) -> np.ndarray:
    """`text` drawn as a grey text line: uint8 [32, 256]."""
    from PIL import Image, ImageDraw, ImageFilter

    size = int(rng.integers(20, 44))
    font = _font(fonts[int(rng.integers(len(fonts)))], size)
    bg = int(rng.integers(150, 256))
    fg = int(rng.integers(0, max(1, bg - 90)))
    spacing = rng.uniform(-0.08, 0.35) * size
    widths = [font.getlength(ch) for ch in text]
    pad = size // 2
    canvas = Image.new("L", (int(sum(widths) + spacing * (len(text) - 1)) + 2 * pad, int(size * 1.6) + 2 * pad), bg)
    draw = ImageDraw.Draw(canvas)
    x, jitter = float(pad), max(1, size // 16) * noise
    for ch, w in zip(text, widths):
        draw.text((x, pad + rng.uniform(-jitter, jitter)), ch, font=font, fill=fg)
        x += w + spacing
    if noise and rng.random() < 0.6:
        shear = rng.uniform(-0.25, 0.25) * noise  # italics either way
        canvas = canvas.transform(canvas.size, Image.AFFINE, (1, shear, -shear * canvas.height / 2, 0, 1, 0),
                                  resample=Image.BILINEAR, fillcolor=bg)
    if noise and rng.random() < 0.5:
        canvas = canvas.rotate(rng.uniform(-3, 3) * noise, resample=Image.BILINEAR, expand=True, fillcolor=bg)
    ink = np.asarray(canvas) != bg
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    if rows.size:
        m = int(rng.integers(0, 4))
        canvas = canvas.crop((max(0, cols[0] - m), max(0, rows[0] - m), cols[-1] + 1 + m, rows[-1] + 1 + m))
    # The line's height in the 32-pixel frame, its width following (squeezed when too long).
    h = int(rng.integers(14, HEIGHT + 1)) if noise else 24
    w = int(round(canvas.width * h / max(1, canvas.height) * (rng.uniform(0.8, 1.25) if noise else 1.0)))
    w = max(1, min(WIDTH, w))
    line = canvas.resize((w, h), Image.BILINEAR)
    frame = Image.new("L", (WIDTH, HEIGHT), bg)
    frame.paste(line, (int(rng.integers(0, WIDTH - w + 1)), int(rng.integers(0, HEIGHT - h + 1))))
    if noise:
        draw = ImageDraw.Draw(frame)
        for _ in range(int(rng.poisson(0.4 * noise))):  # ruling lines, table borders, stray strokes
            y0, y1 = rng.integers(0, HEIGHT, size=2)
            draw.line((0, int(y0), WIDTH, int(y1)), fill=int(rng.integers(0, 256)), width=1)
        if rng.random() < 0.3 * noise:
            frame = frame.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    img = np.asarray(frame, dtype=np.float32)
    if noise:
        img = img + rng.normal(0.0, rng.uniform(0, 14) * noise, img.shape)  # sensor noise
        if rng.random() < 0.3 * noise:  # uneven lighting
            img = img * np.linspace(rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0), WIDTH)[None, :]
    img = np.clip(img, 0, 255)
    if noise and rng.random() < 0.2:  # light digits on a dark background
        img = 255.0 - img
    return img.astype(np.uint8)


def samples(seed: int, min_digits: int, max_digits: int, fonts: tuple[str | None, ...], noise: float = 1.0):
    """An endless stream of (image uint8 [32, 256, 1], label int32 [len]) from `seed`."""
    rng = np.random.default_rng(seed)
    while True:
        text = random_digits(rng, min_digits, max_digits)
        yield render(text, rng, fonts, noise)[..., None], np.array([DIGITS.index(c) for c in text], np.int32)


def eval_set(cfg: Config) -> tuple[np.ndarray, list[str]]:
    """The fixed evaluation set: (images uint8 [n, 32, 256, 1], their digit strings)."""
    stream = samples(cfg.eval_seed, cfg.min_digits, cfg.max_digits, find_fonts(cfg.fonts), cfg.noise)
    pairs = [next(stream) for _ in range(cfg.eval_images)]
    return np.stack([p[0] for p in pairs]), ["".join(DIGITS[i] for i in p[1]) for p in pairs]


def write_samples(directory: str, n: int = 16, seed: int = 0, cfg: Config | None = None) -> list[tuple[str, str]]:
    """`n` generated PNGs (file names are their digits) for trying `tfcluster predict --image`."""
    from PIL import Image

    cfg = cfg or Config()
    os.makedirs(directory, exist_ok=True)
    stream = samples(seed, cfg.min_digits, cfg.max_digits, find_fonts(cfg.fonts), cfg.noise)
    out = []
    for i in range(n):
        img, label = next(stream)
        text = "".join(DIGITS[j] for j in label)
        path = os.path.join(directory, f"{i:03d}_{text}.png")
        Image.fromarray(img[..., 0]).save(path)
        out.append((path, text))
    return out


def prepare(cfg: Config) -> Config:
    """Fail fast (one line) when no font can be found, before workers start."""
    from tfcluster.errors import UserError

    if not find_fonts(cfg.fonts):
        raise UserError("no font to draw digits with; pass --fonts /path/to/font.ttf")
    return cfg


# ============================================================================ the contract object

# The model part (`ocr/model.py`, with TensorFlow) imports this module; this module reaches it one way
# only, lazily by name.
_model = model_part(__name__, "tfcluster.workloads.ocr.model")


def _task(cfg: Config, strategy: Any, ctx: Any):
    return _model("Task")(cfg, strategy, ctx)


def _export(cfg: Config, which: str = "best") -> str:
    return _model("export_checkpoint")(cfg, which)


def search_space(base: dict[str, Any]) -> dict[str, Any]:
    """The seed's knobs: learning rate, LSTM width, CNN width, batch size."""
    return {
        "learning_rate": {"loguniform": [3e-4, 3e-3]},
        "num_units": {"choice": [32, 64, 128]},
        "filters": {"choice": [16, 32, 48]},
        "batch_size": {"choice": [32, 64, 128]},
    }


def _release_data(cfg: Config) -> dict[str, Any]:
    from tfcluster.errors import UserError

    raise UserError("--promote for ocr: run `tfcluster release --image_dir` with a folder of labelled images")


def _release_accuracy(served: Any, data: dict[str, Any]) -> float:
    from tfcluster.eval.served import sequence_accuracy

    return sequence_accuracy(served, data)


WORKLOAD = Workload(
    name="ocr", config=Config, serving=OCR, task=_task, export=_export, prepare=prepare,
    release=contract.ReleaseCheck("sequence_accuracy", "max", _release_accuracy, _release_data),
    metric="eval/sequence_accuracy", mode="max", search_space=search_space, description=__doc__.splitlines()[0],
)
