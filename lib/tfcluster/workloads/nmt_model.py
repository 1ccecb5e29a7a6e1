"""NMT's model part: tensorflow/nmt's LSTM seq2seq with attention as Keras layers, its decoding,
the training task for the shared loop, and the export.

Read top to bottom: layers (LSTM, Attention) -> Seq2Seq (encode, decode_step, and the
decoders `greedy_decode`, `beam_decode`, `translate`) -> learning rate -> build ->
Task (train step, evaluation) -> restore, serving module, export, inference.

TensorFlow is imported at the top here; `tfcluster.workloads.nmt` (flags, vocabularies, the
contract) imports this module only when it trains, exports or translates, so importing the
workload (for `--help`, presets or a sweep driver) stays free of TensorFlow.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

import keras
import tensorflow as tf

from tfcluster import config as config_mod
from tfcluster import contract
from tfcluster.bleu import tokenized_reference_bleu
from tfcluster.data import text
from tfcluster.errors import UserError
from tfcluster.train import precision
from tfcluster.train.loop import TaskBase
from tfcluster.workloads.nmt import Config, sample_sentences, vocab_sizes


class LSTM(keras.layers.Layer):
    """An LSTM whose input projection is hoisted out of the time loop (one matmul per sequence).

    Gates i, f, g, o as Keras; forget-gate bias starts at 1.0 (tensorflow/nmt's forget_bias).
    `sequence` runs a whole (masked) sequence, `step` one time step for decoding.
    """

    def __init__(self, units: int, init_weight: float = 0.1, seed: int | None = None, **kw):
        super().__init__(**kw)
        self.units, self.init_weight, self.seed = units, init_weight, seed

    def build(self, input_shape):
        init = keras.initializers.RandomUniform(-self.init_weight, self.init_weight, seed=self.seed)
        u = self.units
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], 4 * u), initializer=init)
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(u, 4 * u), initializer=init)
        self.bias = self.add_weight(
            name="bias", shape=(4 * u,),
            initializer=lambda shape, dtype=None: tf.concat([tf.zeros([u]), tf.ones([u]), tf.zeros([2 * u])], 0),
        )

    def call(self, x):  # the input projection, for build() and the hoisted path
        return tf.matmul(x, self.kernel) + self.bias if x.shape.rank == 2 else tf.einsum("btd,dg->btg", x, self.kernel) + self.bias

    def cell(self, xw, h, c):
        z = xw + tf.matmul(h, tf.cast(self.recurrent_kernel, h.dtype))  # the policy's compute dtype
        i, f, g, o = tf.split(z, 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, c

    def step(self, x, state):
        h, c = self.cell(self(x), state[0], state[1])
        return h, (h, c)

    def sequence(self, x, state, mask=None):
        """x [B, T, D] -> outputs [B, T, U], final (h, c); masked steps keep the state."""
        xw = tf.transpose(self(x), [1, 0, 2])
        if mask is None:
            def fn(carry, xw_t):
                return self.cell(xw_t, carry[0], carry[1])
            hs, cs = tf.scan(fn, xw, initializer=tuple(state))
        else:
            m = tf.transpose(tf.cast(mask, x.dtype), [1, 0])[:, :, None]

            def fn(carry, elems):
                xw_t, m_t = elems
                h, c = self.cell(xw_t, carry[0], carry[1])
                return m_t * h + (1 - m_t) * carry[0], m_t * c + (1 - m_t) * carry[1]

            hs, cs = tf.scan(fn, (xw, m), initializer=tuple(state))
        return tf.transpose(hs, [1, 0, 2]), (hs[-1], cs[-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units, "init_weight": self.init_weight, "seed": self.seed}


class Attention(keras.layers.Layer):
    """Luong (dot), scaled Luong, Bahdanau (additive) and normed Bahdanau scores, masked softmax,
    context from the raw memory, and the attention vector W_c [h; context] (tensorflow/nmt)."""

    def __init__(self, kind: str, units: int, init_weight: float = 0.1, seed: int | None = None, **kw):
        super().__init__(**kw)
        self.kind, self.units, self.init_weight, self.seed = kind, units, init_weight, seed
        init = keras.initializers.RandomUniform(-init_weight, init_weight, seed=seed)
        self.memory_layer = keras.layers.Dense(units, use_bias=False, kernel_initializer=init, name="memory_layer")
        self.attention_layer = keras.layers.Dense(units, use_bias=False, kernel_initializer=init, name="attention_layer")
        if kind in ("bahdanau", "normed_bahdanau"):
            self.query_layer = keras.layers.Dense(units, use_bias=False, kernel_initializer=init, name="query_layer")

    def build(self, input_shape):
        u = self.units
        if self.kind == "scaled_luong":
            self.g = self.add_weight(name="attention_g", shape=(), initializer="ones")
        if self.kind in ("bahdanau", "normed_bahdanau"):
            init = keras.initializers.RandomUniform(-self.init_weight, self.init_weight, seed=self.seed)
            self.v = self.add_weight(name="attention_v", shape=(u,), initializer=init)
        if self.kind == "normed_bahdanau":
            self.g = self.add_weight(name="attention_g", shape=(), initializer=keras.initializers.Constant(math.sqrt(1.0 / u)))
            self.b = self.add_weight(name="attention_b", shape=(u,), initializer="zeros")

    def keys(self, memory):
        return self.memory_layer(memory)

    def call(self, query, keys, memory, src_mask):
        """query [B, Tq, U], keys [B, Tk, U], memory [B, Tk, M], src_mask [B, Tk] -> attention vectors [B, Tq, U]."""
        if self.kind in ("luong", "scaled_luong"):
            scores = tf.einsum("bqu,bku->bqk", query, keys)
            if self.kind == "scaled_luong":
                scores = tf.cast(self.g, scores.dtype) * scores
        else:
            q = self.query_layer(query)
            v = tf.cast(self.v, q.dtype)
            pre = q[:, :, None, :] + keys[:, None, :, :]
            if self.kind == "normed_bahdanau":
                v = tf.cast(self.g, q.dtype) * v * tf.math.rsqrt(tf.reduce_sum(tf.square(v)))
                pre = pre + tf.cast(self.b, q.dtype)
            scores = tf.reduce_sum(v * tf.tanh(pre), axis=-1)
        # Scores and their softmax in float32 under every precision.
        scores = tf.where(src_mask[:, None, :], tf.cast(scores, tf.float32), -1e9)
        alignments = tf.cast(tf.nn.softmax(scores, axis=-1), memory.dtype)
        context = tf.einsum("bqk,bkm->bqm", alignments, memory)
        return self.attention_layer(tf.concat([query, context], axis=-1))

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "units": self.units, "init_weight": self.init_weight, "seed": self.seed}


class Seq2Seq(keras.layers.Layer):
    """Embeddings, uni/bi LSTM encoder, LSTM decoder with attention and input feeding, projection."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, cfg_json: dict, **kw):
        super().__init__(**kw)
        self.cfg_json = cfg_json
        cfg = Config(**cfg_json)
        self.cfg = cfg
        u, w, s = cfg.num_units, cfg.init_weight, cfg.seed
        init = keras.initializers.RandomUniform(-w, w, seed=s)
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.src_emb = keras.layers.Embedding(src_vocab_size, u, embeddings_initializer=init, name="embedding_encoder")
        self.tgt_emb = keras.layers.Embedding(tgt_vocab_size, u, embeddings_initializer=init, name="embedding_decoder")
        if cfg.encoder_type == "bi":
            nb = cfg.num_layers // 2
            self.enc_fw = [LSTM(u, w, s, name=f"encoder_bi{i}_fw") for i in range(nb)]
            self.enc_bw = [LSTM(u, w, s, name=f"encoder_bi{i}_bw") for i in range(nb)]
            self.enc = []
        else:
            self.enc = [LSTM(u, w, s, name=f"encoder_{i}") for i in range(cfg.num_layers)]
            self.enc_fw, self.enc_bw = [], []
        self.dec = [LSTM(u, w, s, name=f"decoder_{i}") for i in range(cfg.num_layers)]
        self.attn = Attention(cfg.attention, u, w, s, name="attention") if cfg.attention else None
        self.proj = None if cfg.share_decoder_embeddings else keras.layers.Dense(
            tgt_vocab_size, use_bias=False, kernel_initializer=init, name="output_projection")
        # Decoding never emits <s>, nor <unk> with subwords (byte fallback spells anything without it).
        banned = [text.SOS_ID] + ([text.UNK_ID] if cfg.subword != "none" else [])
        self.banned = tf.constant([-1e9 if i in banned else 0.0 for i in range(tgt_vocab_size)], tf.float32)

    @property
    def feeds(self) -> bool:
        return bool(self.attn is not None and self.cfg.input_feeding)

    def project(self, x):
        """Decoder outputs [..., U] -> float32 logits [..., V]; with --share_decoder_embeddings, through the
        transposed target embedding."""
        if self.proj is not None:
            return tf.cast(self.proj(x), tf.float32)
        emb = tf.cast(self.tgt_emb.embeddings, x.dtype)
        flat = tf.matmul(tf.reshape(x, [-1, tf.shape(x)[-1]]), emb, transpose_b=True)
        return tf.cast(tf.reshape(flat, tf.concat([tf.shape(x)[:-1], tf.shape(emb)[:1]], 0)), tf.float32)

    def next_log_probs(self, out):
        """Decoder outputs [N, U] -> log-probabilities of the next token [N, V], banned tokens excluded."""
        return tf.nn.log_softmax(self.project(out) + self.banned)

    def _drop(self, x, training):
        return tf.nn.dropout(x, self.cfg.dropout) if training and self.cfg.dropout > 0 else x

    def zero_state(self, batch):
        z = tf.zeros([batch, self.cfg.num_units], self.compute_dtype)
        return [(z, z) for _ in self.dec]

    # -- encoder
    def encode(self, src, src_len, training=False):
        mask = tf.sequence_mask(src_len, tf.shape(src)[1])
        x = self.src_emb(src)
        b = tf.shape(src)[0]
        z = tf.zeros([b, self.cfg.num_units], x.dtype)
        states = []
        if self.enc_fw:
            for fw, bw in zip(self.enc_fw, self.enc_bw):
                xd = self._drop(x, training)
                out_f, st_f = fw.sequence(xd, (z, z), mask)
                rev = tf.reverse_sequence(xd, src_len, seq_axis=1, batch_axis=0)
                out_b, st_b = bw.sequence(rev, (z, z), mask)
                out_b = tf.reverse_sequence(out_b, src_len, seq_axis=1, batch_axis=0)
                x = tf.concat([out_f, out_b], axis=-1)
                states += [st_f, st_b]
        for layer in self.enc:
            x, st = layer.sequence(self._drop(x, training), (z, z), mask)
            states.append(st)
        return x, states, mask

    def initial_state(self, enc_states, batch):
        dec = list(enc_states) if self.cfg.pass_hidden_state else self.zero_state(batch)
        attn = tf.zeros([batch, self.cfg.num_units], self.compute_dtype)
        return dec, attn

    # -- one decoder step (inference, and training with input feeding)
    def decode_step(self, emb, dec_state, attn_vec, keys, memory, mask, training=False):
        x = tf.concat([emb, attn_vec], axis=-1) if self.feeds else emb
        new = []
        for layer, st in zip(self.dec, dec_state):
            x, st = layer.step(self._drop(x, training), st)
            new.append(st)
        if self.attn is not None:
            x = self.attn(x[:, None, :], keys, memory, mask)[:, 0, :]
        return x, new

    # -- training forward pass: logits [B, T, V]
    def call(self, src, src_len, tgt_in, training=False):
        memory, enc_states, mask = self.encode(src, src_len, training)
        b = tf.shape(src)[0]
        dec_state, attn_vec = self.initial_state(enc_states, b)
        keys = self.attn.keys(memory) if self.attn is not None else None
        emb = self.tgt_emb(tgt_in)
        if not self.feeds:
            x = emb
            for layer, st in zip(self.dec, dec_state):
                x, _ = layer.sequence(self._drop(x, training), st)
            out = self.attn(x, keys, memory, mask) if self.attn is not None else x
        else:
            def fn(carry, emb_t):
                state, a = carry
                out_t, state = self.decode_step(emb_t, state, a, keys, memory, mask, training)
                return state, out_t

            _, outs = tf.scan(fn, tf.transpose(emb, [1, 0, 2]), initializer=(dec_state, attn_vec))
            out = tf.transpose(outs, [1, 0, 2])
        return self.project(out)

    def greedy_decode(self, src, src_len, max_len):
        """Token ids [B, T] (EOS-terminated or cut at max_len) and summed log-probabilities [B]."""
        memory, enc_states, mask = self.encode(src, src_len)
        b = tf.shape(src)[0]
        dec, attn = self.initial_state(enc_states, b)
        keys = self.attn.keys(memory) if self.attn is not None else None
        tok = tf.fill([b], text.SOS_ID)
        ta = tf.TensorArray(tf.int32, size=0, dynamic_size=True)
        finished = tf.zeros([b], tf.bool)
        score = tf.zeros([b])

        def body(t, tok, finished, score, dec, attn, ta):
            out, dec = self.decode_step(self.tgt_emb(tok), dec, attn, keys, memory, mask)
            logp = self.next_log_probs(out)
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

    def beam_decode(self, src, src_len, max_len, beam_width: int, alpha: float):
        """Beam search (tensorflow/nmt's BeamSearchDecoder behaviour, GNMT length penalty)."""
        k = beam_width
        memory, enc_states, mask = self.encode(src, src_len)
        b = tf.shape(src)[0]

        def tile(x):
            return tf.repeat(x, k, axis=0)

        memory, mask = tile(memory), tile(mask)
        dec, attn = self.initial_state([(tile(h), tile(c)) for h, c in enc_states], b * k)
        keys = self.attn.keys(memory) if self.attn is not None else None
        v = self.tgt_vocab_size
        log_probs = tf.tile(tf.concat([[0.0], tf.fill([k - 1], -float("inf"))], 0)[None, :], [b, 1])
        finished = tf.zeros([b, k], tf.bool)
        lengths = tf.zeros([b, k], tf.int32)
        seqs = tf.zeros([b, k, 0], tf.int32)
        tok = tf.fill([b * k], text.SOS_ID)
        eos_row = tf.one_hot(text.EOS_ID, v, on_value=0.0, off_value=-float("inf"))
        batch_offsets = (tf.range(b) * k)[:, None]

        def body(t, tok, log_probs, finished, lengths, seqs, dec, attn):
            out, dec = self.decode_step(self.tgt_emb(tok), dec, attn, keys, memory, mask)
            lp = tf.reshape(self.next_log_probs(out), [b, k, v])
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
                [(tf.TensorShape([None, self.cfg.num_units]),) * 2 for _ in dec], tf.TensorShape([None, self.cfg.num_units]),
            ),
        )
        # top_k keeps beams sorted by (length-normalized) score: beam 0 is the best.
        return seqs[:, 0, :], log_probs[:, 0]

    def translate(self, src, src_len, cfg: Config | None = None):
        """Token ids [B, T] and scores [B] by the decoder `cfg` (default: the model's) asks for: beam
        search with --beam_width > 1 and --length_penalty_weight, else greedy; --tgt_max_len_infer."""
        cfg = cfg or self.cfg
        max_len = max_decode_len(cfg, src_len)
        if cfg.beam_width > 1:
            return self.beam_decode(src, src_len, max_len, cfg.beam_width, cfg.length_penalty_weight)
        return self.greedy_decode(src, src_len, max_len)

    def get_config(self):
        return {**super().get_config(), "src_vocab_size": self.src_vocab_size, "tgt_vocab_size": self.tgt_vocab_size, "cfg_json": self.cfg_json}


