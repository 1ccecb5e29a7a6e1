"""DCGAN: config and flags, network shapes, losses, a short train with resume, export and visualize."""

import argparse
import json
import os

import numpy as np
import pytest
from PIL import Image

from tfcluster import config as config_mod
from tfcluster import contract
from tfcluster.workloads import dcgan

# ---------------------------------------------------------------------------- config and flags


def _parse(argv):
    p = argparse.ArgumentParser()
    config_mod.add_config_flags(p, dcgan.Config)
    return config_mod.config_from_args(dcgan.Config, p.parse_args(argv), resume=False)[0]


def test_flags_take_dcgan_tensorflow_forms():
    cfg = _parse(["--crop", "--input_height", "96", "--output_height", "48", "--train", "false"])
    assert cfg.crop is True and cfg.train is False
    assert (cfg.input_width, cfg.output_width) == (96, 48)  # widths default to heights
    assert _parse(["--crop", "true"]).crop is True and _parse([]).crop is False
    d = _parse([])  # DCGAN-tensorflow's defaults
    assert (d.epoch, d.batch_size, d.learning_rate, d.beta1, d.z_dim, d.input_height, d.output_height) == (
        25, 64, 0.0002, 0.5, 100, 108, 64)


def test_checkpoint_dir_is_out_dir():
    cfg = dcgan.Config(checkpoint_dir="runs/x")
    assert cfg.out_dir == "runs/x" and cfg.checkpoint_dir == ""
    assert config_mod.build(dcgan.Config, config_mod.to_dict(cfg)) == cfg  # the saved form round-trips


@pytest.mark.parametrize("kw, message", [
    (dict(output_height=30), "divisible by 16"),
    (dict(batch_size=63, num_workers=2), "divide by --num_workers"),
    (dict(g_steps_per_d=0), "g_steps_per_d"),
])
def test_config_checks_name_the_flag(kw, message):
    with pytest.raises(ValueError, match=message):
        dcgan.Config(**kw)


def test_presets_load():
    root = os.path.join(os.path.dirname(dcgan.__file__), os.pardir, "presets")
    anime = config_mod.build(dcgan.Config, config_mod.load_json(os.path.join(root, "dcgan_anime.json")))
    assert (anime.input_height, anime.output_height, anime.crop) == (96, 48, True)
    celeb = config_mod.build(dcgan.Config, config_mod.load_json(os.path.join(root, "dcgan_celebA.json")))
    assert (celeb.input_height, celeb.output_height, celeb.crop, celeb.g_steps_per_d) == (108, 64, True, 1)
    mnist = config_mod.build(dcgan.Config, config_mod.load_json(os.path.join(root, "dcgan_mnist.json")))
    assert (mnist.dataset, mnist.output_height) == ("mnist", 28)


# ---------------------------------------------------------------------------- networks and math


@pytest.mark.parametrize("size, c_dim, plan", [(28, 1, (7, 7, 2)), (48, 3, (3, 3, 4)), (64, 3, (4, 4, 4))])
def test_network_shapes(size, c_dim, plan):
    cfg = dcgan.Config(output_height=size, gf_dim=4, df_dim=4, z_dim=10, c_dim=c_dim)
    assert dcgan.generator_plan(size, size) == plan
    g, d = dcgan.build_generator(cfg), dcgan.build_discriminator(cfg)
    img = g(np.zeros((2, 10), np.float32), training=False)
    assert img.shape == (2, size, size, c_dim)
    assert d(img, training=False).shape == (2, 1)
    w = g.get_layer("g_h0_lin").get_weights()[0]
    assert abs(w.std() - 0.02) < 0.005  # N(0, 0.02) init


def test_generator_flops_by_hand():
    g, _ = dcgan.forward_flops(dcgan.Config())  # 64x64, gf_dim 64, z 100
    by_hand = 2 * (100 * 4 * 4 * 512 + 4 * 4 * 512 * 256 * 25 + 8 * 8 * 256 * 128 * 25 + 16 * 16 * 128 * 64 * 25
                   + 32 * 32 * 64 * 3 * 25)
    assert g == by_hand


def test_losses_at_known_logits():
    zero = np.zeros((3, 1), np.float32)
    np.testing.assert_allclose(dcgan.d_losses(zero, zero).numpy(), 2 * np.log(2), rtol=1e-6)
    np.testing.assert_allclose(dcgan.g_losses(zero).numpy(), np.log(2), rtol=1e-6)
    sure = np.full((3, 1), 20.0, np.float32)
    assert dcgan.d_losses(sure, -sure).numpy().max() < 1e-6  # D right on both: no loss
    assert dcgan.g_losses(-sure).numpy().min() > 19  # non-saturating: large loss, large gradient


