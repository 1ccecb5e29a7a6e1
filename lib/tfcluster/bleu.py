"""Corpus BLEU-4 with brevity penalty (Papineni et al., 2002), as tensorflow/nmt's `bleu.py`.

Pure Python on token lists. Equal to `sacrebleu.corpus_bleu(..., tokenize="none",
smooth_method="none")` on the same tokens with one reference per sentence (tested).
"""

from __future__ import annotations

import collections
import math
from typing import Sequence


def ngrams(tokens: Sequence[str], max_order: int) -> collections.Counter:
    """Counts of all n-grams of order 1..max_order."""
    counts: collections.Counter = collections.Counter()
    for order in range(1, max_order + 1):
        for i in range(len(tokens) - order + 1):
            counts[tuple(tokens[i : i + order])] += 1
    return counts


def corpus_bleu(
    references: Sequence[Sequence[Sequence[str]]],
    hypotheses: Sequence[Sequence[str]],
    max_order: int = 4,
    smooth: bool = False,
) -> dict[str, float]:
    """BLEU of `hypotheses` against `references` (a list of references per hypothesis).

    Returns {"bleu": 0..100, "bp", "ratio", "precisions" (list, 0..100), "hyp_len", "ref_len"}.
    The reference length is the closest reference length (ties: the shorter), as sacrebleu.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    matches = [0] * max_order
    possible = [0] * max_order
    hyp_len = ref_len = 0
    for refs, hyp in zip(references, hypotheses):
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        merged: collections.Counter = collections.Counter()
        for r in refs:
            merged |= ngrams(r, max_order)
        overlap = ngrams(hyp, max_order) & merged
        for ngram, count in overlap.items():
            matches[len(ngram) - 1] += count
        for order in range(1, max_order + 1):
            possible[order - 1] += max(0, len(hyp) - order + 1)
    precisions = [0.0] * max_order
    for i in range(max_order):
        if smooth:
            precisions[i] = (matches[i] + 1.0) / (possible[i] + 1.0)
        elif possible[i] > 0:
            precisions[i] = matches[i] / possible[i]
    if min(precisions) > 0:
        geo_mean = math.exp(sum(math.log(p) for p in precisions) / max_order)
    else:
        geo_mean = 0.0
    ratio = hyp_len / ref_len if ref_len else 0.0
    if ratio > 1.0 or ref_len == 0:
        bp = 1.0
    elif ratio == 0.0:
        bp = 0.0
    else:
        bp = math.exp(1.0 - 1.0 / ratio)
    return {
        "bleu": 100.0 * geo_mean * bp,
        "bp": bp,
        "ratio": ratio,
        "precisions": [100.0 * p for p in precisions],
        "hyp_len": float(hyp_len),
        "ref_len": float(ref_len),
    }


# Moses' tokenizer escapes these; the lowercased tokenized references of Multi30k carry them.
_MOSES_ESCAPES = (("&apos;", "'"), ("&quot;", '"'), ("&lt;", "<"), ("&gt;", ">"), ("&#91;", "["), ("&#93;", "]"),
                  ("&#124;", "|"), ("&amp;", "&"))


def tokenized_reference_bleu(hypotheses: Sequence[str], tokenized_references: Sequence[str]) -> float:
    """BLEU the way published Multi30k figures are scored: against the dataset's lowercased, Moses-tokenized
    references (`*.lc.norm.tok.*`), the output lowercased and both sides split by the same rules (sacrebleu's
    13a, which leaves already-split text as it is; Moses' escapes undone first)."""
    import sacrebleu

    refs = list(tokenized_references)
    for escaped, char in _MOSES_ESCAPES:
        refs = [r.replace(escaped, char) for r in refs]
    return float(sacrebleu.corpus_bleu([h.lower() for h in hypotheses], [[r.lower() for r in refs]], tokenize="13a").score)