# ============================================================================ learning rate


def learning_rate_at(step, base_lr: float, num_train_steps: int, warmup_steps: int = 0, decay_scheme: str = "",
                     progress=None):
    """tensorflow/nmt's schedule: t2t warm-up (exp), then luong5/luong10/luong234 halving.

    `progress` (the fraction of the run done, which --max_train_minutes can put ahead of the step
    count) moves the decay: it runs at step max(step, progress * num_train_steps)."""
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
        at = step if progress is None else tf.maximum(step, tf.round(tf.cast(progress, tf.float32) * num_train_steps))
        n = tf.floor(tf.maximum(at - start, 0.0) / decay_steps)
        lr = tf.where(at < start, lr, lr * tf.pow(0.5, n))
    return lr


def make_schedule(cfg: Config, progress=None):
    class NMTSchedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return learning_rate_at(step, cfg.learning_rate, cfg.num_train_steps, cfg.warmup_steps, cfg.decay_scheme,
                                    progress)

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


def build(cfg: Config, progress=None):
    """The Seq2Seq model (built) and its optimizer; `progress` (a variable, see `learning_rate_at`) drives decay."""
    vs, vt = vocab_sizes(cfg)
    model = Seq2Seq(vs, vt, config_mod.to_dict(cfg), name="nmt")
    ids = tf.ones([2, 3], tf.int32)
    model(ids, tf.constant([3, 2]), ids)
    sched = make_schedule(cfg, progress)
    opt = keras.optimizers.SGD(sched) if cfg.optimizer == "sgd" else keras.optimizers.Adam(sched)
    opt = precision.loss_scaled(opt, cfg.precision)
    opt.build(model.trainable_variables)
    return model, opt


