"""NMT: schedule math, learning a known corpus, decoding, export equal to in-process output."""

import os
import subprocess
import sys

import numpy as np
import pytest
import keras
import tensorflow as tf

from tfcluster import config as config_mod
from tfcluster import contract, export
from tfcluster.data import toy
from tfcluster.metrics import read_metrics
from tfcluster.train.loop import WorkerContext, run_loop
from tfcluster.workloads import nmt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_learning_rate_schedule_matches_tensorflow_nmt():
    lr = lambda step, **kw: float(nmt.learning_rate_at(step, 1.0, 1200, **kw))  # noqa: E731
    assert lr(0) == lr(1199) == 1.0
    # luong234: start at 2/3 (800), halve 4 times, every (1200 - 800) / 4 = 100 steps.
    assert [lr(s, decay_scheme="luong234") for s in (799, 800, 900, 1000, 1100, 1199)] == [1.0, 1.0, 0.5, 0.25, 0.125, 0.125]
    # luong5: start at 1/2 (600), every 120 steps.
    assert lr(720, decay_scheme="luong5") == 0.5
    # t2t warm-up: 1% of the rate at step 0, full rate at warmup_steps.
    assert lr(0, warmup_steps=100) == pytest.approx(0.01)
    assert lr(100, warmup_steps=100) == 1.0


def test_decay_follows_the_time_budget_when_it_is_ahead_of_the_steps():
    lr = lambda step, progress: float(nmt.learning_rate_at(step, 1.0, 1200, decay_scheme="luong234", progress=tf.constant(progress)))  # noqa: E731
    # progress 0.75 of the time budget at step 100: the decay is where step 900 would have it.
    assert lr(100, 0.75) == 0.5
    assert lr(100, 1.0) == 0.0625  # all four halvings once the budget is used up
    assert lr(1000, 0.1) == 0.25  # the step count, when it is ahead


def test_label_smoothing_is_keras_categorical_crossentropy_with_smoothing():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(2, 3, 7)), tf.float32)
    labels = tf.constant([[1, 4, 2], [3, 0, 0]], tf.int32)
    lengths = tf.constant([3, 1])
    plain, smoothed = nmt.training_loss_sums(logits, labels, lengths, 0.1)
    cce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1, reduction=None)
    ref = cce(tf.one_hot(labels, 7), logits).numpy()
    mask = np.array([[1, 1, 1], [1, 0, 0]], np.float32)
    assert float(smoothed) == pytest.approx(float((ref * mask).sum()), rel=1e-5)
    assert float(plain) == pytest.approx(float(nmt.masked_loss_sum(logits, labels, lengths)), rel=1e-6)
    assert nmt.training_loss_sums(logits, labels, lengths, 0.0)[1] is not None


def test_vocabulary_cut_off_turns_rare_words_into_unk(tmp_path):
    (tmp_path / "t.en").write_text("a dog runs\na dog sleeps\na cat runs\n")
    (tmp_path / "t.de").write_text("ein hund rennt\nein hund schläft\neine katze rennt\n")
    cfg = nmt.prepare(nmt.Config(src="en", tgt="de", train_prefix=str(tmp_path / "t"), out_dir=str(tmp_path / "run"),
                                 words_min_frequency=2))
    assert open(cfg.vocab_files[0]).read().split() == ["<unk>", "<s>", "</s>", "a", "dog", "runs"]
    assert open(cfg.vocab_files[1]).read().split() == ["<unk>", "<s>", "</s>", "ein", "hund", "rennt"]
    with pytest.raises(ValueError, match="--words_min_frequency"):
        nmt.Config(words_min_frequency=0)


def test_length_penalty_is_gnmt():
    assert float(nmt.length_penalty(tf.constant(7), 0.0)) == 1.0
    assert float(nmt.length_penalty(tf.constant(7), 1.0)) == pytest.approx(2.0)


