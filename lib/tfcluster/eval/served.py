"""Metrics of one served model version, measured through the serving API: what `tfcluster release`
compares between `canary` and `stable` (each workload names its function in `contract.ReleaseCheck`).

`served(inputs, signature=None)` calls the version (by label, over gRPC) and returns its outputs;
`data` holds the evaluation set the release command was given (`source_file`, `image_dir`, ...).
Files may be local or in a bucket (s3://, gs://).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from tfcluster.errors import UserError

Served = Callable[..., dict[str, np.ndarray]]


def _need(data: dict[str, Any], key: str, workload: str, what: str) -> str:
    value = data.get(key)
    if not value:
        raise UserError(f"{workload}'s release check needs --{key} ({what})")
    return value


def translation_bleu(served: Served, data: dict[str, Any], batch: int = 64) -> float:
    """sacrebleu's corpus BLEU (13a) of the translations of `source_file` against `reference_file`;
    lowercased on both sides when the model writes lowercase (a word-level, lowercasing model)."""
    import sacrebleu

    from tfcluster.data import text
    from tfcluster.storage import require_file

    src = list(text.read_lines(require_file(_need(data, "source_file", "nmt", "source sentences"), "--source_file")))
    ref = list(text.read_lines(require_file(_need(data, "reference_file", "nmt", "reference translations"),
                                            "--reference_file")))
    if len(src) != len(ref) or not src:
        raise UserError(f"--source_file has {len(src)} lines and --reference_file {len(ref)}; they must align, non-empty")
    hyps: list[str] = []
    for i in range(0, len(src), batch):
        out = served({"source": np.array(src[i : i + batch], dtype=object)})
        hyps += [t.decode("utf-8") for t in out["translation"]]
    lowercase = all(h == h.lower() for h in hyps)
    return float(sacrebleu.corpus_bleu(hyps, [ref], lowercase=lowercase).score)


def _image_files(folder: str) -> list[str]:
    from tfcluster import storage

    files = [f for ext in ("png", "jpg", "jpeg", "PNG", "JPG") for f in storage.glob(storage.join(folder, f"*.{ext}"))]
    if not files:
        raise UserError(f"no .png/.jpg images in --image_dir {storage.display(folder)}")
    return sorted(files)


def generated_swd(served: Served, data: dict[str, Any], batch: int = 64) -> float:
    """SWD (x 1e3, lower is better) of `num_images` generated images (z from a fixed seed, the uniform
    prior) against as many real images of `image_dir`, center-cropped and resized to the generated size."""
    from PIL import Image

    from tfcluster import storage
    from tfcluster.eval.swd import swd

    folder = _need(data, "image_dir", "dcgan", "real images to compare with")
    n = int(data.get("num_images") or 256)
    z_dim = served.spec.inputs[0].shape[-1] if served.spec is not None else None
    if not z_dim:
        raise UserError("the served dcgan model does not say its z size (input z: [batch, z_dim])")
    rng = np.random.default_rng(int(data.get("eval_seed") or 0))
    z = rng.uniform(-1.0, 1.0, (n, int(z_dim))).astype(np.float32)
    fake = np.concatenate([served({"z": z[i : i + batch]})["images"] for i in range(0, n, batch)])
    h, w, c = fake.shape[1:]
    real = []
    for path in storage.local_copies(_image_files(folder)[:n]):
        img = Image.open(path).convert("L" if c == 1 else "RGB")
        side = min(img.size)
        left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((w, h), Image.BILINEAR)
        real.append(np.asarray(img, np.uint8).reshape(h, w, c))
    m = min(len(real), len(fake))
    return float(swd(np.stack(real[:m]), fake[:m])["swd"])


def sequence_accuracy(served: Served, data: dict[str, Any], batch: int = 64) -> float:
    """The fraction of `image_dir`'s images whose digit string is read exactly; each image's label is its
    file name up to the first `_` or `.` (`0451_3.png` reads 0451), through the `serving_png` signature."""
    from tfcluster import storage

    files = _image_files(_need(data, "image_dir", "ocr", "labelled images"))
    labels = [os.path.basename(f.partition("?")[0]).split(".")[0].split("_")[0] for f in files]
    right = 0
    for i in range(0, len(files), batch):
        blobs = [open(p, "rb").read() for p in storage.local_copies(files[i : i + batch])]
        out = served({"image_bytes": np.array(blobs, dtype=object)}, signature="serving_png")
        right += sum(d.decode() == lab for d, lab in zip(out["digits"], labels[i : i + batch]))
    return right / len(files)