# ============================================================================ decoding


def max_decode_len(cfg: Config, src_len):
    if cfg.tgt_max_len_infer:
        return tf.constant(cfg.tgt_max_len_infer, tf.int32)
    return tf.cast(tf.round(tf.cast(tf.reduce_max(src_len), tf.float32) * 2.0), tf.int32) + 1


def length_penalty(lengths, alpha: float):
    """GNMT length penalty ((5 + len) / 6) ** alpha (tensorflow/nmt's length_penalty_weight)."""
    if not alpha:
        return tf.ones_like(tf.cast(lengths, tf.float32))
    return tf.pow((5.0 + tf.cast(lengths, tf.float32)) / 6.0, alpha)


def cut_at_eos(ids):
    """Ids [B, T] -> RaggedTensor of ids, each row cut at its first </s>."""
    is_eos = tf.equal(ids, text.EOS_ID)
    t = tf.shape(ids)[1]
    first = tf.where(tf.reduce_any(is_eos, axis=1), tf.argmax(tf.cast(is_eos, tf.int32), axis=1, output_type=tf.int32), t)
    return tf.RaggedTensor.from_tensor(ids, lengths=first)


class WordVocab(tf.Module):
    """A word vocabulary (tensorflow/nmt): text split by --tokenize, tokens looked up (unknown: <unk>); ids
    back to tokens joined by spaces."""

    def __init__(self, vocab_file: str, tokenizer: str, for_export: bool = False):
        super().__init__(name="word_vocab")
        self.tokenizer = tokenizer
        self.table = text.lookup_table(vocab_file)
        tokens = text.load_vocab(vocab_file)
        # In an export a variable, not a graph constant (kept in its checkpoint, the graph stays small); in training
        # a constant (no string variable under the distribution strategy).
        self.tokens = tf.Variable(tokens, trainable=False, name="tokens") if for_export else tf.constant(tokens)

    def encode(self, line):
        return text.encoder(self.table, self.tokenizer)(line)

    def decode(self, ids):
        """Ragged ids [B, None] -> strings [B]."""
        return tf.strings.reduce_join(tf.gather(self.tokens, ids), axis=-1, separator=" ")


