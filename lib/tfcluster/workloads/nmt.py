"""Neural machine translation: tensorflow/nmt's LSTM seq2seq with attention, on Ray Train.

This module is the light part (no TensorFlow import): Config, `prepare` (vocabularies), the
inference mode and the contract object. `nmt_model.py` holds the model (LSTM, attention,
encoder/decoder, with greedy and beam decoding as its methods), the training task
(train step, BLEU/perplexity evaluation) and the export; its names are also reachable
here (`nmt.Task`, `nmt.export_checkpoint`), imported on first use.

Defaults come from tensorflow/nmt (`nmt.py` flags and `standard_hparams`); the book's
chapter 16 runs are presets in `tfcluster/presets/`. Differences from tensorflow/nmt,
kept on purpose: `--batch_size` is the global batch, split across `--num_workers`;
gradients are clipped by the global norm of the all-reduced gradient (what a single
process computes); without `--input_feeding` the decoder and the attention run over the
whole target sequence at once (Luong's "no input feeding" variant), which is much
faster on CPU.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

from tfcluster import contract
from tfcluster.config import LoopConfig
from tfcluster.data import text
from tfcluster.errors import UserError
from tfcluster.tune import spaces
from tfcluster.workloads.base import Workload, model_part

ATTENTIONS = ("", "luong", "scaled_luong", "bahdanau", "normed_bahdanau")


# ============================================================================ Config


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(LoopConfig):
    """tensorflow/nmt's flags (same names and defaults unless noted)."""

    src: str = ""
    """Source language suffix, e.g. en (files are prefix.src)."""
    tgt: str = ""
    """Target language suffix, e.g. de."""
    train_prefix: str = ""
    """Train prefix: prefix.src / prefix.tgt (plain or .gz)."""
    dev_prefix: str = ""
    """Dev prefix for BLEU and perplexity during training (eval/bleu, eval/ppl)."""
    test_prefix: str = ""
    """Test prefix, evaluated with dev (eval/test_bleu)."""
    vocab_prefix: str = ""
    """Vocab prefix: prefix.src / prefix.tgt, one token per line; empty: build from train data."""
    vocab_size: int = 30000
    """Largest vocabulary built from the training data when --vocab_prefix is empty (tokens, specials included)."""
    words_min_frequency: int = 1
    """Vocabulary cut-off when built from the training data: tokens seen fewer times become <unk> (OpenNMT's
    -words_min_frequency; 1: keep every token up to --vocab_size)."""
    tokenize: Literal["space", "simple"] = "space"
    """Word-level tokens (--subword none): space: text is pre-tokenized (tensorflow/nmt); simple: lowercase and
    split punctuation (raw text)."""
    subword: Literal["none", "unigram", "bpe"] = "none"
    """Subword vocabularies: a SentencePiece model (unigram or BPE, with byte fallback) per language, trained on the
    training data by the driver and run inside the graph and the exported SavedModel: raw cased text in, detokenized
    cased text out, never <unk>. none: word vocabularies split by --tokenize (tensorflow/nmt)."""
    subword_vocab_size: int = 8000
    """Pieces per SentencePiece model (specials and the 256 byte pieces included); smaller on small corpora."""
    num_units: int = 32
    """LSTM and attention size (tensorflow/nmt: 32)."""
    num_layers: int = 2
    """Encoder and decoder depth (tensorflow/nmt: 2)."""
    encoder_type: Literal["uni", "bi"] = "uni"
    """uni: forward LSTMs; bi: num_layers/2 bidirectional layers (tensorflow/nmt)."""
    attention: Literal["", "luong", "scaled_luong", "bahdanau", "normed_bahdanau"] = ""
    """Attention mechanism; empty: none (tensorflow/nmt)."""
    input_feeding: bool = True
    """Feed the previous attention vector into the decoder input (tensorflow/nmt's AttentionWrapper)."""
    pass_hidden_state: bool = True
    """Start the decoder from the encoder's final state (tensorflow/nmt)."""
    dropout: float = 0.2
    """Dropout rate on LSTM inputs (tensorflow/nmt: 0.2)."""
    label_smoothing: float = 0.0
    """Spread this much of each target token's probability evenly over the vocabulary in the training loss
    (Szegedy et al.; 0.1 in the Transformer and GNMT); perplexities stay the plain ones."""
    share_decoder_embeddings: bool = False
    """Tie the decoder's input embedding and output projection (Press and Wolf; OpenNMT's
    -share_decoder_embeddings): fewer parameters, less overfitting on small data."""
    init_weight: float = 0.1
    """Weights start uniform in [-init_weight, init_weight] (tensorflow/nmt: 0.1)."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    """sgd (tensorflow/nmt default, lr 1.0) or adam (lr 0.001 recommended)."""
    learning_rate: float = 1.0
    """Base learning rate (tensorflow/nmt: 1.0 for sgd)."""
    warmup_steps: int = 0
    """Steps of t2t-style exponential warm-up (tensorflow/nmt)."""
    decay_scheme: Literal["", "luong5", "luong10", "luong234"] = ""
    """Halve the rate 5 or 10 times over the second half, or 4 times after 2/3 of training (tensorflow/nmt)."""
    max_gradient_norm: float = 5.0
    """Clip gradients to this global norm (tensorflow/nmt: 5)."""
    batch_size: int = 128
    """Global batch size in sentence pairs, split across workers (tensorflow/nmt: 128)."""
    num_train_steps: int = 12000
    """Training steps (tensorflow/nmt: 12000)."""
    src_max_len: int = 50
    """Longest source sentence in training, in tokens; longer ones are cut (tensorflow/nmt: 50)."""
    tgt_max_len: int = 50
    """Longest target sentence in training, in tokens (tensorflow/nmt: 50)."""
    num_buckets: int = 5
    """Length buckets for batching (tensorflow/nmt: 5)."""
    beam_width: int = 0
    """Beam width for decoding; 0: greedy (tensorflow/nmt)."""
    length_penalty_weight: float = 0.0
    """GNMT length penalty alpha for beam search (tensorflow/nmt: 0)."""
    tgt_max_len_infer: int = 0
    """Longest translation; 0: twice the source length (tensorflow/nmt's decoding_length_factor 2)."""
    infer_batch_size: int = 32
    """Batch size for evaluation and inference (tensorflow/nmt: 32)."""
    metrics: str = "bleu"
    """Evaluation metrics, comma separated; bleu (tensorflow/nmt)."""
    inference_input_file: str = ""
    """Translate this file with the trained model instead of training."""
    inference_output_file: str = ""
    """Where translations of --inference_input_file go (default: stdout)."""
    inference_ref_file: str = ""
    """References for --inference_input_file; prints BLEU."""

    def __post_init__(self) -> None:
        self.check_run()
        if self.num_layers < 1:
            raise ValueError(f"--num_layers must be at least 1, got {self.num_layers}")
        if self.encoder_type == "bi" and self.num_layers % 2:
            raise ValueError(f"--encoder_type bi needs an even --num_layers, got {self.num_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.subword != "none" and self.subword_vocab_size < 300:
            raise ValueError(f"--subword_vocab_size must be at least 300 (3 specials and 256 byte pieces), got {self.subword_vocab_size}")
        if self.words_min_frequency < 1:
            raise ValueError(f"--words_min_frequency must be at least 1, got {self.words_min_frequency}")
        if self.batch_size < self.num_workers:
            raise ValueError(f"--batch_size {self.batch_size} is smaller than --num_workers {self.num_workers}")
        if self.beam_width < 0:
            raise ValueError(f"--beam_width must be 0 (greedy) or more, got {self.beam_width}")
        unknown = {m.strip() for m in self.metrics.split(",") if m.strip()} - {"bleu"}
        if unknown:
            raise ValueError(f"--metrics: unsupported {', '.join(sorted(unknown))}; supported: bleu")

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers

    @property
    def vocab_files(self) -> tuple[str, str]:
        """The checked vocabularies the run uses, kept in out_dir (tensorflow/nmt does the same); with --subword,
        the pieces of the SentencePiece models, one per line, for reading."""
        return os.path.join(self.out_dir, f"vocab.{self.src}"), os.path.join(self.out_dir, f"vocab.{self.tgt}")

    @property
    def subword_models(self) -> tuple[str, str]:
        """With --subword: the SentencePiece models the run uses (`spm.<lang>.model` in out_dir)."""
        return os.path.join(self.out_dir, f"spm.{self.src}.model"), os.path.join(self.out_dir, f"spm.{self.tgt}.model")

    @property
    def bleu_tokenize(self) -> str:
        """The tokenizer of the tokenized BLEU (eval/bleu_tok): the word vocabulary's, or `simple` (lowercased,
        punctuation split) beside subwords."""
        return self.tokenize if self.subword == "none" else "simple"


def prepare(cfg: Config) -> Config:
    """Driver-side checks and vocabularies, once before workers start."""
    import tensorflow as tf

    if not (cfg.src and cfg.tgt):
        raise UserError("--src and --tgt are required (language suffixes, e.g. --src en --tgt de)")
    if not cfg.train_prefix:
        raise UserError("--train_prefix is required (files prefix.src and prefix.tgt)")
    pairs = text.file_pairs(cfg.train_prefix, cfg.src, cfg.tgt)
    for src_file, tgt_file in pairs:
        text.check_parallel(src_file, tgt_file)
    for prefix in (cfg.dev_prefix, cfg.test_prefix):
        if prefix:
            text.check_parallel(text.resolve(prefix, cfg.src), text.resolve(prefix, cfg.tgt))
    tf.io.gfile.makedirs(cfg.out_dir)
    named = cfg.train_prefix if len(pairs) > 1 else None
    for i, lang in enumerate((cfg.src, cfg.tgt)):
        files = [p[i] for p in pairs]
        path = named and f"{named}.{lang} ({len(files)} files)" or files[0]
        if cfg.subword != "none":
            _prepare_subwords(cfg, lang, files, path, cfg.vocab_files[i], cfg.subword_models[i])
            continue
        out = cfg.vocab_files[i]
        if tf.io.gfile.exists(out):
            continue  # resume: ids must not change
        if cfg.vocab_prefix:
            vocab, changed = text.check_vocab(text.load_vocab(text.resolve(cfg.vocab_prefix, lang, "vocab")))
            if changed:
                print(f"# vocab {cfg.vocab_prefix}.{lang} did not start with <unk> <s> </s>; prepended them, saved {out}")
        else:
            lines = (line for f in files for line in text.read_lines(f))
            vocab = text.build_vocab(text.tokenize_py(lines, cfg.tokenize), cfg.vocab_size,
                                     cfg.words_min_frequency)
            cut = f" (tokens seen at least {cfg.words_min_frequency} times)" if cfg.words_min_frequency > 1 else ""
            print(f"# built a {len(vocab)}-token vocabulary{cut} from {path}, saved {out}")
        text.save_vocab(vocab, out)
    return cfg


def _prepare_subwords(cfg: Config, lang: str, files: list[str], shown: str, vocab_out: str, model_out: str) -> None:
    """The SentencePiece model of one language: kept when out_dir has it (resume: ids must not change), taken from
    --vocab_prefix (`prefix.<lang>.model`), else trained on the training files; its pieces go to vocab_out."""
    import tensorflow as tf

    from tfcluster import storage
    from tfcluster.data import subword

    if not tf.io.gfile.exists(model_out):
        if cfg.vocab_prefix:
            src = text.resolve(cfg.vocab_prefix, f"{lang}.model", "SentencePiece model")
            model = subword.check_model(open(storage.local_copy(src), "rb").read(), src)
            print(f"# SentencePiece model {storage.display(src)}: {subword.size(model)} pieces, saved {model_out}")
        else:
            lines = (line for f in files for line in text.read_lines(f))
            model = subword.train(lines, cfg.subword_vocab_size, cfg.subword, seed=cfg.seed)
            print(f"# trained a {subword.size(model)}-piece SentencePiece {cfg.subword} model (byte fallback) on {shown}, "
                  f"saved {model_out}", flush=True)
        with tf.io.gfile.GFile(model_out, "wb") as f:
            f.write(model)
    if not tf.io.gfile.exists(vocab_out):
        with tf.io.gfile.GFile(model_out, "rb") as f:
            text.save_vocab(subword.pieces(f.read()), vocab_out)


def vocab_sizes(cfg: Config) -> tuple[int, int]:
    return tuple(len(text.load_vocab(p)) for p in cfg.vocab_files)  # type: ignore[return-value]


def sample_sentences(cfg: Config, n: int = 4) -> list[str]:
    prefix = cfg.dev_prefix or cfg.train_prefix
    try:
        lines = text.read_lines(text.resolve(prefix, cfg.src))
        out = [l for _, l in zip(range(n), (l for l in lines if l.strip()))]
    except UserError:
        out = []
    return out or ["hello ."]


# The model part (`nmt_model.py`, with TensorFlow) imports this module; this module reaches it one way
# only, lazily by name: `nmt.Task`, `nmt.export_checkpoint`, ... import it on first use.
_model = __getattr__ = model_part(__name__, "tfcluster.workloads.nmt_model")


def _task(cfg: Config, strategy: Any, ctx: Any):
    return _model("Task")(cfg, strategy, ctx)


def _export(cfg: Config, which: str = "best") -> str:
    return _model("export_checkpoint")(cfg, which)


def offline(cfg: Config) -> bool:
    """Inference mode instead of training when --inference_input_file is given."""
    if cfg.inference_input_file:
        _model("translate_file")(cfg)
        return True
    return False


def _release_data(cfg: Config) -> dict[str, Any]:
    """--promote: the run's dev set (else its test set), translated by the served version."""
    prefix = cfg.dev_prefix or cfg.test_prefix
    if not prefix:
        raise UserError("--promote needs --dev_prefix or --test_prefix (the evaluation set of the release check)")
    return {"source_file": text.resolve(prefix, cfg.src), "reference_file": text.resolve(prefix, cfg.tgt)}


def _release_bleu(served: Any, data: dict[str, Any]) -> float:
    from tfcluster.eval.served import translation_bleu

    return translation_bleu(served, data)


WORKLOAD = Workload(
    name="nmt", config=Config, serving=contract.NMT, task=_task, export=_export,
    prepare=prepare, offline=offline, metric="eval/bleu", mode="max", search_space=spaces.nmt_space,
    release=contract.ReleaseCheck("bleu", "max", _release_bleu, _release_data),
    description=__doc__.splitlines()[0],
)

