"""Image helpers shared by DCGAN sampling, `tfcluster predict --out` and reports."""

from __future__ import annotations

import math

import numpy as np


def image_grid(images: np.ndarray, cols: int | None = None, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """uint8 images [N, H, W, C] -> one uint8 grid image [rows*(H+pad)+pad, cols*(W+pad)+pad, C].

    `cols` defaults to ceil(sqrt(N)); empty cells and the `pad`-pixel borders are `pad_value`.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"image_grid expects images [N, H, W, C] with N >= 1, got shape {list(images.shape)}")
    if images.dtype != np.uint8:
        raise ValueError(f"image_grid expects uint8 images, got {images.dtype}")
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def save_image(path: str, image: np.ndarray) -> str:
    """Write a uint8 [H, W, C] (C = 1, 3 or 4) image; the format follows the file name (PNG, JPEG...)."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    Image.fromarray(image).save(path)
    return path


def fit_image(path: str, height: int, width: int, channels: int) -> np.ndarray:
    """An image file as uint8 [height, width, channels] for a model with that fixed input size.

    Scaled to `height` keeping its aspect ratio; a wider result is squeezed to `width`, a
    narrower one is padded on the right with the colour of its own border, so a text
    line keeps its proportions and its background. One-line errors for unreadable files.
    """
    from PIL import Image, UnidentifiedImageError

    from tfcluster.errors import UserError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
    except FileNotFoundError:
        raise UserError(f"image {path} not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    w = max(1, min(width, round(im.width * height / max(1, im.height))))
    a = np.asarray(im.resize((w, height), Image.BILINEAR), dtype=np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if w < width:
        edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).reshape(-1, a.shape[-1])
        pad = np.broadcast_to(np.median(edge, axis=0).astype(np.uint8), (height, width - w, a.shape[-1]))
        a = np.concatenate([a, pad], axis=1)
    return a