class SubwordVocab(tf.Module):
    """A SentencePiece model run by tensorflow-text's ops: raw text -> piece ids (byte fallback, no <unk>);
    ids -> detokenized text. The serialized model is part of the graph, so an export carries it."""

    def __init__(self, model_file: str):
        import tensorflow_text as tf_text  # registers the SentencePiece ops (also needed to load an export)

        super().__init__(name="subword_vocab")
        with tf.io.gfile.GFile(model_file, "rb") as f:
            model = f.read()
        # The op's kernel shares its model by node name: a name per model keeps the source's and the target's
        # (and other exports' in one process) apart.
        name = "sentencepiece_" + hashlib.sha256(model).hexdigest()[:16]
        self.tokenizer = tf_text.SentencepieceTokenizer(model=model, out_type=tf.int32, name=name)

    def encode(self, line):
        return self.tokenizer.tokenize(line)

    def decode(self, ids):
        return self.tokenizer.detokenize(ids)


def vocabularies(cfg: Config, for_export: bool = False) -> tuple[Any, Any]:
    """(source, target) vocabularies of a prepared run: SentencePiece models with --subword, else word lists."""
    if cfg.subword != "none":
        return SubwordVocab(cfg.subword_models[0]), SubwordVocab(cfg.subword_models[1])
    return tuple(WordVocab(f, cfg.tokenize, for_export) for f in cfg.vocab_files)  # type: ignore[return-value]


