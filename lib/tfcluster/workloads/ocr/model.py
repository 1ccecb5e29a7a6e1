"""The OCR model (CNN + bidirectional LSTM + CTC), its training task, decoding and export."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcluster import export as export_mod
from tfcluster.errors import UserError
from tfcluster.train import precision
from tfcluster.train.loop import TaskBase
from tfcluster.workloads.ocr import (
    BLANK,
    DIGITS,
    HEIGHT,
    OCR,
    PNG_INPUT,
    PNG_SIGNATURE,
    WIDTH,
    Config,
    eval_set,
    find_fonts,
    samples,
)


def build_model(cfg: Config) -> keras.Model:
    """uint8 images [batch, 32, 256, 1] -> CTC logits [batch, 64, 11] (64 time steps: one per 4 columns)."""
    f = cfg.filters

    def conv(x, filters):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        return keras.layers.ReLU()(x)

    images = keras.Input((HEIGHT, WIDTH, 1), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 255.0)(keras.ops.cast(images, "float32"))
    x = keras.layers.MaxPooling2D((2, 2))(conv(x, f // 2))   # 16 x 128
    x = keras.layers.MaxPooling2D((2, 2))(conv(x, f))        # 8 x 64
    x = conv(conv(x, 2 * f), 2 * f)
    x = keras.layers.MaxPooling2D((2, 1))(x)                 # 4 x 64
    x = keras.layers.MaxPooling2D((2, 1))(conv(x, 2 * f))    # 2 x 64
    x = keras.layers.Permute((2, 1, 3))(x)                   # columns become time steps
    x = keras.layers.Reshape((WIDTH // 4, 2 * 2 * f))(x)
    x = keras.layers.Dense(2 * cfg.num_units, activation="relu")(x)
    x = keras.layers.Bidirectional(keras.layers.LSTM(cfg.num_units, return_sequences=True))(x)
    logits = keras.layers.Dense(len(DIGITS) + 1, name="logits", dtype="float32")(x)  # CTC in float32 under every precision
    return keras.Model(images, logits, name="ocr")


def learning_rate(cfg: Config):
    warmup = max(1, min(200, cfg.num_train_steps // 10))
    if cfg.decay_scheme == "constant":
        return keras.optimizers.schedules.CosineDecay(0.0, 1, alpha=1.0, warmup_target=cfg.learning_rate,
                                                      warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(0.0, max(1, cfg.num_train_steps - warmup), alpha=0.05,
                                                  warmup_target=cfg.learning_rate, warmup_steps=warmup)


def ctc_loss(labels, logits):
    """Per-example CTC loss; `labels` int32 [batch, max_len] padded with -1."""
    label_length = tf.reduce_sum(tf.cast(labels >= 0, tf.int32), axis=1)
    logit_length = tf.fill([tf.shape(logits)[0]], tf.shape(logits)[1])
    return tf.nn.ctc_loss(labels=tf.maximum(labels, 0), logits=logits, label_length=label_length,
                          logit_length=logit_length, logits_time_major=False, blank_index=BLANK)


def decode(logits, beam_width: int = 0):
    """CTC decoding: (digit ids int64 [batch, max_len] padded with -1, log-probability float32 [batch])."""
    time_major = tf.transpose(tf.nn.log_softmax(logits), [1, 0, 2])
    length = tf.fill([tf.shape(logits)[0]], tf.shape(logits)[1])
    # The decoders take the blank as the last class, which is where this model puts it.
    if beam_width:
        paths, log_probs = tf.nn.ctc_beam_search_decoder(time_major, length, beam_width=beam_width, top_paths=1)
        score = log_probs[:, 0]
    else:
        paths, neg_sum_logits = tf.nn.ctc_greedy_decoder(time_major, length)
        score = -neg_sum_logits[:, 0]
    dense = tf.sparse.to_dense(paths[0], default_value=-1)
    return dense, tf.cast(score, tf.float32)


def ids_to_strings(ids):
    """int ids [batch, n] (-1 = none) -> digit strings [batch]."""
    table = tf.constant(list(DIGITS))
    chars = tf.where(ids >= 0, tf.gather(table, tf.maximum(ids, 0)), "")
    return tf.strings.reduce_join(chars, axis=-1)


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def scores(predicted: list[str], truth: list[str]) -> dict[str, float]:
    """eval/sequence_accuracy and eval/char_error_rate of predictions against the references."""
    right = sum(p == t for p, t in zip(predicted, truth))
    errors = sum(edit_distance(p, t) for p, t in zip(predicted, truth))
    return {"eval/sequence_accuracy": right / max(1, len(truth)),
            "eval/char_error_rate": errors / max(1, sum(len(t) for t in truth))}


class Task(TaskBase):
    """What the shared loop trains (`tfcluster.train.loop.Task`); built inside `strategy.scope()`."""

    best_metric = ("eval/sequence_accuracy", "max")

    def __init__(self, cfg: Config, strategy: Any = None, ctx: Any = None):
        from tfcluster.train.loop import WorkerContext

        self.cfg, self.ctx = cfg, ctx or WorkerContext()
        self.num_steps = cfg.num_train_steps
        self.model = build_model(cfg)
        self.optimizer = precision.loss_scaled(keras.optimizers.Adam(learning_rate(cfg), clipnorm=5.0), cfg.precision)
        self._gradients = self.xla(self.gradients, cfg)
        self._eval: tuple[np.ndarray, list[str]] | None = None
        self._predict = None

    def trackables(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer}

    def dataset(self, input_context):
        """This pipeline's endless stream of drawn lines: (images uint8 [b, 32, 256, 1], labels int32 [b, max_digits])."""
        cfg = self.cfg
        per_replica = input_context.get_per_replica_batch_size(cfg.batch_size)
        seed = cfg.seed * 1000 + input_context.input_pipeline_id
        fonts = find_fonts(cfg.fonts)
        ds = tf.data.Dataset.from_generator(
            lambda: samples(seed, cfg.min_digits, cfg.max_digits, fonts, cfg.noise),
            output_signature=(tf.TensorSpec([HEIGHT, WIDTH, 1], tf.uint8), tf.TensorSpec([None], tf.int32)),
        )
        ds = ds.padded_batch(per_replica, padded_shapes=([HEIGHT, WIDTH, 1], [cfg.max_digits]),
                             padding_values=(np.uint8(0), -1), drop_remainder=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    def replica_step(self, batch) -> dict[str, Any]:
        return self._train_step(*batch)

    def gradients(self, images, labels):
        """Per-example CTC losses and (loss-scaled) gradients: what --jit_compile compiles."""
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            loss = ctc_loss(labels, logits)
            scaled = tf.reduce_sum(loss) / self.cfg.batch_size  # replicas' gradients add up to the global mean
            scaled = precision.scale_loss(self.optimizer, scaled)  # float16: times the dynamic loss scale
        return loss, tape.gradient(scaled, self.model.trainable_variables)

    def _train_step(self, images, labels):
        loss, grads = self._gradients(images, labels)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return {"loss": tf.reduce_sum(loss), "images": tf.cast(tf.shape(images)[0], tf.float32)}

    def stats(self, sums: dict[str, float], steps: int, seconds: float) -> dict[str, float]:
        n = max(sums["images"], 1.0)
        return {
            "train/ctc_loss": sums["loss"] / n,
            "train/lr": float(keras.ops.convert_to_numpy(self.optimizer.learning_rate)),
            "perf/images_per_s": sums["images"] / max(seconds, 1e-9),
            "perf/step_s": seconds / max(steps, 1),
        }

    def recognize(self, images: np.ndarray, batch_size: int = 250) -> list[str]:
        if self._predict is None:
            model, beam = self.model, self.cfg.beam_width

            @tf.function(input_signature=[tf.TensorSpec([None, HEIGHT, WIDTH, 1], tf.uint8)])
            def predict(x):
                return ids_to_strings(decode(model(x, training=False), beam)[0])

            self._predict = predict
        out: list[str] = []
        for i in range(0, len(images), batch_size):
            out += [s.decode() for s in self._predict(images[i:i + batch_size]).numpy()]
        return out

    def evaluate(self, step: int) -> dict[str, float]:
        if self._eval is None:
            self._eval = eval_set(self.cfg)
        t0 = time.perf_counter()
        images, truth = self._eval
        predicted = self.recognize(images)
        result = scores(predicted, truth)
        result["perf/eval_s"] = time.perf_counter() - t0
        wrong = [(t, p) for t, p in zip(truth, predicted) if t != p][:2]
        for t, p in wrong:
            print(f"    ref: {t}\n    ocr: {p}", flush=True)
        return result


# ============================================================================ export


def restore(cfg: Config, which: str = "best") -> keras.Model:
    from tfcluster.train.loop import restore_run

    model = build_model(cfg)
    restore_run(cfg.out_dir, which, model=model)
    return model


def fit_line(image):
    """A decoded image (uint8 [h, w, c], any size) as the model's grey line [32, 256, 1]: scaled to height 32
    keeping its aspect ratio, squeezed when wider than 256, padded right with its own border colour."""
    grey = tf.image.rgb_to_grayscale(image[..., :3]) if image.shape[-1] in (3, 4) else image[..., :1]
    h, w = tf.shape(grey)[0], tf.shape(grey)[1]
    new_w = tf.clip_by_value(tf.cast(tf.math.round(tf.cast(w, tf.float32) * HEIGHT / tf.cast(tf.maximum(h, 1), tf.float32)),
                                     tf.int32), 1, WIDTH)
    line = tf.image.resize(tf.cast(grey, tf.float32), [HEIGHT, new_w])
    border = tf.concat([line[0], line[-1], line[:, 0], line[:, -1]], axis=0)
    background = tf.sort(tf.reshape(border, [-1]))[tf.size(border) // 2]  # the median: the paper, not the ink
    line = tf.concat([line, tf.fill([HEIGHT, WIDTH - new_w, 1], background)], axis=1)
    return tf.cast(tf.clip_by_value(tf.round(line), 0, 255), tf.uint8)


def serving_module(model: keras.Model, cfg: Config) -> tf.Module:
    """serving_default: uint8 [batch, 32, 256, 1] -> digits, score; serving_png: encoded images -> the same."""
    key = OCR.inputs[0].key
    digits_key, score_key = (t.key for t in OCR.outputs)
    module = tf.Module()  # save_version tracks the variables the signatures read, not the Keras model

    def recognize(images):
        ids, score = decode(model(images, training=False), cfg.beam_width)
        return {digits_key: ids_to_strings(ids), score_key: score}

    @tf.function(input_signature=[tf.TensorSpec([None, HEIGHT, WIDTH, 1], tf.uint8, name=key)])
    def serve(image):
        image = export_mod.require_shape(image, [HEIGHT, WIDTH, 1], f"{key} must have shape [batch, {HEIGHT}, {WIDTH}, 1] (grey)")
        return recognize(image)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=PNG_INPUT)])
    def serve_png(image_bytes):
        images = tf.map_fn(lambda b: fit_line(tf.io.decode_image(b, channels=0, expand_animations=False)),
                           image_bytes, fn_output_signature=tf.TensorSpec([HEIGHT, WIDTH, 1], tf.uint8))
        return recognize(images)

    module.serve, module.serve_png = serve, serve_png
    return module


def export(model: keras.Model, cfg: Config, model_base_path: str) -> str:
    from tfcluster import contract

    module = serving_module(model, cfg)
    images, _ = eval_set(dataclasses.replace(cfg, eval_images=2))
    return export_mod.save_version(
        module, {contract.DEFAULT_SIGNATURE: module.serve, PNG_SIGNATURE: module.serve_png}, model_base_path, OCR,
        warmup=[{OCR.inputs[0].key: images[:1]}, {OCR.inputs[0].key: images}],
    )


def export_checkpoint(cfg: Config, which: str = "best") -> str:
    if not cfg.model_base_path:
        raise UserError("--model_base_path is required to export")
    return export(restore(cfg, which), cfg, cfg.model_base_path)
