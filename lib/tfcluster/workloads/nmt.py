"""Neural machine translation: tensorflow/nmt's LSTM seq2seq with attention, on Ray Train.

Read top to bottom: Config -> data -> model (LSTM, attention, encoder/decoder) ->
train step -> decoding (greedy, beam) -> evaluate (BLEU, perplexity) -> export.

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
import math
import os
import time
from typing import Any, Literal

from tfcluster import config as config_mod
from tfcluster import contract
from tfcluster.config import RunConfig
from tfcluster.data import text
from tfcluster.errors import UserError
from tfcluster.tune import spaces
from tfcluster.workloads.base import Workload

ATTENTIONS = ("", "luong", "scaled_luong", "bahdanau", "normed_bahdanau")


# ============================================================================ Config


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(RunConfig):
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
    tokenize: Literal["space", "simple"] = "space"
    """space: text is pre-tokenized (tensorflow/nmt); simple: lowercase and split punctuation (raw text)."""
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
        """The checked vocabularies the run uses, kept in out_dir (tensorflow/nmt does the same)."""
        return os.path.join(self.out_dir, f"vocab.{self.src}"), os.path.join(self.out_dir, f"vocab.{self.tgt}")


def prepare(cfg: Config) -> Config:
    """Driver-side checks and vocabularies, once before workers start."""
    import tensorflow as tf

    if not (cfg.src and cfg.tgt):
        raise UserError("--src and --tgt are required (language suffixes, e.g. --src en --tgt de)")
    if not cfg.train_prefix:
        raise UserError("--train_prefix is required (files prefix.src and prefix.tgt)")
    src_train, tgt_train = text.resolve(cfg.train_prefix, cfg.src), text.resolve(cfg.train_prefix, cfg.tgt)
    text.check_parallel(src_train, tgt_train)
    for prefix in (cfg.dev_prefix, cfg.test_prefix):
        if prefix:
            text.check_parallel(text.resolve(prefix, cfg.src), text.resolve(prefix, cfg.tgt))
    tf.io.gfile.makedirs(cfg.out_dir)
    for lang, path, out in ((cfg.src, src_train, cfg.vocab_files[0]), (cfg.tgt, tgt_train, cfg.vocab_files[1])):
        if tf.io.gfile.exists(out):
            continue  # resume: ids must not change
        if cfg.vocab_prefix:
            vocab, changed = text.check_vocab(text.load_vocab(text.resolve(cfg.vocab_prefix, lang, "vocab")))
            if changed:
                print(f"# vocab {cfg.vocab_prefix}.{lang} did not start with <unk> <s> </s>; prepended them, saved {out}")
        else:
            vocab = text.build_vocab(text.tokenize_py(text.read_lines(path), cfg.tokenize), cfg.vocab_size)
            print(f"# built a {len(vocab)}-token vocabulary from {path}, saved {out}")
        text.save_vocab(vocab, out)
    return cfg


# ============================================================================ learning rate


def learning_rate_at(step, base_lr: float, num_train_steps: int, warmup_steps: int = 0, decay_scheme: str = ""):
    """tensorflow/nmt's schedule: t2t warm-up (exp), then luong5/luong10/luong234 halving."""
    import tensorflow as tf

    step = tf.cast(step, tf.float32)
    lr = tf.constant(base_lr, tf.float32)
    if warmup_steps > 0:
        factor = math.exp(math.log(0.01) / warmup_steps)
        lr = tf.where(step < warmup_steps, lr * tf.pow(factor, warmup_steps - step), lr)
    if decay_scheme:
        if decay_scheme == "luong234":
            start, times = int(num_train_steps * 2 / 3), 4
        else:
            start, times = num_train_steps // 2, (5 if decay_scheme == "luong5" else 10)
        decay_steps = max(1, (num_train_steps - start) // times)
        n = tf.floor(tf.maximum(step - start, 0.0) / decay_steps)
        lr = tf.where(step < start, lr, lr * tf.pow(0.5, n))
    return lr


def make_schedule(cfg: Config):
    import keras

    class NMTSchedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return learning_rate_at(step, cfg.learning_rate, cfg.num_train_steps, cfg.warmup_steps, cfg.decay_scheme)

        def get_config(self):
            return {}

    return NMTSchedule()


# ============================================================================ model


def weights(model) -> dict:
    """The model's variables by path, for checkpoints.

    Keras 3 layers held in Python lists are not children in TensorFlow's object graph, so
    checkpointing the layer itself would silently skip the LSTMs; naming every variable
    keeps checkpoints complete and readable (`encoder_0.kernel`, ...).
    """
    return {v.path.split("/", 1)[-1].replace("/", "."): v for v in model.weights}


def vocab_sizes(cfg: Config) -> tuple[int, int]:
    return tuple(len(text.load_vocab(p)) for p in cfg.vocab_files)  # type: ignore[return-value]


def build(cfg: Config):
    """The Seq2Seq model (built) and its optimizer."""
    import keras
    import tensorflow as tf

    from tfcluster.workloads.nmt_model import Seq2Seq
    vs, vt = vocab_sizes(cfg)
    model = Seq2Seq(vs, vt, config_mod.to_dict(cfg), name="nmt")
    ids = tf.ones([2, 3], tf.int32)
    model(ids, tf.constant([3, 2]), ids)
    sched = make_schedule(cfg)
    opt = keras.optimizers.SGD(sched) if cfg.optimizer == "sgd" else keras.optimizers.Adam(sched)
    opt.build(model.trainable_variables)
    return model, opt


# ============================================================================ decoding


def max_decode_len(cfg: Config, src_len):
    import tensorflow as tf

    if cfg.tgt_max_len_infer:
        return tf.constant(cfg.tgt_max_len_infer, tf.int32)
    return tf.cast(tf.round(tf.cast(tf.reduce_max(src_len), tf.float32) * 2.0), tf.int32) + 1


def length_penalty(lengths, alpha: float):
    """GNMT length penalty ((5 + len) / 6) ** alpha (tensorflow/nmt's length_penalty_weight)."""
    import tensorflow as tf

    if not alpha:
        return tf.ones_like(tf.cast(lengths, tf.float32))
    return tf.pow((5.0 + tf.cast(lengths, tf.float32)) / 6.0, alpha)


def greedy_decode(model, src, src_len, max_len):
    """Token ids [B, T] (EOS-terminated or cut at max_len) and summed log-probabilities [B]."""
    import tensorflow as tf

    memory, enc_states, mask = model.encode(src, src_len)
    b = tf.shape(src)[0]
    dec, attn = model.initial_state(enc_states, b)
    keys = model.attn.keys(memory) if model.attn is not None else None
    tok = tf.fill([b], text.SOS_ID)
    ta = tf.TensorArray(tf.int32, size=0, dynamic_size=True)
    finished = tf.zeros([b], tf.bool)
    score = tf.zeros([b])

    def body(t, tok, finished, score, dec, attn, ta):
        out, dec = model.decode_step(model.tgt_emb(tok), dec, attn, keys, memory, mask)
        logp = tf.nn.log_softmax(model.proj(out))
        nxt = tf.argmax(logp, axis=-1, output_type=tf.int32)
        nxt = tf.where(finished, text.EOS_ID, nxt)
        score += tf.where(finished, 0.0, tf.gather(logp, nxt, batch_dims=1))
        finished = tf.logical_or(finished, tf.equal(nxt, text.EOS_ID))
        return t + 1, nxt, finished, score, dec, out, ta.write(t, nxt)

    _, _, _, score, _, _, ta = tf.while_loop(
        lambda t, tok, fin, *rest: tf.logical_and(t < max_len, tf.logical_not(tf.reduce_all(fin))),
        body, (0, tok, finished, score, dec, attn, ta),
    )
    ids = tf.cond(ta.size() > 0, lambda: tf.transpose(ta.stack(), [1, 0]), lambda: tf.zeros([b, 0], tf.int32))
    return ids, score


def beam_decode(model, src, src_len, max_len, beam_width: int, alpha: float):
    """Beam search (tensorflow/nmt's BeamSearchDecoder behaviour, GNMT length penalty)."""
    import tensorflow as tf

    k = beam_width
    memory, enc_states, mask = model.encode(src, src_len)
    b = tf.shape(src)[0]

    def tile(x):
        return tf.repeat(x, k, axis=0)

    memory, mask = tile(memory), tile(mask)
    dec, attn = model.initial_state([(tile(h), tile(c)) for h, c in enc_states], b * k)
    keys = model.attn.keys(memory) if model.attn is not None else None
    v = model.tgt_vocab_size
    log_probs = tf.tile(tf.concat([[0.0], tf.fill([k - 1], -float("inf"))], 0)[None, :], [b, 1])
    finished = tf.zeros([b, k], tf.bool)
    lengths = tf.zeros([b, k], tf.int32)
    seqs = tf.zeros([b, k, 0], tf.int32)
    tok = tf.fill([b * k], text.SOS_ID)
    eos_row = tf.one_hot(text.EOS_ID, v, on_value=0.0, off_value=-float("inf"))
    batch_offsets = (tf.range(b) * k)[:, None]

    def body(t, tok, log_probs, finished, lengths, seqs, dec, attn):
        out, dec = model.decode_step(model.tgt_emb(tok), dec, attn, keys, memory, mask)
        lp = tf.reshape(tf.nn.log_softmax(model.proj(out)), [b, k, v])
        lp = tf.where(finished[:, :, None], eos_row[None, None, :], lp)
        total = log_probs[:, :, None] + lp
        new_len = lengths + tf.cast(tf.logical_not(finished), tf.int32)
        scores = total / length_penalty(new_len, alpha)[:, :, None]
        _, idx = tf.math.top_k(tf.reshape(scores, [b, k * v]), k)
        beam, nxt = idx // v, idx % v
        log_probs = tf.gather(tf.reshape(total, [b, k * v]), idx, batch_dims=1)
        lengths = tf.gather(new_len, beam, batch_dims=1)
        was_finished = tf.gather(finished, beam, batch_dims=1)
        finished = tf.logical_or(was_finished, tf.equal(nxt, text.EOS_ID))
        seqs = tf.concat([tf.gather(seqs, beam, batch_dims=1), nxt[:, :, None]], axis=2)
        flat = tf.reshape(beam + batch_offsets, [-1])
        dec = [(tf.gather(h, flat), tf.gather(c, flat)) for h, c in dec]
        attn = tf.gather(out, flat)
        return t + 1, tf.reshape(nxt, [-1]), log_probs, finished, lengths, seqs, dec, attn

    _, _, log_probs, finished, lengths, seqs, _, _ = tf.while_loop(
        lambda t, tok, lp, fin, *rest: tf.logical_and(t < max_len, tf.logical_not(tf.reduce_all(fin))),
        body,
        (0, tok, log_probs, finished, lengths, seqs, dec, attn),
        shape_invariants=(
            tf.TensorShape([]), tf.TensorShape([None]), tf.TensorShape([None, k]), tf.TensorShape([None, k]),
            tf.TensorShape([None, k]), tf.TensorShape([None, k, None]),
            [(tf.TensorShape([None, model.cfg.num_units]),) * 2 for _ in dec], tf.TensorShape([None, model.cfg.num_units]),
        ),
    )
    # top_k keeps beams sorted by (length-normalized) score: beam 0 is the best.
    return seqs[:, 0, :], log_probs[:, 0]


def decode(model, cfg: Config, src, src_len):
    max_len = max_decode_len(cfg, src_len)
    if cfg.beam_width > 1:
        return beam_decode(model, src, src_len, max_len, cfg.beam_width, cfg.length_penalty_weight)
    return greedy_decode(model, src, src_len, max_len)


def ids_to_tokens(ids, vocab):
    """Ids [B, T] -> RaggedTensor of tokens, cut at the first </s>."""
    import tensorflow as tf

    is_eos = tf.equal(ids, text.EOS_ID)
    t = tf.shape(ids)[1]
    first = tf.where(tf.reduce_any(is_eos, axis=1), tf.argmax(tf.cast(is_eos, tf.int32), axis=1, output_type=tf.int32), t)
    ragged = tf.RaggedTensor.from_tensor(ids, lengths=first)
    return tf.gather(vocab, ragged)


# ============================================================================ task (train step + evaluate)


class Task:
    """NMT for the shared loop: data shard, train step, BLEU/perplexity evaluation."""

    def __init__(self, cfg: Config, strategy, ctx):
        import tensorflow as tf

        self.cfg, self.strategy, self.ctx = cfg, strategy, ctx
        self.num_steps = cfg.num_train_steps
        self.best_metric = ("eval/bleu", "max") if cfg.dev_prefix else None
        self.model, self.optimizer = build(cfg)
        self.src_vocab_file, self.tgt_vocab_file = cfg.vocab_files
        self.src_table = text.lookup_table(self.src_vocab_file)
        self.tgt_table = text.lookup_table(self.tgt_vocab_file)
        self.tgt_vocab = tf.constant(text.load_vocab(self.tgt_vocab_file))
        self._refs: dict[str, list[list[str]]] = {}
        self._translate = None
        self._dev_loss = None

    def trackables(self):
        return {"model": weights(self.model), "optimizer": self.optimizer}

    def dataset(self, input_context):
        cfg = self.cfg
        return text.train_dataset(
            text.resolve(cfg.train_prefix, cfg.src), text.resolve(cfg.train_prefix, cfg.tgt),
            self.src_table, self.tgt_table,
            batch_size=input_context.get_per_replica_batch_size(cfg.batch_size) if input_context else cfg.batch_size,
            tokenizer=cfg.tokenize, src_max_len=cfg.src_max_len, tgt_max_len=cfg.tgt_max_len,
            num_buckets=cfg.num_buckets,
            num_shards=input_context.num_input_pipelines if input_context else 1,
            shard_index=input_context.input_pipeline_id if input_context else 0,
            seed=cfg.seed,
        )

    def replica_step(self, batch):
        import tensorflow as tf

        src, src_len, tgt_in, tgt_out, tgt_len = batch
        with tf.GradientTape() as tape:
            logits = self.model(src, src_len, tgt_in, training=True)
            loss_sum = masked_loss_sum(logits, tgt_out, tgt_len)
            loss = loss_sum / self.cfg.batch_size  # global batch (tensorflow/nmt divides by batch_size)
        variables = self.model.trainable_variables
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
        world = self.strategy.num_replicas_in_sync
        if world > 1:  # clip the global gradient, as one process would
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        grads, norm = tf.clip_by_global_norm(grads, self.cfg.max_gradient_norm)
        if world > 1:  # the optimizer sums replicas' gradients again
            grads = [g / world for g in grads]
        self.optimizer.apply_gradients(zip(grads, variables))
        return {
            "loss_sum": loss_sum,
            "predict_count": tf.cast(tf.reduce_sum(tgt_len), tf.float32),
            "src_count": tf.cast(tf.reduce_sum(src_len), tf.float32),
            "sentences": tf.cast(tf.shape(src)[0], tf.float32),
            "grad_norm": norm / world,
        }

    def stats(self, sums, steps, seconds):
        import keras

        lr = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
        return {
            "train/loss": sums["loss_sum"] / max(sums["sentences"], 1.0),
            "train/ppl": math.exp(min(sums["loss_sum"] / max(sums["predict_count"], 1.0), 100.0)),
            "train/lr": lr,
            "train/grad_norm": sums["grad_norm"] / steps,
            "perf/tgt_tokens_per_s": sums["predict_count"] / seconds,
            "perf/src_tokens_per_s": sums["src_count"] / seconds,
            "perf/step_time_s": seconds / steps,
        }

    # -- evaluation (chief only)
    def _functions(self):
        import tensorflow as tf

        if self._translate is None:
            model, cfg = self.model, self.cfg

            @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)])
            def translate(src, src_len):
                return decode(model, cfg, src, src_len)

            ids, lengths = tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)

            @tf.function(input_signature=[ids, lengths, ids, ids, lengths])
            def dev_loss(src, src_len, tgt_in, tgt_out, tgt_len):
                return masked_loss_sum(model(src, src_len, tgt_in), tgt_out, tgt_len), tf.reduce_sum(tgt_len)

            self._translate, self._dev_loss = translate, dev_loss
        return self._translate, self._dev_loss

    def references(self, prefix: str) -> list[list[str]]:
        if prefix not in self._refs:
            refs = []
            src_lines = text.read_lines(text.resolve(prefix, self.cfg.src))
            for s, toks in zip(src_lines, text.tokenize_py(text.read_lines(text.resolve(prefix, self.cfg.tgt)), self.cfg.tokenize)):
                if s.strip() and toks:
                    refs.append(toks)
            self._refs[prefix] = refs
        return self._refs[prefix]

    def evaluate_prefix(self, prefix: str) -> dict[str, Any]:
        from tfcluster.bleu import corpus_bleu

        cfg = self.cfg
        translate, dev_loss = self._functions()
        ds = text.eval_dataset(
            text.resolve(prefix, cfg.src), text.resolve(prefix, cfg.tgt), self.src_table, self.tgt_table,
            batch_size=cfg.infer_batch_size, tokenizer=cfg.tokenize,
        )
        hyps, loss, count = [], 0.0, 0
        for src, src_len, tgt_in, tgt_out, tgt_len in ds:
            ids, _ = translate(src, src_len)
            hyps += [[t.decode("utf-8") for t in row] for row in ids_to_tokens(ids, self.tgt_vocab).to_list()]
            l, c = dev_loss(src, src_len, tgt_in, tgt_out, tgt_len)
            loss, count = loss + float(l), count + int(c)
        refs = self.references(prefix)
        return {
            "bleu": corpus_bleu([[r] for r in refs], hyps)["bleu"],
            "ppl": math.exp(min(loss / max(count, 1), 100.0)),
            "sample": (refs[0], hyps[0]) if hyps else None,
        }

    def evaluate(self, step: int) -> dict[str, float]:
        out: dict[str, float] = {}
        t0 = time.perf_counter()
        if self.cfg.dev_prefix:
            dev = self.evaluate_prefix(self.cfg.dev_prefix)
            out["eval/bleu"], out["eval/ppl"] = dev["bleu"], dev["ppl"]
            if dev["sample"]:
                ref, hyp = dev["sample"]
                print(f"    ref: {' '.join(ref)}\n    nmt: {' '.join(hyp)}", flush=True)
        if self.cfg.test_prefix:
            test = self.evaluate_prefix(self.cfg.test_prefix)
            out["eval/test_bleu"], out["eval/test_ppl"] = test["bleu"], test["ppl"]
        if out:
            out["perf/eval_s"] = time.perf_counter() - t0
        return out


