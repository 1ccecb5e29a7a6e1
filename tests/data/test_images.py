"""Image data: the reference's crop arithmetic, the folder pipeline on generated JPEGs, MNIST npz and idx."""

import gzip
import os
import struct

import numpy as np
import pytest
from PIL import Image

from tfcluster.data import images
from tfcluster.errors import UserError


# ---------------------------------------------------------------------------- crop arithmetic


@pytest.mark.parametrize(
    "h, w, ch, cw, expected",
    [
        (218, 178, 108, 108, (55, 35, 108, 108)),  # CelebA 108-crop: the face-GAN tutorial's offsets
        (96, 96, 96, 96, (0, 0, 96, 96)),  # anime faces: the crop is the whole image
        (101, 100, 96, None, (2, 2, 96, 96)),  # margin 5 -> 2.5 rounds half to even -> 2
        (103, 100, 96, None, (4, 2, 96, 96)),  # margin 7 -> 3.5 rounds half to even -> 4
        (64, 80, 96, 96, (0, 0, 64, 80)),  # crop larger than the image is clipped to it
    ],
)
def test_center_crop_offsets_follow_the_reference(h, w, ch, cw, expected):
    assert images.center_crop_offsets(h, w, ch, cw) == expected


def test_tf_crop_offsets_equal_the_python_arithmetic():
    for h in range(90, 110):
        for crop in (64, 96, 108):
            top, left, ch, cw = (int(t) for t in images.tf_center_crop_offsets(h, h + 3, crop, crop))
            assert (top, left, ch, cw) == images.center_crop_offsets(h, h + 3, crop, crop)


def test_transform_crops_the_center_then_resizes_and_scales():
    import tensorflow as tf

    img = np.zeros((40, 40, 3), np.uint8)
    img[10:30, 10:30] = 255  # a white 20x20 square in the middle, black border
    cropped = images.transform(tf.constant(img), input_height=20, input_width=20, output_height=8, output_width=8, crop=True)
    assert cropped.shape == (8, 8, 3)
    np.testing.assert_allclose(cropped.numpy(), 1.0, atol=1e-5)  # only the square survives the crop
    resized = images.transform(tf.constant(img), input_height=20, input_width=20, output_height=8, output_width=8, crop=False)
    assert resized.numpy().min() == pytest.approx(-1.0, abs=1e-5)  # without crop the border stays
    assert resized.numpy().max() <= 1.0


# ---------------------------------------------------------------------------- folder pipeline


def _write_folder(root, n=10, size=(30, 24)):
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(os.path.join(root, f"{i:03d}.jpg"))
    with open(os.path.join(root, "zz_corrupt.jpg"), "wb") as f:
        f.write(b"\xff\xd8 this is not a jpeg")
    return root


def test_scan_skips_and_counts_unreadable_images(tmp_path):
    root = _write_folder(str(tmp_path / "faces"))
    index = images.scan_folder(os.path.join(root, "*.jpg"))
    assert index.size == 10 and index.skipped == 1 and index.channels == 3
    assert not any("corrupt" in f for f in index.files)
    path = str(tmp_path / "index.txt")
    images.write_index(index, path)
    assert images.read_index(path) == index


def test_folder_dataset_shards_and_shapes(tmp_path):
    root = _write_folder(str(tmp_path / "faces"))
    files = images.scan_folder(os.path.join(root, "*.jpg")).files
    kw = dict(channels=3, input_height=20, input_width=20, output_height=16, output_width=16, crop=True, shuffle=False)
    all_imgs = list(images.folder_dataset(files, **kw).as_numpy_iterator())
    assert len(all_imgs) == 10 and all_imgs[0].shape == (16, 16, 3)
    assert all(-1.0 <= x.min() and x.max() <= 1.0 for x in all_imgs)
    shard0 = list(images.folder_dataset(files, num_shards=2, shard=0, **kw).as_numpy_iterator())
    shard1 = list(images.folder_dataset(files, num_shards=2, shard=1, **kw).as_numpy_iterator())
    assert len(shard0) == len(shard1) == 5
    np.testing.assert_allclose(shard1[0], all_imgs[1])  # shard i holds every other file, from i


def test_folder_dataset_skips_files_that_turn_unreadable(tmp_path):
    root = _write_folder(str(tmp_path / "faces"), n=4)
    files = [os.path.join(root, f) for f in sorted(os.listdir(root))]  # the corrupt one included, unscanned
    ds = images.folder_dataset(files, channels=3, input_height=20, input_width=20, output_height=16, output_width=16,
                               crop=False, shuffle=False)
    assert len(list(ds.as_numpy_iterator())) == 4


def test_empty_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images match") as e:
        images.scan_folder(str(tmp_path / "empty" / "*.jpg"))
    assert "\n" not in str(e.value)


