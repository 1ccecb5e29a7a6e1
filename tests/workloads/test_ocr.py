"""OCR of digit strings: config checks, the line generator, CTC decoding, a short train that learns,
export, serving (uint8 lines and encoded PNGs), `tfcluster predict --image`."""

import os

import numpy as np
import pytest

from tfcluster import config as config_mod
from tfcluster import workloads
from tfcluster.workloads import ocr


@pytest.mark.parametrize("kw, words", [
    ({"min_digits": 0}, "--min_digits"),
    ({"min_digits": 5, "max_digits": 3}, "--max_digits"),
    ({"max_digits": 40}, "--max_digits 40"),
    ({"batch_size": 33, "num_workers": 2}, "--batch_size 33 must divide by --num_workers 2"),
])
def test_config_checks_name_the_flag(kw, words):
    with pytest.raises(ValueError, match=words):
        ocr.Config(**kw)


def test_the_workload_contract():
    wl = workloads.get("ocr")
    assert wl.config is ocr.Config and wl.serving.name == "ocr" and not wl.is_rl
    assert (wl.metric, wl.mode) == ("eval/sequence_accuracy", "max")
    assert set(wl.search_space({})) <= {f for f in config_mod.field_docs(ocr.Config)}


def test_lines_are_grey_32x256_deterministic_and_varied():
    fonts = ocr.find_fonts("")
    assert None in fonts  # Pillow's own font is always there
    a = ocr.samples(7, 1, 18, fonts)
    b = ocr.samples(7, 1, 18, fonts)
    first = [next(a) for _ in range(40)]
    again = [next(b) for _ in range(40)]
    for (img, label), (img2, label2) in zip(first, again):
        assert img.dtype == np.uint8 and img.shape == (32, 256, 1)
        np.testing.assert_array_equal(img, img2)
        np.testing.assert_array_equal(label, label2)
        assert 1 <= len(label) <= 18 and label.min() >= 0 and label.max() <= 9
    assert len({len(l) for _, l in first}) > 5  # variable length
    assert len({int(img.mean()) // 16 for img, _ in first}) > 3  # varied backgrounds and ink
    assert not any(np.array_equal(first[0][0], x) for x, _ in first[1:])


def test_a_font_option_that_matches_nothing_is_one_line():
    from tfcluster.errors import UserError

    ocr.find_fonts.cache_clear()
    with pytest.raises(UserError, match="--fonts: no font file matches '/no/such/\\*.ttf'"):
        ocr.find_fonts("/no/such/*.ttf")


def test_ctc_decoding_and_scores():
    import tensorflow as tf

    from tfcluster.workloads.ocr import model

    # logits over 6 steps for "1 1 <blank> 1 2 2" -> "112" (repeats merge unless a blank separates them)
    path = [1, 1, ocr.BLANK, 1, 2, 2]
    logits = tf.one_hot([path], ocr.BLANK + 1) * 10.0
    ids, score = model.decode(logits)
    assert [s.decode() for s in model.ids_to_strings(ids).numpy()] == ["112"]
    beam_ids, _ = model.decode(logits, beam_width=4)
    assert [s.decode() for s in model.ids_to_strings(beam_ids).numpy()] == ["112"]
    assert score.shape == (1,) and float(score[0]) > -0.01  # one confident path: log-prob about 0
    assert model.scores(["112", "90", ""], ["112", "91", "5"]) == {
        "eval/sequence_accuracy": pytest.approx(1 / 3), "eval/char_error_rate": pytest.approx(2 / 6)}
    # the CTC loss of the path's own labels is small, of other labels large
    labels = tf.constant([[1, 1, 2, -1]])
    assert float(model.ctc_loss(labels, logits)[0]) < float(model.ctc_loss(tf.constant([[3, 4, -1, -1]]), logits)[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short run on short clean strings: enough to learn to read them."""
    from tfcluster.metrics import read_metrics
    from tfcluster.train.loop import run_loop
    from tfcluster.workloads.ocr import model

    out = tmp_path_factory.mktemp("ocr")
    cfg = ocr.Config(out_dir=str(out / "run"), model_base_path=str(out / "models"), min_digits=1, max_digits=4,
                     noise=0.0, filters=16, num_units=32, batch_size=32, num_train_steps=500, learning_rate=0.003,
                     steps_per_stats=50, steps_per_external_eval=250, eval_images=100, seed=1)
    cfg = ocr.prepare(cfg)
    config_mod.save(cfg)
    tasks = []
    run_loop(lambda s: tasks.append(model.Task(cfg, s)) or tasks[-1], cfg)
    return cfg, tasks[-1], read_metrics(cfg.out_dir)


@pytest.mark.slow
def test_loss_falls_and_it_learns_to_read(trained):
    _, _, records = trained
    losses = [r["train/ctc_loss"] for r in records if "train/ctc_loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    evals = [r for r in records if "eval/sequence_accuracy" in r]
    assert evals[-1]["eval/sequence_accuracy"] > 0.5, evals  # chance is 0
    assert evals[-1]["eval/char_error_rate"] < 0.3, evals


@pytest.mark.slow
def test_export_serves_what_it_recognizes_in_process(trained, tmp_path, tf_serving_run):
    import tensorflow as tf

    from tfcluster.workloads.ocr import model

    cfg, task, _ = trained
    path = workloads.get("ocr").export(cfg, "best")
    assert path.endswith(os.path.join("ocr", "1"))
    images, truth = ocr.eval_set(cfg)
    images = images[:20]
    local = task.recognize(images)
    served = tf_serving_run(path, {"image": images})  # as TF Serving loads it
    assert [s.decode() for s in served["digits"]] == local
    assert served["score"].shape == (20,) and (served["score"] <= 0).all()
    # encoded PNGs of another size (64 high) through serving_png: the same strings
    from PIL import Image

    pngs = []
    for img in images:
        f = tmp_path / f"{len(pngs)}.png"
        Image.fromarray(img[..., 0]).resize((512, 64)).save(f)
        pngs.append(f.read_bytes())
    by_png = tf_serving_run(path, {"image_bytes": np.array(pngs, dtype=object)}, signature="serving_png")
    agree = np.mean([p.decode() == s for p, s in zip(by_png["digits"], local)])
    assert agree >= 0.9, (by_png["digits"], local)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image must have shape \[batch, 32, 256, 1\]"):
        tf_serving_run(path, {"image": np.zeros((1, 32, 128, 1), np.uint8)})


@pytest.mark.slow
def test_predict_image_through_the_model_server(trained, tmp_path, capsys):
    from tfcluster.serving import LocalServer
    from tfcluster.serving import cli

    cfg, task, _ = trained
    base = tmp_path / "models"
    path = workloads.get("ocr").export(config_mod.build(ocr.Config, {**config_mod.to_dict(cfg), "model_base_path": str(base)}),
                                       "best")
    files = ocr.write_samples(str(tmp_path / "png"), n=6, seed=123, cfg=cfg)
    from tfcluster.images import fit_image

    want = task.recognize(np.stack([fit_image(f, 32, 256, 1) for f, _ in files]))
    with LocalServer(model_name="ocr", model_base_path=os.path.dirname(path), rest_api_port=0) as srv:
        srv.wait_until_available("ocr", timeout_s=120)
        assert cli.main(["--server", srv.target, "--model", "ocr", *sum((["--image", f] for f, _ in files), [])]) == 0
        assert capsys.readouterr().out.splitlines() == want
        with pytest.raises(SystemExit) as e:
            cli.main(["--server", srv.target, "--model", "ocr", "--image", str(tmp_path / "missing.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == f"error: image {tmp_path / 'missing.png'} not found\n"
