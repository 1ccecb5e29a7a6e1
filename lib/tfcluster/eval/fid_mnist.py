"""Frechet distance on the features of a small MNIST classifier the project trains itself.

FID (Heusel et al., 2017) needs an Inception network; for digits a small CNN trained here
on MNIST (about 99% test accuracy after 2 epochs) gives features that separate the
classes just as well, with nothing downloaded. `eval/fid_mnist` is the Frechet distance
between Gaussians fitted to the 128-d penultimate features of real and generated digits.

The classifier is trained once and cached (`classifier_path`); images are fed in the
generator's range [-1, 1] at the generator's output size.
"""

from __future__ import annotations

import os

import numpy as np

FEATURES = "features"


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), via symmetric eigendecompositions.

    tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2)), whose argument is symmetric PSD,
    so no general matrix square root (scipy) is needed.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh(s1)
    s1_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = s1_half @ s2 @ s1_half
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def build_classifier(height: int = 28, width: int = 28, channels: int = 1):
    """A small CNN: two 3x3 conv/max-pool blocks, a 128-unit feature layer, 10 logits."""
    import keras
    from keras import layers

    inputs = keras.Input((height, width, channels))
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    feats = layers.Dense(128, activation="relu", name=FEATURES)(x)
    logits = layers.Dense(10)(feats)
    return keras.Model(inputs, logits, name="mnist_classifier")


def classifier_path(cache_dir: str, height: int, width: int) -> str:
    return os.path.join(cache_dir, f"mnist_classifier_{height}x{width}.weights.h5")


def to_model_range(images_u8: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 digits [N, h, w] -> float32 [N, height, width, 1] in [-1, 1]."""
    import tensorflow as tf

    x = images_u8.astype(np.float32)[..., None] / 127.5 - 1.0
    if x.shape[1:3] != (height, width):
        x = tf.clip_by_value(tf.image.resize(x, [height, width], antialias=True), -1, 1).numpy()
    return x


def train_classifier(images_u8: np.ndarray, labels: np.ndarray, path: str, *, height: int = 28, width: int = 28,
                     epochs: int = 2, batch_size: int = 128, seed: int = 0) -> float:
    """Train the classifier on digits, save its weights to `path`; returns accuracy on the held-out tenth."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    x = to_model_range(images_u8, height, width)
    n_val = max(1, len(x) // 10)
    model = build_classifier(height, width)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:-n_val], labels[:-n_val], batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True)
    acc = float(model.evaluate(x[-n_val:], labels[-n_val:], verbose=0)[1])
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    model.save_weights(path)
    return acc


class MnistFid:
    """`MnistFid(path, real)(fake) -> float`: Frechet distance to a fixed real set, in feature space."""

    def __init__(self, path: str, real: np.ndarray, batch_size: int = 256):
        import keras

        h, w = real.shape[1:3]
        clf = build_classifier(h, w, real.shape[-1])
        clf.load_weights(path)
        self._features = keras.Model(clf.input, clf.get_layer(FEATURES).output)
        self.batch_size = batch_size
        self.real_stats = gaussian_stats(self.features(real))

    def features(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._features.predict(images, batch_size=self.batch_size, verbose=0))

    def __call__(self, fake: np.ndarray) -> float:
        return frechet_distance(*self.real_stats, *gaussian_stats(self.features(fake)))