def masked_loss_sum(logits, labels, lengths):
    """Sum of token cross-entropies over the real (unpadded) target positions."""
    import tensorflow as tf

    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    mask = tf.sequence_mask(lengths, tf.shape(labels)[1], dtype=ce.dtype)
    return tf.reduce_sum(ce * mask)


# ============================================================================ export and inference


def restore(cfg: Config, which: str = "best"):
    """A model (outside any distribution strategy) restored from out_dir's best or last checkpoint."""
    from tfcluster.train.loop import restore_run

    model, _ = build(cfg)
    return model, restore_run(cfg.out_dir, which, model=weights(model))


def serving_module(model, cfg: Config):
    """A tf.Module whose `serve(source)` does tokenize -> lookup -> encode -> decode -> detokenize."""
    import tensorflow as tf

    from tfcluster import export as export_mod

    class Translator(tf.Module):
        def __init__(self):
            super().__init__(name="translator")
            # The model is not an attribute: save_version tracks the variables `serve` reads.
            self.src_table = text.lookup_table(cfg.vocab_files[0])
            self.tgt_vocab = tf.Variable(text.load_vocab(cfg.vocab_files[1]), trainable=False, name="tgt_vocab")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.NMT.inputs[0].key)])
        def serve(self, source):
            source = export_mod.require_shape(source, [], f"{contract.NMT.inputs[0].key} must be a batch of sentences: string [batch]")
            toks = text.tokenize(source, cfg.tokenize)
            ids = tf.cast(self.src_table.lookup(toks), tf.int32)
            src_len = tf.cast(ids.row_lengths(), tf.int32)
            src = ids.to_tensor(default_value=text.EOS_ID)
            # An empty sentence becomes one </s> so the encoder has a step to read.
            src_len = tf.maximum(src_len, 1)
            src = tf.cond(tf.shape(src)[1] > 0, lambda: src, lambda: tf.fill([tf.shape(src)[0], 1], text.EOS_ID))
            out_ids, score = decode(model, cfg, src, src_len)
            words = ids_to_tokens(out_ids, self.tgt_vocab)
            return {
                contract.NMT.outputs[0].key: tf.strings.reduce_join(words, axis=-1, separator=" "),
                contract.NMT.outputs[1].key: score,
            }

    return Translator()


