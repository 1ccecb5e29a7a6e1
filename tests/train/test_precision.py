"""--precision and --jit_compile on every data-parallel workload, checked on the CPU: a few steps and an
export under each precision, float32 signatures whatever the training precision, checkpoints that
restore across precisions, bfloat16 NMT as good as float32 at the same step, float16 DCGAN with a
moving loss scale and finite losses."""

from __future__ import annotations

import dataclasses
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfcluster.data import toy
from tfcluster.metrics import read_metrics
from tfcluster.train import precision
from tfcluster.train.loop import WorkerContext, run_loop

PRECISIONS = list(precision.PRECISIONS)


def _signature_dtypes(path):
    sig = tf.saved_model.load(path).signatures["serving_default"]
    inputs = {k: v.dtype.name for k, v in sig.structured_input_signature[1].items()}
    outputs = {k: v.dtype.name for k, v in sig.structured_outputs.items()}
    return inputs, outputs


def _train(module, cfg, tasks=None):
    tasks = [] if tasks is None else tasks
    run_loop(lambda s: tasks.append(module.Task(cfg, s, WorkerContext())) or tasks[-1], cfg)
    assert keras.config.dtype_policy().name == "float32"  # the policy does not leak out of the run
    return tasks[-1], read_metrics(cfg.out_dir)


def _nmt_cfg(tmp_path, **kw):
    from tfcluster.workloads import nmt

    p = toy.write_corpus(str(tmp_path / "data"), sizes={"train": 2000, "dev": 40})
    base = dict(src="src", tgt="tgt", train_prefix=p["train"], dev_prefix=p["dev"], vocab_prefix=p["vocab"],
                out_dir=str(tmp_path / "run"), num_units=32, attention="scaled_luong", input_feeding=False,
                encoder_type="bi", optimizer="adam", learning_rate=0.01, batch_size=32, dropout=0.0,
                num_train_steps=8, steps_per_stats=4, steps_per_external_eval=8, model_base_path=str(tmp_path / "models"))
    return nmt.prepare(nmt.Config(**{**base, **kw}))


@pytest.mark.parametrize("prec", PRECISIONS)
def test_nmt_trains_evaluates_and_exports_under_each_precision(tmp_path, prec):
    from tfcluster.workloads import nmt

    cfg = _nmt_cfg(tmp_path, precision=prec, jit_compile=prec == "mixed_bfloat16", beam_width=2)
    task, records = _train(nmt, cfg)
    assert task.model.compute_dtype == precision.compute_dtype(prec)
    assert all(v.dtype == "float32" for v in task.model.weights)  # variables stay float32
    last = records[-1]
    assert math.isfinite(last["train/loss"]) and "eval/bleu" in last
    assert ("train/loss_scale" in last) is (prec == "mixed_float16")
    path = nmt.export_checkpoint(cfg, "last")
    assert _signature_dtypes(path) == ({"source": "string"}, {"translation": "string", "score": "float32"})


def test_nmt_checkpoints_restore_across_precisions(tmp_path):
    from tfcluster.workloads import nmt

    cfg = _nmt_cfg(tmp_path, num_train_steps=8)
    _train(nmt, cfg)
    more = dataclasses.replace(cfg, precision="mixed_bfloat16", num_train_steps=16)
    task, records = _train(nmt, more)
    assert records[-1]["step"] == 16 and math.isfinite(records[-1]["train/loss"])
    steps = [r["step"] for r in records]
    assert steps == sorted(steps)  # resumed at 8, not started over


def test_nmt_bfloat16_reaches_the_bleu_of_float32_at_the_same_step(tmp_path):
    from tfcluster.workloads import nmt

    bleu = {}
    for prec in ("float32", "mixed_bfloat16"):
        cfg = _nmt_cfg(tmp_path / prec, precision=prec, num_train_steps=500, steps_per_stats=100,
                       steps_per_external_eval=500)
        _, records = _train(nmt, cfg)
        bleu[prec] = records[-1]["eval/bleu"]
    assert bleu["float32"] > 80
    assert abs(bleu["mixed_bfloat16"] - bleu["float32"]) <= 1.0, bleu


def _faces(root, n=64):
    os.makedirs(root)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(os.path.join(root, f"{i:03d}.png"))


@pytest.mark.parametrize("prec", PRECISIONS)
def test_dcgan_trains_and_exports_under_each_precision(tmp_path, prec):
    from tfcluster.workloads import dcgan

    _faces(str(tmp_path / "data" / "faces"))
    cfg = dcgan.prepare(dcgan.Config(
        dataset="faces", data_dir=str(tmp_path / "data"), input_fname_pattern="*.png", input_height=16, output_height=16, epoch=2, batch_size=8,
        gf_dim=8, df_dim=8, z_dim=8, out_dir=str(tmp_path / "run"), steps_per_stats=4, steps_per_external_eval=16,
        sample_every=1000, swd_images=16, precision=prec, jit_compile=prec == "mixed_bfloat16",
        model_base_path=str(tmp_path / "models")))
    grown = []

    class Fast(dcgan.Task):  # the loss scale doubles after 4 finite steps instead of 2,000: it moves in a short run
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            for opt in (self.d_opt, self.g_opt):
                if precision.is_scaled(opt):
                    opt.dynamic_growth_steps = 4
            grown.append(self)

    run_loop(lambda s: Fast(cfg, s, WorkerContext()), cfg)
    records = read_metrics(cfg.out_dir)
    task = grown[-1]
    assert task.generator.compute_dtype == precision.compute_dtype(prec)
    for r in records:
        if "train/d_loss" in r:
            assert math.isfinite(r["train/d_loss"]) and math.isfinite(r["train/g_loss"])
    if prec == "mixed_float16":
        scales = [r["train/d_loss_scale"] for r in records if "train/d_loss_scale" in r]
        assert len(set(scales)) > 1, scales  # the dynamic loss scale moved
    path = dcgan.export_checkpoint(cfg, "last")
    assert _signature_dtypes(path) == ({"z": "float32"}, {"images": "uint8"})


@pytest.mark.parametrize("prec", PRECISIONS)
def test_ocr_trains_and_exports_under_each_precision(tmp_path, prec):
    from tfcluster.workloads import ocr
    from tfcluster.workloads.ocr import model as ocr_model

    cfg = ocr.prepare(ocr.Config(out_dir=str(tmp_path / "run"), model_base_path=str(tmp_path / "models"),
                                 min_digits=1, max_digits=3, filters=8, num_units=8, batch_size=8, num_train_steps=6,
                                 steps_per_stats=3, steps_per_external_eval=6, eval_images=8, precision=prec,
                                 jit_compile=prec == "mixed_bfloat16"))
    task, records = _train(ocr_model, cfg)
    assert task.model.compute_dtype == precision.compute_dtype(prec)
    assert math.isfinite(records[-1]["train/ctc_loss"])
    path = ocr_model.export_checkpoint(cfg, "last")
    assert _signature_dtypes(path) == ({"image": "uint8"}, {"digits": "string", "score": "float32"})