def test_to_uint8_and_grid_and_interpolation():
    np.testing.assert_array_equal(dcgan.to_uint8(np.array([-1.0, -2.0, 0.0, 1.0, 3.0], np.float32)).numpy(),
                                  [0, 0, 128, 255, 255])
    imgs = np.stack([np.full((2, 3, 1), i, np.uint8) for i in range(5)])
    grid = dcgan.image_grid(imgs, 2, 3)
    assert grid.shape == (4, 9, 1) and grid[0, 3, 0] == 1 and grid[2, 0, 0] == 3 and grid[3, 8, 0] == 0
    z = dcgan.interpolate(np.zeros(4, np.float32), np.ones(4, np.float32), 5)
    np.testing.assert_allclose(z[:, 0], [0, 0.25, 0.5, 0.75, 1])


def test_sample_z_is_deterministic_per_seed_and_in_range():
    a = dcgan.sample_z([4, 7], "uniform", [1, 2]).numpy()
    np.testing.assert_array_equal(a, dcgan.sample_z([4, 7], "uniform", [1, 2]).numpy())
    assert not np.array_equal(a, dcgan.sample_z([4, 7], "uniform", [1, 3]).numpy())
    assert a.min() >= -1 and a.max() <= 1


# ---------------------------------------------------------------------------- a short train