def tokenized_references(prefix: str, lang: str, keep: list[bool] | None = None) -> list[str] | None:
    """The lines of `prefix.lc.norm.tok.<lang>` (Multi30k's lowercased Moses-tokenized references) where `keep`
    is true, or None when the corpus has no such file."""
    from tfcluster import storage

    path = f"{prefix}.lc.norm.tok.{lang}"
    if not storage.exists(path):
        return None
    lines = list(text.read_lines(path))
    return [l for k, l in zip(keep, lines) if k] if keep is not None else lines


def eval_pairs(prefix: str, cfg: Config) -> tuple[list[str], list[str], list[str] | None]:
    """(sources, raw references, lowercased tokenized references or None) of the pairs an evaluation translates:
    both sides non-empty, in file order; each file read once."""
    src = list(text.read_lines(text.resolve(prefix, cfg.src)))
    tgt = list(text.read_lines(text.resolve(prefix, cfg.tgt)))
    keep = [bool(s.strip() and t.strip()) for s, t in zip(src, tgt)]
    return ([s for k, s in zip(keep, src) if k], [t for k, t in zip(keep, tgt) if k],
            tokenized_references(prefix, cfg.tgt, keep))


def scores(hyps: list[str], refs: list[str], cfg: Config, tok_refs: list[str] | None = None) -> dict[str, float]:
    """eval/bleu: sacrebleu's corpus BLEU of the detokenized output against the raw references (cased, 13a
    tokenization, sacrebleu's defaults: the standard, comparable figure; lowercased for word models split by
    `--tokenize simple`, which cannot write case, as `tfcluster release` scores them); bleu_tok: BLEU on the
    project's tokens of both sides (`cfg.bleu_tokenize`; tensorflow/nmt's figure on pre-tokenized data);
    bleu_lc_tok, given the dataset's lowercased tokenized references: BLEU against those (published Multi30k
    figures)."""
    import sacrebleu

    from tfcluster.bleu import corpus_bleu

    tok = cfg.bleu_tokenize
    refs_in_tokens, hyps_in_tokens = list(text.tokenize_py(refs, tok)), list(text.tokenize_py(hyps, tok))
    return {
        "bleu": sacrebleu.corpus_bleu(hyps, [refs], lowercase=cfg.subword == "none" and cfg.tokenize == "simple").score,
        "bleu_tok": corpus_bleu([[r] for r in refs_in_tokens], hyps_in_tokens)["bleu"],
        **({"bleu_lc_tok": tokenized_reference_bleu(hyps, tok_refs)} if tok_refs else {}),
    }