def export_checkpoint(cfg: Config, which: str = "best", model_base_path: str | None = None) -> str:
    """Export the best (or last) checkpoint to `<model_base_path>/nmt/<version>/`."""
    from tfcluster import export

    base = model_base_path or cfg.model_base_path
    if not base:
        raise UserError("--model_base_path is required to export")
    model, _ = restore(cfg, which)
    module = serving_module(model, cfg)
    sample = _sample_sentences(cfg)
    return export.save_version(
        module, {contract.DEFAULT_SIGNATURE: module.serve}, base, contract.NMT,
        warmup=[{contract.NMT.inputs[0].key: sample[:1]}, {contract.NMT.inputs[0].key: sample}],
    )


def _sample_sentences(cfg: Config, n: int = 4) -> list[str]:
    prefix = cfg.dev_prefix or cfg.train_prefix
    try:
        lines = text.read_lines(text.resolve(prefix, cfg.src))
        out = [l for _, l in zip(range(n), (l for l in lines if l.strip()))]
    except UserError:
        out = []
    return out or ["hello ."]


def translate_file(cfg: Config, which: str = "best") -> list[str]:
    """--inference_input_file: translate with the trained model (tensorflow/nmt's inference mode)."""
    import tensorflow as tf

    from tfcluster.errors import require_file

    require_file(cfg.inference_input_file, "inference input file")
    model, path = restore(cfg, which)
    module = serving_module(model, cfg)
    lines = list(text.read_lines(cfg.inference_input_file))
    out: list[str] = []
    for i in range(0, len(lines), cfg.infer_batch_size):
        res = module.serve(tf.constant(lines[i : i + cfg.infer_batch_size]))
        out += [s.decode("utf-8") for s in res[contract.NMT.outputs[0].key].numpy()]
    if cfg.inference_output_file:
        with tf.io.gfile.GFile(cfg.inference_output_file, "w") as f:
            f.write("\n".join(out) + "\n")
        print(f"# translated {len(lines)} lines with {path} -> {cfg.inference_output_file}")
    else:
        print("\n".join(out))
    if cfg.inference_ref_file:
        from tfcluster.bleu import corpus_bleu

        refs = list(text.tokenize_py(text.read_lines(require_file(cfg.inference_ref_file, "reference file")), cfg.tokenize))
        bleu = corpus_bleu([[r] for r in refs], [h.split() for h in out])["bleu"]
        print(f"# bleu {bleu:.2f}")
    return out


def offline(cfg: Config) -> bool:
    """Inference mode instead of training when --inference_input_file is given."""
    if cfg.inference_input_file:
        translate_file(cfg)
        return True
    return False


WORKLOAD = Workload(
    name="nmt", config=Config, serving=contract.NMT, task=Task, export=export_checkpoint,
    prepare=prepare, offline=offline, metric="eval/bleu", mode="max", search_space=spaces.nmt_space,
    description=__doc__.splitlines()[0],
)