def test_config_checks_are_user_errors():
    with pytest.raises(ValueError, match="even --num_layers"):
        nmt.Config(encoder_type="bi", num_layers=3)
    with pytest.raises(ValueError, match="unsupported rouge"):
        nmt.Config(metrics="bleu,rouge")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small attention model trained to BLEU ~100 on the toy corpus (word-by-word dictionary)."""
    d = tmp_path_factory.mktemp("nmt")
    p = toy.write_corpus(str(d / "data"), sizes={"train": 2000, "dev": 40, "test": 40})
    cfg = nmt.Config(
        src="src", tgt="tgt", train_prefix=p["train"], dev_prefix=p["dev"], test_prefix=p["test"],
        vocab_prefix=p["vocab"], out_dir=str(d / "run"), num_train_steps=600, steps_per_stats=100,
        steps_per_external_eval=300, num_units=32, attention="scaled_luong", input_feeding=False,
        optimizer="adam", learning_rate=0.01, batch_size=32, dropout=0.0,
    )
    cfg = nmt.prepare(cfg)
    config_mod.save(cfg)
    run_loop(lambda s: nmt.Task(cfg, s, WorkerContext()), cfg)
    return cfg, p


def test_loss_falls_and_bleu_reaches_the_known_corpus(trained):
    cfg, _ = trained
    records = read_metrics(cfg.out_dir)
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses[-1] < 0.3 * losses[0]
    final = records[-1]
    assert final["step"] == 600
    assert final["eval/bleu"] > 90 and final["eval/test_bleu"] > 90
    assert final["eval/ppl"] < 1.5
    for key in ("train/ppl", "perf/tgt_tokens_per_s"):
        assert key in final
    assert os.path.isdir(os.path.join(cfg.out_dir, "tb"))


def test_export_serves_text_equal_to_in_process(trained, tmp_path, tf_serving_run):
    cfg, _ = trained
    path = nmt.export_checkpoint(cfg, which="best", model_base_path=str(tmp_path / "models"))
    assert path.endswith(os.path.join("nmt", "1"))
    export.check_signature(path, contract.NMT)
    assert os.path.exists(os.path.join(path, contract.WARMUP_FILE))
    sentences = ["a man rides a bike", "the small dog sees a red ball", "a cat sees a red ball"]
    served = tf.saved_model.load(path).signatures["serving_default"](source=tf.constant(sentences))
    model, _ = nmt.restore(cfg, "best")
    module = nmt.serving_module(model, cfg)  # tf.function methods hold their module weakly
    local = module.serve(tf.constant(sentences))
    assert served["translation"].numpy().tolist() == local["translation"].numpy().tolist()
    np.testing.assert_allclose(served["score"].numpy(), local["score"].numpy(), rtol=1e-5)
    # TF Serving's way of loading (a session restoring the saver's checkpoint) gives the same translations.
    in_session = tf_serving_run(path, {"source": np.array([x.encode() for x in sentences], dtype=object)})
    assert in_session["translation"].tolist() == local["translation"].numpy().tolist()
    got = [s.decode() for s in served["translation"].numpy()]
    # Sentences of known words translate exactly ("the" is outside the vocabulary: <unk>).
    assert got[0] == toy.reference(sentences[0]) and got[2] == toy.reference(sentences[2])


def test_beam_search_agrees_with_greedy_on_a_confident_model(trained):
    cfg, p = trained
    model, _ = nmt.restore(cfg, "last")
    beam_cfg = config_mod.build(nmt.Config, {**config_mod.to_dict(cfg), "beam_width": 4, "length_penalty_weight": 1.0})
    lines = [l.strip() for l in open(p["dev"] + ".src")][:8]
    greedy_module, beam_module = nmt.serving_module(model, cfg), nmt.serving_module(model, beam_cfg)
    greedy = greedy_module.serve(tf.constant(lines))
    beam = beam_module.serve(tf.constant(lines))
    refs = [toy.reference(l) for l in lines]
    assert [s.decode() for s in beam["translation"].numpy()] == refs
    assert [s.decode() for s in greedy["translation"].numpy()] == refs
    # Beam search never finds a worse sequence than greedy's.
    assert np.all(beam["score"].numpy() >= greedy["score"].numpy() - 1e-4)


def test_inference_input_file(trained, tmp_path):
    cfg, p = trained
    inp = tmp_path / "in.txt"
    inp.write_text("a dog walks\nthe cat\n")
    out = tmp_path / "out.txt"
    icfg = config_mod.build(nmt.Config, {**config_mod.to_dict(cfg), "inference_input_file": str(inp), "inference_output_file": str(out)})
    assert nmt.offline(icfg)
    assert out.read_text().splitlines()[0] == "A_ DOG_ WALKS_"


@pytest.mark.parametrize("attention,feeding,encoder,tied", [("bahdanau", True, "bi", False), ("normed_bahdanau", False, "uni", True),
                                                             ("luong", True, "uni", False), ("", False, "bi", True)])
def test_every_architecture_trains_and_decodes(tmp_path, attention, feeding, encoder, tied):
    p = toy.write_corpus(str(tmp_path / "data"), sizes={"train": 200, "dev": 8})
    cfg = nmt.prepare(nmt.Config(
        src="src", tgt="tgt", train_prefix=p["train"], dev_prefix=p["dev"], vocab_prefix=p["vocab"],
        out_dir=str(tmp_path / "run"), num_train_steps=4, steps_per_stats=2, num_units=8, attention=attention,
        input_feeding=feeding, encoder_type=encoder, batch_size=8, beam_width=2, share_decoder_embeddings=tied,
        label_smoothing=0.1,
    ))
    task = []
    last = run_loop(lambda s: task.append(nmt.Task(cfg, s, WorkerContext())) or task[0], cfg)
    assert np.isfinite(last["train/loss"]) and "eval/bleu" in last
    names = set(nmt.weights(task[0].model))
    assert ("output_projection.kernel" in names) is not tied and "embedding_decoder.embeddings" in names


def test_a_time_budget_stops_with_an_evaluation_and_averaging_picks_best(tmp_path):
    """--max_train_minutes ends the run early, with an eval and a checkpoint at the stop step and the
    decay run to its end; --avg_ckpts then evaluates the mean of the kept checkpoints' weights."""
    p = toy.write_corpus(str(tmp_path / "data"), sizes={"train": 300, "dev": 8, "test": 8})
    cfg = nmt.prepare(nmt.Config(
        src="src", tgt="tgt", train_prefix=p["train"], dev_prefix=p["dev"], test_prefix=p["test"], vocab_prefix=p["vocab"],
        out_dir=str(tmp_path / "run"), num_train_steps=100000, steps_per_stats=2, steps_per_external_eval=4,
        num_units=8, batch_size=8, optimizer="adam", learning_rate=0.01, decay_scheme="luong234",
        max_train_minutes=0.15, avg_ckpts=True, keep_checkpoint_max=3,
    ))
    run_loop(lambda s: nmt.Task(cfg, s, WorkerContext()), cfg)
    records = read_metrics(cfg.out_dir)
    stop = records[-1]["step"]
    assert 4 < stop < 100000 and stop % 2 == 0
    at_stop = [r for r in records if r["step"] == stop]
    assert "eval/test_bleu" in at_stop[0] and at_stop[0]["train/lr"] == pytest.approx(0.01 / 16)
    assert at_stop[-1]["eval/avg_ckpts"] == 3.0 and "eval/bleu" in at_stop[-1] and "best/eval/bleu" in at_stop[-1]
    kept = sorted(tf.io.gfile.glob(os.path.join(cfg.out_dir, "ckpt", "ckpt-*.index")))[-3:]
    key = "model/encoder_0..kernel/.ATTRIBUTES/VARIABLE_VALUE"
    mean = np.mean([tf.train.load_checkpoint(k[:-len(".index")]).get_tensor(key) for k in kept], axis=0)
    avg = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(cfg.out_dir, "avg")))
    np.testing.assert_allclose(avg.get_tensor(key), mean, rtol=1e-6)
    # The same command again has nothing left to do.
    assert run_loop(lambda s: nmt.Task(cfg, s, WorkerContext()), cfg) == {}


def _job(*args, cwd=ROOT):
    r = subprocess.run([sys.executable, "jobs/train_nmt.py", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    # TensorFlow's native library logs a few start-up lines before Python runs; drop them.
    native = ("W0000", "I0000", "E0000", "WARNING: All log messages before absl")
    r.stderr = "\n".join(l for l in r.stderr.splitlines() if not l.startswith(native))
    return r


def test_cli_errors_are_one_line(tmp_path):
    r = _job("--src", "en", "--tgt", "de", "--train_prefix", str(tmp_path / "nope"), "--out_dir", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: corpus file not found: {tmp_path}/nope.en (nor {tmp_path}/nope.en.gz)"]
    r = _job("--attention", "dot", "--out_dir", str(tmp_path / "o"))
    assert r.returncode == 2 and "invalid choice: 'dot'" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "c.en").write_text("a\nb\n")
    (tmp_path / "c.de").write_text("a\n")
    r = _job("--src", "en", "--tgt", "de", "--train_prefix", str(tmp_path / "c"), "--out_dir", str(tmp_path / "o"))
    assert r.returncode == 2 and "has 2 lines but" in r.stderr and "Traceback" not in r.stderr