# ============================================================================ task (train step + evaluate)


class Task(TaskBase):
    """NMT for the shared loop: data shard, train step, BLEU/perplexity evaluation."""

    def __init__(self, cfg: Config, strategy, ctx):
        self.cfg, self.strategy, self.ctx = cfg, strategy, ctx
        self.num_steps = cfg.num_train_steps
        self.best_metric = ("eval/bleu", "max") if cfg.dev_prefix else None
        self.progress = tf.Variable(0.0, trainable=False, name="progress",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.model, self.optimizer = build(cfg, self.progress)
        self._gradients = self.xla(self.gradients, cfg)
        self.src_vocab, self.tgt_vocab = vocabularies(cfg)
        self._refs: dict[str, tuple[list[str], list[str] | None]] = {}
        self._translate = None
        self._dev_loss = None

    def trackables(self):
        return {"model": weights(self.model), "optimizer": self.optimizer}

    averaged = "model"  # --avg_ckpts averages the model's weights

    def dataset(self, input_context):
        cfg = self.cfg
        # This worker's files only (whole files when there are enough of them, else every Nth line).
        pairs, num_shards, shard_index = text.shard_files(
            text.file_pairs(cfg.train_prefix, cfg.src, cfg.tgt),
            input_context.num_input_pipelines if input_context else 1,
            input_context.input_pipeline_id if input_context else 0)
        return text.train_dataset(
            [s for s, _ in pairs], [t for _, t in pairs],
            self.src_vocab, self.tgt_vocab,
            batch_size=input_context.get_per_replica_batch_size(cfg.batch_size) if input_context else cfg.batch_size,
            src_max_len=cfg.src_max_len, tgt_max_len=cfg.tgt_max_len,
            num_buckets=cfg.num_buckets,
            num_shards=num_shards, shard_index=shard_index, seed=cfg.seed,
        )

    def gradients(self, src, src_len, tgt_in, tgt_out, tgt_len):
        """(loss sum, unscaled gradients) of one replica's batch: the part --jit_compile compiles."""
        with tf.GradientTape() as tape:
            logits = self.model(src, src_len, tgt_in, training=True)
            loss_sum, smoothed_sum = training_loss_sums(logits, tgt_out, tgt_len, self.cfg.label_smoothing)
            loss = smoothed_sum / self.cfg.batch_size  # global batch (tensorflow/nmt divides by batch_size)
            scaled = precision.scale_loss(self.optimizer, loss)  # float16: times the dynamic loss scale
        scale = precision.loss_scale(self.optimizer)
        grads = [tf.convert_to_tensor(g) / scale for g in tape.gradient(scaled, self.model.trainable_variables)]
        return loss_sum, grads

    def replica_step(self, batch):
        src, src_len, tgt_in, tgt_out, tgt_len = batch
        loss_sum, grads = self._gradients(src, src_len, tgt_in, tgt_out, tgt_len)
        variables = self.model.trainable_variables
        scale = precision.loss_scale(self.optimizer)
        world = self.strategy.num_replicas_in_sync
        if world > 1:  # clip the global gradient, as one process would
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        grads, norm = tf.clip_by_global_norm(grads, self.cfg.max_gradient_norm)
        if world > 1:  # the optimizer sums replicas' gradients again
            grads = [g / world for g in grads]
        if precision.is_scaled(self.optimizer):  # it unscales (and skips a non-finite step) itself
            grads = [g * scale for g in grads]
        self.optimizer.apply_gradients(zip(grads, variables))
        return {
            "loss_scale": scale / world,  # summed over replicas by the loop
            "loss_sum": loss_sum,
            "predict_count": tf.cast(tf.reduce_sum(tgt_len), tf.float32),
            "src_count": tf.cast(tf.reduce_sum(src_len), tf.float32),
            "sentences": tf.cast(tf.shape(src)[0], tf.float32),
            "grad_norm": norm / world,
        }

    def stats(self, sums, steps, seconds):
        lr = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
        return {
            "train/loss": sums["loss_sum"] / max(sums["sentences"], 1.0),
            "train/ppl": math.exp(min(sums["loss_sum"] / max(sums["predict_count"], 1.0), 100.0)),
            "train/lr": lr,
            "train/grad_norm": sums["grad_norm"] / steps,
            "perf/tgt_tokens_per_s": sums["predict_count"] / seconds,
            "perf/src_tokens_per_s": sums["src_count"] / seconds,
            "perf/step_time_s": seconds / steps,
            **({"train/loss_scale": sums["loss_scale"] / steps} if precision.is_scaled(self.optimizer) else {}),
        }

    # -- evaluation (chief only)
    def _functions(self):
        if self._translate is None:
            model = self.model

            @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)])
            def translate(src, src_len):
                return model.translate(src, src_len)

            ids, lengths = tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)

            @tf.function(input_signature=[ids, lengths, ids, ids, lengths])
            def dev_loss(src, src_len, tgt_in, tgt_out, tgt_len):
                return masked_loss_sum(model(src, src_len, tgt_in), tgt_out, tgt_len), tf.reduce_sum(tgt_len)

            self._translate, self._dev_loss = translate, dev_loss
        return self._translate, self._dev_loss

    def references(self, prefix: str) -> tuple[list[str], list[str] | None]:
        """The raw target lines of the pairs the evaluation translates (both sides non-empty), and the lines of
        the dataset's lowercased tokenized references (`prefix.lc.norm.tok.<tgt>`, Multi30k's) when it has them."""
        if prefix not in self._refs:
            self._refs[prefix] = eval_pairs(prefix, self.cfg)[1:]
        return self._refs[prefix]

    def evaluate_prefix(self, prefix: str) -> dict[str, Any]:
        cfg = self.cfg
        translate, dev_loss = self._functions()
        ds = text.eval_dataset(
            text.resolve(prefix, cfg.src), text.resolve(prefix, cfg.tgt), self.src_vocab, self.tgt_vocab,
            batch_size=cfg.infer_batch_size,
        )
        hyps, loss, count = [], 0.0, 0
        for src, src_len, tgt_in, tgt_out, tgt_len in ds:
            ids, _ = translate(src, src_len)
            hyps += [h.decode("utf-8") for h in self.tgt_vocab.decode(cut_at_eos(ids)).numpy()]
            l, c = dev_loss(src, src_len, tgt_in, tgt_out, tgt_len)
            loss, count = loss + float(l), count + int(c)
        refs, tok_refs = self.references(prefix)
        return {
            **scores(hyps, refs, cfg, tok_refs),
            "ppl": math.exp(min(loss / max(count, 1), 100.0)),
            "sample": (refs[0], hyps[0]) if hyps else None,
        }

    def evaluate(self, step: int) -> dict[str, float]:
        out: dict[str, float] = {}
        t0 = time.perf_counter()
        if self.cfg.dev_prefix:
            dev = self.evaluate_prefix(self.cfg.dev_prefix)
            out["eval/bleu"], out["eval/bleu_tok"], out["eval/ppl"] = dev["bleu"], dev["bleu_tok"], dev["ppl"]
            if "bleu_lc_tok" in dev:
                out["eval/bleu_lc_tok"] = dev["bleu_lc_tok"]
            if dev["sample"]:
                ref, hyp = dev["sample"]
                print(f"    ref: {ref}\n    nmt: {hyp}", flush=True)
        if self.cfg.test_prefix:
            test = self.evaluate_prefix(self.cfg.test_prefix)
            out["eval/test_bleu"], out["eval/test_bleu_tok"] = test["bleu"], test["bleu_tok"]
            out["eval/test_ppl"] = test["ppl"]
            if "bleu_lc_tok" in test:
                out["eval/test_bleu_lc_tok"] = test["bleu_lc_tok"]
        if out:
            out["perf/eval_s"] = time.perf_counter() - t0
        return out


