"""Image data for the GAN workloads: image folders and MNIST, as DCGAN-tensorflow reads them.

* An image folder (`<data_dir>/<dataset>/<input_fname_pattern>`) is scanned once
  (`scan_folder`): every file is decoded by tf.data in parallel, unreadable ones are
  skipped and counted, and the readable ones are written to an index file so every
  worker reads the same list. An empty folder is a one-line `UserError`.
* Each image goes through the reference's `transform`: center-crop `input_height x
  input_width` (the offsets of `center_crop_offsets`) then resize to the output size
  when `crop`, else resize the whole image; then scale to [-1, 1].
* MNIST comes from an `.npz` in `keras.datasets.mnist` layout (`x_train`, `x_test`) or
  from the four idx files (optionally `.gz`); like DCGAN-tensorflow's `load_mnist`,
  train and test images are used together (70,000 digits).
* `image_dataset` returns one input pipeline's shard (`tf.distribute.InputContext`):
  shuffled, repeated, batched per replica with a static shape, prefetched.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass

import numpy as np

from tfcluster.errors import UserError

IDX_IMAGES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
IDX_LABELS = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")


# ---------------------------------------------------------------------------- crop arithmetic


def center_crop_offsets(height: int, width: int, crop_h: int, crop_w: int | None = None) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of DCGAN-tensorflow's `center_crop`.

    The reference computes `j = int(round((h - crop_h) / 2.))` and the same for the
    width; Python 3 rounds halves to even, as `tf.round` does, so an odd margin puts the
    extra pixel on the side that makes the offset even. A crop larger than the image is
    clipped to the image (the reference would slice a smaller array silently).
    """
    crop_w = crop_h if not crop_w else crop_w
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return top, left, crop_h, crop_w


