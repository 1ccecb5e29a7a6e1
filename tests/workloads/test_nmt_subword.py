"""NMT with SentencePiece subwords: raw cased text in, detokenized cased text out, no <unk>, standard BLEU.

The corpus is generated: cased sentences with punctuation, numbers and a fixed word-for-word dictionary
(German-looking words), so a small model learns it and its output can be checked exactly.
"""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfcluster import config as config_mod
from tfcluster import contract, export
from tfcluster.metrics import read_metrics
from tfcluster.train.loop import WorkerContext, run_loop
from tfcluster.workloads import nmt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = {"man": "Mann", "woman": "Frau", "dog": "Hund", "cat": "Katze", "sees": "sieht", "rides": "fährt",
         "walks": "läuft", "big": "große", "small": "kleine", "red": "rote", "blue": "blaue", "ball": "Ball",
         "bike": "Fahrrad", "street": "Straße", "park": "Park", "in": "in", "the": "der"}
UNSEEN = ["A zebra 🦓 sees 42 Äpfel in Zürich.", "北京 and Москва, naïve café!", "Xylophone quartz jig 7 ☃"]


def _sentence(rng):
    words = [rng.choice(list(WORDS)) for _ in range(rng.randint(2, 6))]
    src = " ".join(words).capitalize() + rng.choice([".", "!", "?"])
    tgt = " ".join(WORDS[w] for w in words)
    return src, tgt[0].upper() + tgt[1:] + src[-1]


def write_corpus(directory, sizes):
    rng = random.Random(0)
    os.makedirs(directory, exist_ok=True)
    prefixes = {}
    for split, n in sizes.items():
        pairs = [_sentence(rng) for _ in range(n)]
        prefix = os.path.join(directory, split)
        for lang, i in (("en", 0), ("de", 1)):
            with open(f"{prefix}.{lang}", "w", encoding="utf-8") as f:
                f.write("\n".join(p[i] for p in pairs) + "\n")
        prefixes[split] = prefix
    return prefixes


def test_sentencepiece_models_are_trained_by_prepare_and_round_trip_any_text(tmp_path):
    p = write_corpus(str(tmp_path / "data"), {"train": 300})
    cfg = nmt.prepare(nmt.Config(src="en", tgt="de", train_prefix=p["train"], out_dir=str(tmp_path / "run"),
                                 subword="bpe", subword_vocab_size=320))
    for model, vocab in zip(cfg.subword_models, cfg.vocab_files):
        assert os.path.exists(model)
        pieces = open(vocab, encoding="utf-8").read().split("\n")
        assert pieces[:3] == ["<unk>", "<s>", "</s>"] and "<0xF0>" in pieces
    src, tgt = nmt.vocabularies(cfg)
    ids = src.encode(tf.constant(UNSEEN))
    assert int(tf.reduce_min(ids.flat_values)) > 2  # no <unk>, no specials: unseen characters become bytes
    assert [s.decode() for s in src.decode(ids).numpy()] == UNSEEN
    # Case reaches the model: "Mann" and "mann" are different pieces.
    assert tgt.encode(tf.constant("Mann")).numpy().tolist() != tgt.encode(tf.constant("mann")).numpy().tolist()