def masked_loss_sum(logits, labels, lengths):
    """Sum of token cross-entropies over the real (unpadded) target positions."""
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    mask = tf.sequence_mask(lengths, tf.shape(labels)[1], dtype=ce.dtype)
    return tf.reduce_sum(ce * mask)


def training_loss_sums(logits, labels, lengths, label_smoothing: float):
    """(plain, smoothed) sums of token cross-entropies over the real target positions; the smoothed one
    against (1 - e) one-hot + e uniform over the vocabulary (e = `label_smoothing`)."""
    if not label_smoothing:
        plain = masked_loss_sum(logits, labels, lengths)
        return plain, plain
    mask = tf.sequence_mask(lengths, tf.shape(labels)[1], dtype=logits.dtype)
    logp = tf.nn.log_softmax(logits)
    nll = -tf.gather(logp, labels, batch_dims=2)
    uniform = -tf.reduce_mean(logp, axis=-1)
    return tf.reduce_sum(nll * mask), tf.reduce_sum(((1.0 - label_smoothing) * nll + label_smoothing * uniform) * mask)


# ============================================================================ export and inference


def restore(cfg: Config, which: str = "best"):
    """A model (outside any distribution strategy) restored from out_dir's best or last checkpoint."""
    from tfcluster.train.loop import restore_run

    model, _ = build(cfg)
    return model, restore_run(cfg.out_dir, which, model=weights(model))