def tf_center_crop_offsets(height, width, crop_h: int, crop_w: int):
    """`center_crop_offsets` on (dynamic) tensor sizes, for the tf.data pipeline."""
    import tensorflow as tf

    ch = tf.minimum(crop_h, height)
    cw = tf.minimum(crop_w, width)
    top = tf.cast(tf.round(tf.cast(height - ch, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(width - cw, tf.float32) / 2.0), tf.int32)
    return top, left, ch, cw


def to_unit_range(images):
    """uint8 [0, 255] -> float32 [-1, 1] (the reference's `image / 127.5 - 1`)."""
    import tensorflow as tf

    return tf.cast(images, tf.float32) / 127.5 - 1.0


def transform(image, *, input_height: int, input_width: int, output_height: int, output_width: int, crop: bool):
    """The reference's `transform` on one decoded uint8 image [H, W, C] -> float32 [oh, ow, C] in [-1, 1]."""
    import tensorflow as tf

    if crop:
        shape = tf.shape(image)
        top, left, ch, cw = tf_center_crop_offsets(shape[0], shape[1], input_height, input_width)
        image = tf.image.crop_to_bounding_box(image, top, left, ch, cw)
    image = tf.image.resize(image, [output_height, output_width], method="bilinear", antialias=True)
    return tf.clip_by_value(image / 127.5 - 1.0, -1.0, 1.0)


# ---------------------------------------------------------------------------- image folders


@dataclass(frozen=True)
class FolderIndex:
    """The readable files of an image folder, their channel count and how many were skipped."""

    files: tuple[str, ...]
    channels: int
    skipped: int

    @property
    def size(self) -> int:
        return len(self.files)


def _decode(contents, channels: int = 0):
    import tensorflow as tf

    return tf.io.decode_image(contents, channels=channels, expand_animations=False)


def scan_folder(pattern: str) -> FolderIndex:
    """Decode every file matching `pattern` once; unreadable images are skipped and counted.

    In a bucket (s3://, gs://) the objects are listed and only the first is fetched (for the channel
    count): each worker fetches its own shard into the node cache as its pipeline reaches it, and an
    unreadable object is skipped there."""
    import tensorflow as tf

    from tfcluster import storage

    files = storage.glob(pattern)
    if not files:
        raise UserError(f"no images match {storage.display(pattern)}; check --data_dir, --dataset and --input_fname_pattern")
    if storage.is_uri(pattern):
        for f in files[:16]:
            try:
                c = int(_decode(tf.io.read_file(storage.local_copy(f))).shape[-1])
            except tf.errors.OpError:
                continue
            return FolderIndex(files=tuple(files), channels=1 if c == 1 else 3, skipped=0)
        raise UserError(f"none of the first {min(16, len(files))} objects matching {storage.display(pattern)} is a readable image")

    def probe(path):
        img = _decode(tf.io.read_file(path))
        return path, tf.shape(img)[-1]

    ds = tf.data.Dataset.from_tensor_slices(files).map(probe, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors()
    good, channels = [], []
    for path, c in ds.batch(1024).as_numpy_iterator():
        good.extend(p.decode() for p in path)
        channels.extend(int(x) for x in c)
    if not good:
        raise UserError(f"none of the {len(files)} files matching {pattern} is a readable image")
    # DCGAN-tensorflow takes c_dim from the first image; grey and RGBA inputs become 1 and 3.
    c = channels[0]
    return FolderIndex(files=tuple(good), channels=1 if c == 1 else 3, skipped=len(files) - len(good))


def write_index(index: FolderIndex, path: str) -> None:
    """Write the index (one file per line; a header line with channels and skipped) atomically."""
    import tensorflow as tf

    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(f"# channels={index.channels} skipped={index.skipped}\n")
        f.write("".join(p + "\n" for p in index.files))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def read_index(path: str) -> FolderIndex:
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        lines = f.read().splitlines()
    head = dict(kv.split("=") for kv in lines[0].lstrip("# ").split())
    return FolderIndex(files=tuple(lines[1:]), channels=int(head["channels"]), skipped=int(head["skipped"]))


def to_uint8_image(x):
    """float32 [-1, 1] -> uint8 [0, 255], rounded (what the cache stores; `to_unit_range` inverts it)."""
    import tensorflow as tf

    return tf.cast(tf.round((tf.clip_by_value(x, -1.0, 1.0) + 1.0) * 127.5), tf.uint8)


def folder_dataset(files, *, channels: int, input_height: int, input_width: int, output_height: int,
                   output_width: int, crop: bool, shuffle: bool = True, seed: int = 0, num_shards: int = 1,
                   shard: int = 0, cache: str | None = None, shuffle_buffer: int = 0):
    """Unbatched float32 images [oh, ow, channels] in [-1, 1] from the files of `shard` (repeated when shuffled).

    `cache` (shuffled pipelines): None decodes every file every epoch; "" keeps the decoded, cropped,
    resized images in memory as uint8 after the first epoch; a path prefix keeps them in a file cache
    there (one-time; a later run with the same prefix reads it). Shuffling then happens over the cached
    images (`shuffle_buffer`, default all of them), so JPEG decoding and resizing leave the train step's
    cores after the first epoch.
    """
    import tensorflow as tf

    from tfcluster import storage

    ds = tf.data.Dataset.from_tensor_slices(list(files))
    if num_shards > 1:
        ds = ds.shard(num_shards, shard)
    per_shard = len(files) // max(1, num_shards) + 1
    remote = any(storage.is_uri(f) for f in files)

    def fetch(path):
        """A bucket object's node-cache copy, fetched when the pipeline first reaches it (this worker's shard only)."""
        local = tf.py_function(lambda p: storage.local_copy(p.numpy().decode("utf-8")), [path], tf.string)
        return tf.reshape(local, [])

    def load(path):
        img = _decode(tf.io.read_file(fetch(path) if remote else path), channels=channels)
        img = transform(img, input_height=input_height, input_width=input_width, output_height=output_height,
                        output_width=output_width, crop=crop)
        return tf.ensure_shape(img, [output_height, output_width, channels])

    if shuffle and cache is not None:
        ds = ds.map(lambda p: to_uint8_image(load(p)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.ignore_errors().cache(cache)
        ds = ds.shuffle(shuffle_buffer or per_shard, seed=seed, reshuffle_each_iteration=True).repeat()
        return ds.map(to_unit_range, num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle:
        ds = ds.shuffle(per_shard, seed=seed, reshuffle_each_iteration=True).repeat()
    # ignore_errors: a file that turned unreadable after the scan is skipped, not fatal.
    # deterministic: the same --seed gives the same batches in the same order, run after run.
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()


def cache_plan(num_images: int, height: int, width: int, channels: int, folder: str, key: str,
               shard: tuple[int, int] = (1, 0), memory_fraction: float = 0.2) -> tuple[str, int]:
    """Where a folder pipeline caches its images: ("", all) in memory when the uint8 images and the
    shuffle buffer over them fit in `memory_fraction` of the available memory, else a file-cache prefix
    in `folder` named by `key` (the data's fingerprint) with a shuffle buffer of 10,000 images. Stale
    lock files of an interrupted run are removed."""
    import glob

    per_shard = num_images // max(1, shard[0]) + 1
    nbytes = per_shard * height * width * channels
    if 2 * nbytes <= memory_fraction * available_memory():
        return "", per_shard
    os.makedirs(folder, exist_ok=True)
    prefix = os.path.join(folder, f"images-{key}-{height}x{width}x{channels}-shard{shard[1]}of{shard[0]}")
    for lock in glob.glob(prefix + "*.lockfile"):
        os.remove(lock)
    if glob.glob(prefix + "*") and not os.path.exists(prefix + ".index"):  # half-written: start again
        for f in glob.glob(prefix + "*"):
            os.remove(f)
    return prefix, min(per_shard, 10_000)


def available_memory() -> int:
    """Bytes of memory available now (Linux MemAvailable; else a conservative 2 GiB)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 << 30


# ---------------------------------------------------------------------------- MNIST


def read_idx(path: str) -> np.ndarray:
    """An idx file (MNIST's format; `.gz` allowed) as a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UserError(f"{path} is not an idx file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {arr.size}")
    return arr.reshape(shape)


def _find(base: str, names: tuple[str, ...]) -> list[str]:
    out = []
    for name in names:
        for cand in (name, name + ".gz", name.replace("-idx", ".idx")):
            if os.path.exists(os.path.join(base, cand)):
                out.append(os.path.join(base, cand))
                break
    return out


def load_mnist(data_dir: str, dataset: str = "mnist", *, labels: bool = False):
    """All MNIST digits uint8 [N, 28, 28] (and labels [N] when asked), train then test.

    Looks for `<data_dir>/<dataset>.npz`, `<data_dir>/<dataset>/mnist.npz`, `<data_dir>`
    itself when it is an `.npz`, then for idx files in `<data_dir>/<dataset>/` and `<data_dir>/`.
    """
    from tfcluster import storage

    if storage.is_uri(data_dir):  # a bucket: the .npz through the node cache
        remote = [p for p in (storage.join(data_dir, f"{dataset}.npz"), storage.join(data_dir, dataset, "mnist.npz"),
                              data_dir) if p.partition("?")[0].endswith(".npz") and storage.exists(p)]
        if not remote:
            raise UserError(f"no MNIST under {storage.display(data_dir)}: expected {dataset}.npz there")
        data_dir = storage.local_copy(remote[0])
    npz = [p for p in (os.path.join(data_dir, f"{dataset}.npz"), os.path.join(data_dir, dataset, "mnist.npz"), data_dir)
           if p.endswith(".npz") and os.path.isfile(p)]
    if npz:
        with np.load(npz[0]) as d:
            missing = {"x_train", "x_test"} - set(d.files)
            if missing:
                raise UserError(f"{npz[0]} lacks {', '.join(sorted(missing))} (expected keras.datasets.mnist layout)")
            x = np.concatenate([d["x_train"], d["x_test"]])
            y = np.concatenate([d["y_train"], d["y_test"]]) if labels else None
    else:
        for base in (os.path.join(data_dir, dataset), data_dir):
            imgs = _find(base, IDX_IMAGES)
            if imgs:
                break
        else:
            raise UserError(f"no MNIST under {data_dir}: expected {dataset}.npz or idx files "
                            f"({IDX_IMAGES[0]}[.gz]) in {os.path.join(data_dir, dataset)}")
        x = np.concatenate([read_idx(p) for p in imgs])
        y = np.concatenate([read_idx(p) for p in _find(base, IDX_LABELS)]) if labels else None
    if x.ndim != 3:
        raise UserError(f"MNIST images should be [N, 28, 28], got {list(x.shape)}")
    x = x.astype(np.uint8)
    return (x, y.astype(np.int64)) if labels else x


def array_dataset(images: np.ndarray, *, output_height: int, output_width: int, shuffle: bool = True, seed: int = 0,
                  num_shards: int = 1, shard: int = 0):
    """Unbatched float32 images [oh, ow, C] in [-1, 1] from a uint8 array [N, H, W(, C)]."""
    import tensorflow as tf

    if images.ndim == 3:
        images = images[..., None]
    if num_shards > 1:
        images = images[shard::num_shards]
    ds = tf.data.Dataset.from_tensor_slices(images)
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    h, w = images.shape[1:3]

    def load(img):
        x = to_unit_range(img)
        if (h, w) != (output_height, output_width):
            x = tf.clip_by_value(tf.image.resize(x, [output_height, output_width], antialias=True), -1.0, 1.0)
        return x

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def batched(ds, batch_size: int):
    """Static-shape batches (drop_remainder, so the train step traces once), prefetched."""
    import tensorflow as tf

    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
