"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al., 2018, sec. 5).

The recipe of progressive_growing_of_gans' `metrics/sliced_wasserstein.py`:
  1. a Laplacian pyramid of each image (5x5 binomial filter, mirror borders), from full
     resolution down to 16x16 (the last level is the 16x16 Gaussian level);
  2. from every level of every image, 128 random 7x7 neighbourhoods -> descriptors;
  3. each set's descriptors normalized per colour channel (its own mean and std);
  4. per level, SWD = the mean over 4 x 128 random unit directions of the 1-D
     Wasserstein-1 distance between the sorted projections of the two sets.
Reported x 1e3 as in the paper; `swd` averages the levels. Lower is better; two samples
of one distribution give a small positive value that shrinks with more images.

Plain numpy: pure functions of arrays, no network, no download.
"""

from __future__ import annotations

import numpy as np

NHOOD_SIZE = 7
NHOOD_PER_IMAGE = 128
DIR_REPEATS = 4
DIRS_PER_REPEAT = 128
MIN_RES = 16

_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0


def _filter_axis(x: np.ndarray, axis: int) -> np.ndarray:
    """The 5-tap binomial filter along `axis` with mirror (reflect) borders."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (2, 2)
    xp = np.pad(x, pad, mode="reflect")
    n = x.shape[axis]
    out = np.zeros_like(x)
    for k, w in enumerate(_BINOMIAL):
        out += w * np.take(xp, np.arange(k, k + n), axis=axis)
    return out


def blur(x: np.ndarray) -> np.ndarray:
    """Gaussian (binomial 5x5) blur of images [N, H, W, C]."""
    return _filter_axis(_filter_axis(x, 1), 2)


def downsample(x: np.ndarray) -> np.ndarray:
    return blur(x)[:, ::2, ::2, :]


def upsample(x: np.ndarray) -> np.ndarray:
    """Zero-insertion x2 then the blur x4 (keeps the mean), as pyr_up in the reference."""
    n, h, w, c = x.shape
    up = np.zeros((n, 2 * h, 2 * w, c), dtype=x.dtype)
    up[:, ::2, ::2, :] = x * 4.0
    return blur(up)


def laplacian_pyramid(x: np.ndarray, min_res: int = MIN_RES) -> list[np.ndarray]:
    """Levels [full, full/2, ..., min_res]: band-pass images, the last one the low-pass residual."""
    x = np.asarray(x, dtype=np.float32)
    levels = []
    while x.shape[1] > min_res and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
        small = downsample(x)
        levels.append(x - upsample(small))
        x = small
    levels.append(x)
    return levels


def patch_descriptors(level: np.ndarray, rng: np.random.Generator, nhood_per_image: int = NHOOD_PER_IMAGE,
                      nhood_size: int = NHOOD_SIZE) -> np.ndarray:
    """Random `nhood_size`^2 neighbourhoods of every image: [N * nhood_per_image, size*size*C]."""
    n, h, w, c = level.shape
    s = min(nhood_size, h, w)
    ys = rng.integers(0, h - s + 1, size=(n, nhood_per_image))
    xs = rng.integers(0, w - s + 1, size=(n, nhood_per_image))
    dy, dx = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    img = np.arange(n)[:, None, None, None]
    rows = ys[:, :, None, None] + dy  # [n, k, s, s]
    cols = xs[:, :, None, None] + dx
    patches = level[img, rows, cols]  # [n, k, s, s, c]
    return patches.reshape(n * nhood_per_image, s * s * c)


def normalize_descriptors(desc: np.ndarray, channels: int) -> np.ndarray:
    """Zero mean, unit std per colour channel over the whole set (the reference's finalize_descriptors)."""
    d = desc.reshape(desc.shape[0], -1, channels)
    mean = d.mean(axis=(0, 1), keepdims=True)
    std = d.std(axis=(0, 1), keepdims=True) + 1e-8
    return ((d - mean) / std).reshape(desc.shape)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, dir_repeats: int = DIR_REPEATS,
                       dirs_per_repeat: int = DIRS_PER_REPEAT) -> float:
    """Mean 1-D Wasserstein-1 distance of two equal-size point sets [M, D] along random unit directions."""
    if a.shape != b.shape:
        raise ValueError(f"descriptor sets differ in shape: {a.shape} vs {b.shape}")
    results = []
    for _ in range(dir_repeats):
        dirs = rng.standard_normal((a.shape[1], dirs_per_repeat)).astype(np.float32)
        dirs /= np.sqrt(np.sum(dirs * dirs, axis=0, keepdims=True))
        pa = np.sort(a @ dirs, axis=0)
        pb = np.sort(b @ dirs, axis=0)
        results.append(float(np.mean(np.abs(pa - pb))))
    return float(np.mean(results))


def descriptors(images: np.ndarray, seed: int = 0, nhood_per_image: int = NHOOD_PER_IMAGE,
                min_res: int = MIN_RES) -> list[np.ndarray]:
    """Normalized patch descriptors of every pyramid level of images [N, H, W, C] (any range)."""
    rng = np.random.default_rng(seed)
    c = images.shape[-1]
    return [normalize_descriptors(patch_descriptors(lvl, rng, nhood_per_image), c)
            for lvl in laplacian_pyramid(images, min_res)]


def swd(real, fake, seed: int = 0, nhood_per_image: int = NHOOD_PER_IMAGE, min_res: int = MIN_RES) -> dict[str, float]:
    """SWD x 1e3 per pyramid level (`swd_<resolution>`) and their mean (`swd`) between two image sets.

    `real` may be given as precomputed `descriptors(...)` (a list) so a fixed real set is
    described once per run.
    """
    dr = real if isinstance(real, list) else descriptors(np.asarray(real), seed, nhood_per_image, min_res)
    df = descriptors(np.asarray(fake), seed + 1, nhood_per_image, min_res)
    if len(dr) != len(df):
        raise ValueError("real and fake images have different resolutions")
    rng = np.random.default_rng(seed + 2)
    res = np.asarray(fake).shape[1]
    out = {}
    for i, (lr, lf) in enumerate(zip(dr, df)):
        m = min(len(lr), len(lf))
        out[f"swd_{res >> i}"] = 1e3 * sliced_wasserstein(lr[:m], lf[:m], rng)
    out["swd"] = float(np.mean(list(out.values())))
    return out
