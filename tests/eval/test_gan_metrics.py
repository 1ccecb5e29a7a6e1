"""SWD on Laplacian-pyramid patches and the MNIST Frechet distance: sanity on known inputs."""

import numpy as np
import pytest

from tfcluster.eval import fid_mnist, swd


def _noise(n, seed, size=32):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _smooth(n, seed, size=32):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    a = rng.uniform(-1, 1, (n, 1, 1, 3))
    b = rng.uniform(-1, 1, (n, 1, 1, 3))
    return (a * yy[None, ..., None] + b * xx[None, ..., None]).astype(np.float32)


def test_pyramid_levels_and_reconstruction():
    x = _noise(2, 0)
    levels = swd.laplacian_pyramid(x, min_res=8)
    assert [lvl.shape[1] for lvl in levels] == [32, 16, 8]
    rec = levels[-1]
    for band in reversed(levels[:-1]):
        rec = band + swd.upsample(rec)
    np.testing.assert_allclose(rec, x, atol=1e-5)  # a Laplacian pyramid loses nothing


def test_constant_image_has_no_band_pass_energy():
    levels = swd.laplacian_pyramid(np.full((1, 32, 32, 3), 0.3, np.float32))
    assert np.abs(levels[0]).max() < 1e-6
    np.testing.assert_allclose(levels[-1], 0.3, atol=1e-6)


def test_patch_descriptors_shape():
    d = swd.patch_descriptors(_noise(3, 0, 16), np.random.default_rng(0), nhood_per_image=5)
    assert d.shape == (15, 7 * 7 * 3)


def test_sliced_wasserstein_of_a_set_with_itself_is_zero_and_of_a_shift_is_positive():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 6)).astype(np.float32)
    assert swd.sliced_wasserstein(a, a, rng) == 0.0
    shifted = swd.sliced_wasserstein(a, a + 1.0, rng)
    # along a random unit direction d the shift is d . (1,...,1): E|d . 1| ~ sqrt(2/pi) for 6-D
    assert 0.5 < shifted < 1.1


def test_swd_same_distribution_small_different_large():
    same = swd.swd(_noise(64, 1), _noise(64, 2), nhood_per_image=32)["swd"]
    identical = swd.swd(_noise(64, 1), _noise(64, 1), nhood_per_image=32)["swd"]
    different = swd.swd(_noise(64, 1), _smooth(64, 2), nhood_per_image=32)["swd"]
    assert identical < 0.2 * different and same < 0.2 * different
    assert set(swd.swd(_noise(8, 1), _noise(8, 2), nhood_per_image=4)) == {"swd_32", "swd_16", "swd"}


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 5))
    s1 = a @ a.T + np.eye(5)
    b = rng.standard_normal((5, 5))
    s2 = b @ b.T + np.eye(5)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    assert fid_mnist.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    # tr((S1 S2)^(1/2)) = sum of square roots of the (real, positive) eigenvalues of S1 S2
    tr_sqrt = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).real))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert fid_mnist.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    # 1-D: (mu1-mu2)^2 + (sigma1-sigma2)^2
    assert fid_mnist.frechet_distance([0.0], [[1.0]], [1.0], [[4.0]]) == pytest.approx(2.0)


def _fake_digits(n, seed):
    """Ten classes of 'digits': a bright bar at a class-dependent row, on noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, 2 + 2 * c : 4 + 2 * c, 4:24] = 255
    return x, y


def test_mnist_fid_near_zero_for_real_and_large_for_other_images(tmp_path):
    x, y = _fake_digits(600, 0)
    path = fid_mnist.classifier_path(str(tmp_path), 28, 28)
    acc = fid_mnist.train_classifier(x, y, path, epochs=2, batch_size=64)
    assert acc > 0.9
    real = fid_mnist.to_model_range(x[:300], 28, 28)
    metric = fid_mnist.MnistFid(path, real)
    same = metric(fid_mnist.to_model_range(_fake_digits(300, 1)[0], 28, 28))
    other = metric(np.random.default_rng(2).uniform(-1, 1, (300, 28, 28, 1)).astype(np.float32))
    assert same < 0.25 * other