def serving_module(model, cfg: Config):
    """A tf.Module whose `serve(source)` does tokenize -> ids -> encode -> decode -> detokenize, all in the graph."""
    from tfcluster import export as export_mod

    class Translator(tf.Module):
        def __init__(self):
            super().__init__(name="translator")
            # The model is not an attribute: save_version tracks the variables `serve` reads.
            self.src_vocab, self.tgt_vocab = vocabularies(cfg, for_export=True)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.NMT.inputs[0].key)])
        def serve(self, source):
            source = export_mod.require_shape(source, [], f"{contract.NMT.inputs[0].key} must be a batch of sentences: string [batch]")
            ids = self.src_vocab.encode(source)
            src_len = tf.cast(ids.row_lengths(), tf.int32)
            src = ids.to_tensor(default_value=text.EOS_ID)
            # An empty sentence becomes one </s> so the encoder has a step to read.
            src_len = tf.maximum(src_len, 1)
            src = tf.cond(tf.shape(src)[1] > 0, lambda: src, lambda: tf.fill([tf.shape(src)[0], 1], text.EOS_ID))
            out_ids, score = model.translate(src, src_len, cfg)
            return {
                contract.NMT.outputs[0].key: self.tgt_vocab.decode(cut_at_eos(out_ids)),
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
    sample = sample_sentences(cfg)
    return export.save_version(
        module, {contract.DEFAULT_SIGNATURE: module.serve}, base, contract.NMT,
        warmup=[{contract.NMT.inputs[0].key: sample[:1]}, {contract.NMT.inputs[0].key: sample}],
    )


def translate_file(cfg: Config, which: str = "best") -> list[str]:
    """--inference_input_file: translate with the trained model (tensorflow/nmt's inference mode)."""
    from tfcluster.storage import require_file

    require_file(cfg.inference_input_file, "inference input file")
    model, path = restore(cfg, which)
    module = serving_module(model, cfg)
    lines = list(text.read_lines(cfg.inference_input_file))
    out: list[str] = []
    for i in range(0, len(lines), cfg.infer_batch_size):
        res = module.serve(tf.constant(lines[i : i + cfg.infer_batch_size]))
        out += [s.decode("utf-8") for s in res[contract.NMT.outputs[0].key].numpy()]
    if cfg.inference_output_file:
        from tfcluster import storage

        storage.write_bytes(cfg.inference_output_file, ("\n".join(out) + "\n").encode("utf-8"))
        print(f"# translated {len(lines)} lines with {path} -> {cfg.inference_output_file}")
    else:
        print("\n".join(out))
    if cfg.inference_ref_file:
        refs = list(text.read_lines(require_file(cfg.inference_ref_file, "reference file")))
        if len(refs) != len(out):
            raise UserError(f"{cfg.inference_ref_file} has {len(refs)} lines but {cfg.inference_input_file} has {len(out)}")
        got = scores(out, refs, cfg)
        print(f"# bleu {got['bleu']:.2f} (sacrebleu, cased, 13a)  bleu_tok {got['bleu_tok']:.2f} ({cfg.bleu_tokenize} tokens)")
    return out