def test_prepare_reuses_a_given_model_and_rejects_one_without_byte_fallback(tmp_path):
    import sentencepiece as spm

    from tfcluster.errors import UserError

    p = write_corpus(str(tmp_path / "data"), {"train": 300})
    first = nmt.prepare(nmt.Config(src="en", tgt="de", train_prefix=p["train"], out_dir=str(tmp_path / "a"),
                                   subword="unigram", subword_vocab_size=320))
    os.makedirs(tmp_path / "v")
    for lang, model in zip(("en", "de"), first.subword_models):
        (tmp_path / "v" / f"spm.{lang}.model").write_bytes(open(model, "rb").read())
    again = nmt.prepare(nmt.Config(src="en", tgt="de", train_prefix=p["train"], out_dir=str(tmp_path / "b"),
                                   subword="unigram", vocab_prefix=str(tmp_path / "v" / "spm")))
    assert open(again.subword_models[1], "rb").read() == open(first.subword_models[1], "rb").read()
    spm.SentencePieceTrainer.train(input=p["train"] + ".en", model_prefix=str(tmp_path / "w" ), vocab_size=60,
                                   minloglevel=2, hard_vocab_limit=False)
    os.makedirs(tmp_path / "plain")
    for lang in ("en", "de"):
        (tmp_path / "plain" / f"spm.{lang}.model").write_bytes((tmp_path / "w.model").read_bytes())
    with pytest.raises(UserError, match="has no byte pieces; train it with --byte_fallback"):
        nmt.prepare(nmt.Config(src="en", tgt="de", train_prefix=p["train"], out_dir=str(tmp_path / "c"),
                               subword="unigram", vocab_prefix=str(tmp_path / "plain" / "spm")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("nmt_subword")
    p = write_corpus(str(d / "data"), {"train": 3000, "dev": 40, "test": 40})
    cfg = nmt.prepare(nmt.Config(
        src="en", tgt="de", train_prefix=p["train"], dev_prefix=p["dev"], test_prefix=p["test"],
        out_dir=str(d / "run"), subword="unigram", subword_vocab_size=400, num_train_steps=2000,
        steps_per_stats=500, steps_per_external_eval=1000, num_units=64, attention="scaled_luong",
        input_feeding=False, encoder_type="bi", optimizer="adam", learning_rate=0.01, batch_size=32, dropout=0.0,
    ))
    config_mod.save(cfg)
    run_loop(lambda s: nmt.Task(cfg, s, WorkerContext()), cfg)
    return cfg, p


def test_bleu_is_sacrebleu_on_cased_detokenized_text_with_the_tokenized_figure_beside_it(trained):
    cfg, p = trained
    final = read_metrics(cfg.out_dir)[-1]
    assert final["eval/bleu"] > 70 and final["eval/test_bleu"] > 70
    assert "eval/bleu_tok" in final and "eval/test_bleu_tok" in final
    # The in-process evaluation is sacrebleu's corpus BLEU of the translations against the raw references.
    import sacrebleu

    model, _ = nmt.restore(cfg, "best")
    module = nmt.serving_module(model, cfg)
    src = open(p["test"] + ".en", encoding="utf-8").read().splitlines()
    refs = open(p["test"] + ".de", encoding="utf-8").read().splitlines()
    hyps = [s.decode() for s in module.serve(tf.constant(src))["translation"].numpy()]
    best = [r for r in read_metrics(cfg.out_dir) if r.get("eval/bleu") == final.get("best/eval/bleu", final["eval/bleu"])]
    assert best and sacrebleu.corpus_bleu(hyps, [refs]).score == pytest.approx(best[-1]["eval/test_bleu"], abs=1e-6)


def test_served_translations_are_cased_detokenized_and_never_unk(trained, tmp_path, tf_serving_run):
    cfg, _ = trained
    path = nmt.export_checkpoint(cfg, which="best", model_base_path=str(tmp_path / "models"))
    export.check_signature(path, contract.NMT)
    known = ["Man sees the red ball.", "The small dog walks in the park!"]
    sentences = known + UNSEEN + [""]
    served = tf.saved_model.load(path).signatures["serving_default"](source=tf.constant(sentences))
    assert served["translation"].dtype == tf.string and served["score"].dtype == tf.float32
    got = [s.decode() for s in served["translation"].numpy()]
    model, _ = nmt.restore(cfg, "best")
    module = nmt.serving_module(model, cfg)
    assert [s.decode() for s in module.serve(tf.constant(sentences))["translation"].numpy()] == got
    # Cased German nouns of the dictionary, the sentence's own final punctuation with no space before it.
    assert got[0].startswith("Mann sieht") and got[0].endswith("Ball.")
    assert got[1].startswith("Der kleine Hund") and got[1].endswith("Park!")
    for t in got:
        assert "<unk>" not in t and "\u2047" not in t  # sentencepiece's surface for <unk>
    for t in got[:2]:
        assert t[0].isupper() and not t.endswith(" .") and not t.endswith(" !")
    # TF Serving's way of loading (a session over the MetaGraphDef) gives the same translations.
    in_session = tf_serving_run(path, {"source": np.array([s.encode() for s in sentences], dtype=object)})
    assert [s.decode() for s in in_session["translation"].tolist()] == got


def test_a_fresh_server_process_loads_a_subword_export(trained, tmp_path):
    """`tfcluster serve`'s loader registers tensorflow-text's ops itself (nothing imported them before)."""
    cfg, _ = trained
    path = nmt.export_checkpoint(cfg, which="best", model_base_path=str(tmp_path / "models"))
    code = ("import sys, numpy as np\nfrom tfcluster.serving.models import Servable\n"
            "s = Servable('nmt', 1, sys.argv[1], {'serve'})\n"
            "print(s.signatures['serving_default'].run({'source': np.array([b'A dog rides a bike.'], dtype=object)})"
            "['translation'][0].decode())\n")
    r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.strip().splitlines()[-1]
    assert out[0].isupper() and out.endswith(".") and "<unk>" not in out