def _faces(root, n=96, size=20):
    """Smooth colour gradients: structure a tiny D can tell from an untrained G's output."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        a, b, c = rng.random(3)
        img = np.stack([a * yy + (1 - a) * xx, b * xx, c * (1 - yy)], -1) * 255
        Image.fromarray(img.astype(np.uint8)).save(os.path.join(root, f"{i:03d}.jpg"))
    (open(os.path.join(root, "broken.jpg"), "wb")).write(b"garbage")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tfcluster.metrics import read_metrics
    from tfcluster.train.loop import run_loop

    tmp = tmp_path_factory.mktemp("dcgan")
    _faces(str(tmp / "data" / "faces"))
    cfg = dcgan.Config(dataset="faces", data_dir=str(tmp / "data"), input_height=16, output_height=16, crop=True,
                       epoch=8, batch_size=16, gf_dim=8, df_dim=8, z_dim=8, out_dir=str(tmp / "run"),
                       steps_per_stats=6, sample_every=24, swd_images=48, seed=3, learning_rate=0.001)
    cfg = dcgan.prepare(cfg)
    tasks = []

    def make(strategy):
        tasks.append(dcgan.Task(cfg, strategy))
        return tasks[-1]

    half = dataclasses_replace(cfg, epoch=4, learning_rate=0.002)
    run_loop(lambda s: dcgan.Task(half, s), half)  # a first run stops after 4 epochs ...
    first = read_metrics(cfg.out_dir)
    run_loop(make, cfg)  # ... the rerun resumes from its checkpoint
    return cfg, tasks[-1], first, read_metrics(cfg.out_dir)


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


@pytest.mark.parametrize("mode", ["memory", "disk", "none"])
def test_the_training_pipeline_caches_as_cache_images_says(tmp_path, mode):
    """--cache_images reaches the job's own pipeline: after the first epoch every image on disk turns black;
    a cached pipeline goes on yielding the faces it decoded (disk: from files under out_dir/cache), an
    uncached one (`none`) decodes the black files."""
    _faces(str(tmp_path / "data" / "faces"), n=32)
    cfg = dcgan.prepare(dcgan.Config(dataset="faces", data_dir=str(tmp_path / "data"), input_height=16, output_height=16,
                                     crop=True, out_dir=str(tmp_path / "run"), cache_images=mode))
    it = dcgan.make_data(cfg).batch(8).as_numpy_iterator()
    for _ in range(4):  # the first epoch (32 images) fills the cache
        next(it)
    black = Image.fromarray(np.zeros((20, 20, 3), np.uint8))
    for f in os.listdir(tmp_path / "data" / "faces"):
        black.save(tmp_path / "data" / "faces" / f, format="JPEG")
    for _ in range(8):  # images decoded ahead of the change (parallel map, prefetch) are used up
        next(it)
    brightest = [float(next(it).reshape(8, -1).max(axis=1).min()) for _ in range(4)]  # per image, a whole epoch
    if mode == "none":
        assert max(brightest) == pytest.approx(-1.0, abs=0.02)
    else:
        assert min(brightest) > -0.5
    cached = os.listdir(tmp_path / "run" / "cache") if os.path.isdir(tmp_path / "run" / "cache") else []
    assert bool(cached) is (mode == "disk")


def test_prepare_counts_the_unreadable_image(trained):
    cfg, task, _, _ = trained
    index = dcgan.folder_index(cfg)
    assert (index.size, index.skipped, cfg.c_dim) == (96, 1, 3)
    assert task.steps_per_epoch == 6 and task.num_steps == 48


def test_training_logs_and_losses_behave(trained):
    cfg, _, first, records = trained
    keys = {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "perf/images_per_s", "eval/swd"}
    assert keys <= set().union(*records)
    stats = [r for r in records if "train/d_loss" in r]
    assert all(np.isfinite(r["train/d_loss"]) and np.isfinite(r["train/g_loss"]) for r in stats)
    first, last = stats[0], stats[-1]
    # D learns to tell the gradients from G's samples: its loss falls below chance (2 ln 2),
    # it scores real above fake by a growing margin, and G's non-saturating loss rises.
    assert last["train/d_loss"] < min(first["train/d_loss"], 2 * np.log(2)) - 0.01
    assert last["train/d_real"] - last["train/d_fake"] > max(0.01, first["train/d_real"] - first["train/d_fake"])
    assert last["train/g_loss"] > first["train/g_loss"]
    assert all(r["perf/images_per_s"] > 0 for r in stats)


def test_rerun_resumes(trained):
    cfg, task, first, records = trained
    assert max(r["step"] for r in first) == 24
    later = records[len(first):]
    assert later and min(r["step"] for r in later) > 24 and max(r["step"] for r in later) == 48
    # the checkpoint held the first run's Adam rate; the rerun's config wins (what PBT relies on)
    for opt in (task.g_opt, task.d_opt):
        assert float(opt.learning_rate.numpy()) == pytest.approx(cfg.learning_rate)


def test_sample_grids_are_written_per_epoch_and_step(trained):
    cfg, _, _, _ = trained
    names = sorted(os.listdir(cfg.samples_path))
    assert names == ["train_03_0005.png", "train_07_0005.png"]  # steps 24 and 48, 6 steps an epoch
    assert Image.open(os.path.join(cfg.samples_path, names[0])).size == (8 * 16, 8 * 16)


def test_export_signature_returns_the_in_process_generator_output(trained, tmp_path, tf_serving_run):
    import tensorflow as tf

    from tfcluster import export as export_mod

    cfg, task, _, _ = trained
    cfg = dataclasses_replace(cfg, model_base_path=str(tmp_path / "models"))
    path = dcgan.export_checkpoint(cfg, which="last")
    assert path.endswith(os.path.join("dcgan", "1"))
    export_mod.check_signature(path, contract.DCGAN)
    assert os.path.exists(os.path.join(path, contract.WARMUP_FILE))
    z = dcgan.fixed_z(cfg, 4, 11)
    out = tf.saved_model.load(path).signatures[contract.DCGAN.signature](z=tf.constant(z))
    images = out[contract.DCGAN.outputs[0].key].numpy()
    assert images.dtype == np.uint8 and images.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(images, dcgan.to_uint8(task.generator(z, training=False)).numpy())
    np.testing.assert_array_equal(tf_serving_run(path, {"z": z})["images"], images)  # as TF Serving loads it
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"z must have shape \[batch, {cfg.z_dim}\]"):
        tf_serving_run(path, {"z": z[:, :3]})  # the graph's own check, before the generator


def test_visualize_writes_grid_and_interpolation(trained, tmp_path):
    cfg, _, _, _ = trained
    cfg = dataclasses_replace(cfg, sample_dir=str(tmp_path / "vis"))
    paths = dcgan.visualize(cfg)
    assert [os.path.basename(p) for p in paths] == ["visualize_grid.png", "visualize_interpolation.png"]
    strip = np.asarray(Image.open(paths[1]))
    assert strip.shape == (8 * 16, 8 * 16, 3)
    # each row moves from one z to another: neighbours in a row differ less than the row's ends
    row = strip[:16].reshape(16, 8, 16, 3).transpose(1, 0, 2, 3).astype(float)
    assert np.abs(row[1] - row[0]).mean() <= np.abs(row[7] - row[0]).mean()


def test_config_saved_by_a_run_reloads(trained):
    cfg, _, _, _ = trained
    config_mod.save(cfg)
    with open(os.path.join(cfg.out_dir, "config.json")) as f:
        assert json.load(f)["c_dim"] == 3
    assert config_mod.load(dcgan.Config, cfg.out_dir) == cfg