def test_folder_of_only_broken_files_is_an_error(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"nope")
    with pytest.raises(UserError, match="readable"):
        images.scan_folder(str(tmp_path / "bad" / "*.jpg"))


# ---------------------------------------------------------------------------- MNIST


def _digits(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def test_mnist_from_npz_concatenates_train_and_test(tmp_path):
    (xtr, ytr), (xte, yte) = _digits(6, 0), _digits(4, 1)
    np.savez(tmp_path / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    x, y = images.load_mnist(str(tmp_path), "mnist", labels=True)
    assert x.shape == (10, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, np.concatenate([xtr, xte]))
    np.testing.assert_array_equal(y, np.concatenate([ytr, yte]))


def _write_idx(path, arr, compress):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path + (".gz" if compress else ""), "wb") as f:
        f.write(data)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_from_idx_files(tmp_path, compress):
    (xtr, ytr), (xte, yte) = _digits(5, 2), _digits(3, 3)
    d = tmp_path / "mnist"
    d.mkdir()
    for name, arr in (("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr),
                      ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte)):
        _write_idx(str(d / name), arr, compress)
    x, y = images.load_mnist(str(tmp_path), "mnist", labels=True)
    np.testing.assert_array_equal(x, np.concatenate([xtr, xte]))
    np.testing.assert_array_equal(y, np.concatenate([ytr, yte]))


def test_truncated_idx_file_is_a_user_error(tmp_path):
    path = str(tmp_path / "train-images-idx3-ubyte")
    _write_idx(path, _digits(2, 0)[0], False)
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match="truncated"):
        images.read_idx(path)


def test_missing_mnist_names_what_it_looked_for(tmp_path):
    with pytest.raises(UserError, match="mnist.npz"):
        images.load_mnist(str(tmp_path), "mnist")


def test_array_dataset_scales_and_resizes():
    x = np.full((4, 28, 28), 255, np.uint8)
    x[0] = 0
    out = list(images.array_dataset(x, output_height=16, output_width=16, shuffle=False).as_numpy_iterator())
    assert out[0].shape == (16, 16, 1)
    np.testing.assert_allclose(out[0], -1.0, atol=1e-5)
    np.testing.assert_allclose(out[1], 1.0, atol=1e-5)


def _sorted_means(arrays):
    return sorted(round(float(a.mean()), 3) for a in arrays)


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_cached_images_are_decoded_once(tmp_path, where):
    """After the first epoch the pipeline reads its cache, not the files: with every file deleted it goes
    on yielding the same images (uint8 in the cache: within one grey level of the uncached ones)."""
    root = _write_folder(str(tmp_path / "faces"), n=6)
    files = images.scan_folder(os.path.join(root, "*.jpg")).files
    kw = dict(channels=3, input_height=20, input_width=20, output_height=16, output_width=16, crop=True)
    plain = list(images.folder_dataset(files, shuffle=False, **kw).as_numpy_iterator())
    prefix = "" if where == "memory" else str(tmp_path / "cache" / "images")
    if prefix:
        os.makedirs(os.path.dirname(prefix))
    it = images.folder_dataset(files, shuffle=True, seed=1, cache=prefix, **kw).as_numpy_iterator()
    first = [next(it) for _ in range(len(files))]  # the first epoch fills the cache
    for f in files:
        os.remove(f)
    later = [next(it) for _ in range(3 * len(files))]
    assert len(later) == 18 and all(x.shape == (16, 16, 3) and x.dtype == np.float32 for x in later)
    assert _sorted_means(later[:6]) == _sorted_means(first)  # each epoch: the same images, reshuffled
    for a, b in zip(sorted(first, key=lambda x: x.mean()), sorted(plain, key=lambda x: x.mean())):
        assert np.abs(a - b).max() <= 1.0 / 127.5 + 1e-6
    if prefix:  # a new run over the same file cache needs no file at all
        again = images.folder_dataset(files, shuffle=True, seed=2, cache=prefix, **kw).as_numpy_iterator()
        assert _sorted_means([next(again) for _ in range(6)]) == _sorted_means(first)


def test_cache_plan_memory_when_it_fits_else_a_file_cache(tmp_path):
    assert images.cache_plan(1000, 64, 64, 3, str(tmp_path), "k") == ("", 1001)
    prefix, buffer = images.cache_plan(1000, 64, 64, 3, str(tmp_path), "k", (2, 1), memory_fraction=0.0)
    assert prefix == str(tmp_path / "images-k-64x64x3-shard1of2") and buffer == 501
    open(prefix + "_0.lockfile", "w").close()  # an interrupted run's lock and half-written cache
    open(prefix + ".data-00000-of-00001", "w").close()
    assert images.cache_plan(1000, 64, 64, 3, str(tmp_path), "k", (2, 1), memory_fraction=0.0)[0] == prefix
    assert not os.listdir(tmp_path)
