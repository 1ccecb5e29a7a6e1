#!/usr/bin/env python3
"""The exported NMT model, served: test BLEU through `tfcluster serve` against the BLEU the run logged.

    python bench/nmt_served_bleu.py --out_dir runs/nmt_multi30k_en_de --model_base_path runs/models/nmt \
        [--prefix ../shared/data/multi30k/test_2016_flickr] [--out bench/results/nmt_served_bleu.json]

Starts the local model server on the model's base path (gRPC, the newest version), sends the
test sources in requests of `--batch` raw sentences through the Python client, and scores the
`translation` outputs the way the training evaluation does: `bleu`, sacrebleu's corpus BLEU of
the output against the raw references (cased, 13a); `bleu_tok`, BLEU on the project's tokens of
both sides; and, where the corpus has them (Multi30k's `<prefix>.lc.norm.tok.<tgt>`),
`bleu_lc_tok` against the dataset's lowercased tokenized references, as published Multi30k
figures are scored. The logged figures are those of the kept model (the evaluation with the
best dev BLEU, the checkpoint average included): they must be equal, since subwords (or
tokenizing and lookup) and beam search are inside the SavedModel. Also counts `<unk>` in the
output. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from report import emit  # noqa: E402  (bench/report.py, beside this file)


def kept_record(records: list[dict]) -> dict:
    """The evaluation whose model is best/ (highest dev BLEU; the later one on a tie)."""
    evals = [r for r in records if "eval/bleu" in r]
    return max(reversed(evals), key=lambda r: r["eval/bleu"]) if evals else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out_dir", required=True, help="the training run (config.json, metrics.jsonl)")
    ap.add_argument("--model_base_path", required=True, help="the exported model's base path, e.g. models/nmt")
    ap.add_argument("--prefix", default="", help="corpus prefix to translate (default: the run's --test_prefix)")
    ap.add_argument("--batch", type=int, default=32, help="sentences per request")
    ap.add_argument("--out", default="bench/results/nmt_served_bleu.json")
    a = ap.parse_args()

    from tfcluster import config as config_mod
    from tfcluster.data import text
    from tfcluster.errors import UserError
    from tfcluster.metrics import read_metrics
    from tfcluster.serving import LocalServer
    from tfcluster.workloads import nmt

    cfg = config_mod.load(nmt.Config, a.out_dir)
    prefix = a.prefix or cfg.test_prefix
    if not prefix:
        raise UserError("--prefix is required: the run has no --test_prefix")
    sources, refs, tok_refs = nmt.eval_pairs(prefix, cfg)
    with LocalServer(model_name="nmt", model_base_path=os.path.abspath(a.model_base_path)) as srv:
        version = srv.wait_until_available("nmt", timeout_s=300)["nmt"]
        client = srv.client(timeout_s=600)
        hyps, t0 = [], time.perf_counter()
        for i in range(0, len(sources), a.batch):
            out = client.predict("nmt", {"source": sources[i : i + a.batch]})["translation"]
            hyps += [s.decode("utf-8") for s in out.tolist()]
        seconds = time.perf_counter() - t0
    served = nmt.scores(hyps, refs, cfg, tok_refs)
    kept = kept_record(read_metrics(a.out_dir))
    is_test = os.path.abspath(prefix) == os.path.abspath(cfg.test_prefix)
    logged = {k: kept.get(f"eval/test_{k}") for k in served} if is_test else {}
    emit({"benchmark": "nmt_served_bleu", "run": a.out_dir, "model_base_path": a.model_base_path, "version": version,
          "prefix": prefix, "sentences": len(sources), "subword": cfg.subword,
          "served": {k: round(v, 2) for k, v in served.items()},
          "logged": {k: None if v is None else round(v, 2) for k, v in logged.items()},
          "scored_against": {"bleu": "raw references, cased, sacrebleu 13a (sacrebleu's defaults)",
                             "bleu_tok": f"both sides split by the `{cfg.bleu_tokenize}` tokenizer (lowercased when simple)",
                             "bleu_lc_tok": "the dataset's lowercased Moses-tokenized references, output lowercased, 13a"},
          "logged_at_step": kept.get("step"), "logged_is_checkpoint_average": "eval/avg_ckpts" in kept,
          "equal": None if not logged.get("bleu") else abs(served["bleu"] - logged["bleu"]) < 0.01,
          "unk_in_output": sum(h.split().count(text.UNK) for h in hyps),
          "seconds": round(seconds, 1), "sentences_per_s": round(len(sources) / seconds, 1), "batch": a.batch,
          "beam_width": cfg.beam_width, "length_penalty_weight": cfg.length_penalty_weight,
          "cpus": os.cpu_count(), "sample": [{"source": s, "translation": h} for s, h in zip(sources[:3], hyps[:3])]},
         a.out)


if __name__ == "__main__":
    main()
