import random

import pytest
import sacrebleu

from tfcluster.bleu import corpus_bleu


def test_perfect_and_empty():
    refs = [["a", "b", "c", "d", "e"]]
    assert corpus_bleu([refs], [refs[0]])["bleu"] == pytest.approx(100.0)
    assert corpus_bleu([refs], [["x", "y"]])["bleu"] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_equals_sacrebleu_tokenize_none(seed):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(12)]
    refs, hyps = [], []
    for _ in range(60):
        ref = [rng.choice(words) for _ in range(rng.randint(4, 14))]
        hyp = [w if rng.random() < 0.7 else rng.choice(words) for w in ref]
        if rng.random() < 0.3:
            hyp = hyp[: rng.randint(2, len(hyp))]  # short: brevity penalty
        refs.append(ref)
        hyps.append(hyp)
    ours = corpus_bleu([[r] for r in refs], hyps)
    ref_bleu = sacrebleu.corpus_bleu(
        [" ".join(h) for h in hyps], [[" ".join(r) for r in refs]], tokenize="none", smooth_method="none"
    )
    assert ours["bleu"] == pytest.approx(ref_bleu.score, abs=1e-9)
    assert ours["bp"] == pytest.approx(ref_bleu.bp, abs=1e-9)


def test_tokenized_reference_bleu_lowercases_the_output_and_undoes_moses_escapes():
    from tfcluster.bleu import tokenized_reference_bleu

    hyps = ["Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.", "Der Hund des Mannes läuft."]
    refs = ["ein mann mit einem orangefarbenen hut , der etwas anstarrt .", "der hund des mannes läuft ."]
    assert tokenized_reference_bleu(hyps, refs) == pytest.approx(100.0)
    assert tokenized_reference_bleu(["Peter's Hund."], ["peter &apos;s hund ."]) == pytest.approx(
        tokenized_reference_bleu(["Peter's Hund."], ["peter 's hund ."]))
    assert tokenized_reference_bleu(["Eine Katze schläft."], ["ein hund läuft ."]) < 20
