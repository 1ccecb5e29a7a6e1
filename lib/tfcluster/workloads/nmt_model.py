"""The NMT model: tensorflow/nmt's LSTM seq2seq with attention as Keras layers.

TensorFlow is imported at the top here; `tfcluster.workloads.nmt` (flags, data, the training
task, decoding, export) imports this module only when it builds a model, so importing the
workload (for `--help`, presets or a sweep driver) stays free of TensorFlow.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfcluster.workloads.nmt import Config


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
        z = xw + tf.matmul(h, self.recurrent_kernel)
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
                scores = self.g * scores
        else:
            q = self.query_layer(query)
            v = self.v
            pre = q[:, :, None, :] + keys[:, None, :, :]
            if self.kind == "normed_bahdanau":
                v = self.g * v * tf.math.rsqrt(tf.reduce_sum(tf.square(v)))
                pre = pre + self.b
            scores = tf.reduce_sum(v * tf.tanh(pre), axis=-1)
        scores = tf.where(src_mask[:, None, :], scores, tf.cast(-1e9, scores.dtype))
        alignments = tf.nn.softmax(scores, axis=-1)
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
        self.proj = keras.layers.Dense(tgt_vocab_size, use_bias=False, kernel_initializer=init, name="output_projection")

    @property
    def feeds(self) -> bool:
        return bool(self.attn is not None and self.cfg.input_feeding)

    def _drop(self, x, training):
        return tf.nn.dropout(x, self.cfg.dropout) if training and self.cfg.dropout > 0 else x

    def zero_state(self, batch):
        z = tf.zeros([batch, self.cfg.num_units])
        return [(z, z) for _ in self.dec]

    # -- encoder
    def encode(self, src, src_len, training=False):
        mask = tf.sequence_mask(src_len, tf.shape(src)[1])
        x = self.src_emb(src)
        b = tf.shape(src)[0]
        z = tf.zeros([b, self.cfg.num_units])
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
        attn = tf.zeros([batch, self.cfg.num_units])
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
        return self.proj(out)

    def get_config(self):
        return {**super().get_config(), "src_vocab_size": self.src_vocab_size, "tgt_vocab_size": self.tgt_vocab_size, "cfg_json": self.cfg_json}
