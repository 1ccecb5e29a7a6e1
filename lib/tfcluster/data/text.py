"""Parallel text and vocabularies in tensorflow/nmt's formats.

* Corpora are `prefix.lang` files, one sentence per line, plain or gzip (`prefix.lang.gz`).
* Vocabularies are `vocab_prefix.lang`: one token per line; tensorflow/nmt's
  `check_vocab` puts `<unk> <s> </s>` first, prepending them when the file does not
  start with them in that order (the fixed copy is written to out_dir).
* Tokenizing runs in the TensorFlow graph, so training, evaluation and the exported
  SavedModel split text identically: `space` (pre-tokenized text, as tensorflow/nmt)
  or `simple` (lowercase, punctuation split off); or, with subword vocabularies, a
  SentencePiece model (`subword.py`) on the raw cased text.
* The training pipeline follows tensorflow/nmt's `iterator_utils.get_iterator`: zip,
  shard per worker, shuffle, tokenize, drop empty pairs, truncate to max lengths, map to
  ids, `<s>`-prefixed decoder input and `</s>`-suffixed decoder output, length buckets,
  padded batches.
"""

from __future__ import annotations

import collections
import gzip
import os
from typing import Iterable, Iterator

from tfcluster.errors import UserError

UNK, SOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, SOS_ID, EOS_ID = 0, 1, 2
SPECIALS = (UNK, SOS, EOS)
TOKENIZERS = ("space", "simple")


# ---------------------------------------------------------------------------- files


def resolve(prefix: str, lang: str, what: str = "corpus") -> str:
    """`prefix.lang` or `prefix.lang.gz`, whichever exists (a local path, s3:// or gs://); a one-line
    error otherwise. A prefix with a wildcard must match exactly one file here (see `resolve_all`)."""
    from tfcluster import storage

    if storage.has_magic(prefix):
        found = resolve_all(prefix, lang, what)
        if len(found) != 1:
            raise UserError(f"{what} prefix {prefix} matches {len(found)} files; this setting takes one")
        return found[0]
    for path in (f"{prefix}.{lang}", f"{prefix}.{lang}.gz"):
        if storage.exists(path):
            return path
    shown = storage.display(prefix)
    raise UserError(f"{what} file not found: {shown}.{lang} (nor {shown}.{lang}.gz)"
                    + (f": {storage.missing_cause(prefix + '.' + lang)}" if storage.is_uri(prefix) else ""))


def resolve_all(prefix: str, lang: str, what: str = "corpus") -> list[str]:
    """Every `prefix.lang[.gz]` file, where `prefix` may hold wildcards (`train-*`), sorted."""
    from tfcluster import storage

    if not storage.has_magic(prefix):
        return [resolve(prefix, lang, what)]
    found = sorted(storage.glob(f"{prefix}.{lang}") + storage.glob(f"{prefix}.{lang}.gz"))
    if not found:
        raise UserError(f"no {what} files match {storage.display(prefix)}.{lang}[.gz]")
    return found


def file_pairs(prefix: str, src: str, tgt: str, what: str = "corpus") -> list[tuple[str, str]]:
    """(source file, target file) pairs of a prefix, matched by their stem (`train-3.en` with `train-3.de`)."""
    if not any(c in prefix for c in "*?["):
        return [(resolve(prefix, src, what), resolve(prefix, tgt, what))]

    def stems(lang):
        return {p.partition("?")[0].removesuffix(".gz").removesuffix(f".{lang}"): p for p in resolve_all(prefix, lang, what)}

    s, t = stems(src), stems(tgt)
    if set(s) != set(t):
        odd = sorted(set(s) ^ set(t))[0]
        raise UserError(f"{prefix}: {odd} has a .{src} or a .{tgt} file but not both; parallel files come in pairs")
    return [(s[k], t[k]) for k in sorted(s)]


def shard_files(pairs: list, num_shards: int, index: int) -> tuple[list, int, int]:
    """(this worker's files, line shards, line shard index): with at least as many files as workers,
    each worker takes whole files (`pairs[index::num_shards]`, so it fetches only those); else every
    worker reads every file and keeps every `num_shards`-th line."""
    if num_shards > 1 and len(pairs) >= num_shards:
        return pairs[index::num_shards], 1, 0
    return pairs, num_shards, index


def is_gzip(path: str) -> bool:
    return path.endswith(".gz")


def read_lines(path: str) -> Iterator[str]:
    """Lines of a plain or gzip text file (local, or a bucket object read from the node cache), without the
    trailing newline."""
    from tfcluster import storage

    with open(storage.local_copy(path), "rb") as raw:
        f = gzip.open(raw, "rt", encoding="utf-8") if is_gzip(path) else (line.decode("utf-8") for line in raw)
        for line in f:
            yield line.rstrip("\r\n")


def count_lines(path: str) -> tuple[int, list[int]]:
    """(number of lines, 1-based numbers of the empty ones)."""
    n, empty = 0, []
    for n, line in enumerate(read_lines(path), 1):
        if not line.strip():
            empty.append(n)
    return n, empty


def check_parallel(src_path: str, tgt_path: str) -> int:
    """Line counts must match; empty lines are reported once and dropped by the pipeline."""
    n_src, e_src = count_lines(src_path)
    n_tgt, e_tgt = count_lines(tgt_path)
    if n_src != n_tgt:
        raise UserError(f"{src_path} has {n_src} lines but {tgt_path} has {n_tgt}; parallel files must align line by line")
    if n_src == 0:
        raise UserError(f"{src_path} is empty")
    empty = sorted(set(e_src) | set(e_tgt))
    if empty:
        print(f"# warning: {len(empty)} empty line(s) in {src_path} / {tgt_path} (first at line {empty[0]}) are skipped", flush=True)
    return n_src - len(empty)


# ---------------------------------------------------------------------------- tokenizing (in graph)


def tokenize(text, mode: str):
    """Split a string tensor (any shape) into a RaggedTensor of tokens.

    `space`: split on whitespace. `simple`: lowercase (UTF-8 aware), split punctuation
    off words (Unicode letters and digits stay together), then split on whitespace.
    """
    import tensorflow as tf

    if mode == "simple":
        text = tf.strings.lower(text, encoding="utf-8")
        text = tf.strings.regex_replace(text, r"([^\pL\pN\s])", r" \1 ")
    elif mode != "space":
        raise ValueError(f"unknown tokenizer {mode!r}; one of {TOKENIZERS}")
    return tf.strings.split(tf.strings.strip(text))


def tokenize_py(lines: Iterable[str], mode: str, batch: int = 4096) -> Iterator[list[str]]:
    """The graph tokenizer applied to Python strings (for vocab building and references)."""
    import tensorflow as tf

    buf: list[str] = []

    def flush():
        toks = tokenize(tf.constant(buf), mode).to_list()
        return [[t.decode("utf-8") for t in row] for row in toks]

    for line in lines:
        buf.append(line)
        if len(buf) == batch:
            yield from flush()
            buf = []
    if buf:
        yield from flush()


# ---------------------------------------------------------------------------- vocabularies


def load_vocab(path: str) -> list[str]:
    from tfcluster import storage

    if not storage.exists(path):
        raise UserError(f"vocab file not found: {storage.display(path)}")
    with open(storage.local_copy(path), encoding="utf-8") as f:
        tokens = [line.rstrip("\r\n") for line in f]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise UserError(f"vocab file {path} is empty")
    return tokens


def check_vocab(tokens: list[str]) -> tuple[list[str], bool]:
    """tensorflow/nmt's check_vocab: ensure `<unk> <s> </s>` lead; returns (vocab, changed)."""
    if tuple(tokens[:3]) == SPECIALS:
        rest = tokens[3:]
        changed = False
    else:
        rest = [t for t in tokens if t not in SPECIALS]
        changed = True
    seen, out = set(), list(SPECIALS)
    for t in rest:
        if t in seen:
            raise UserError(f"vocab has the token {t!r} twice")
        seen.add(t)
        out.append(t)
    return out, changed


def build_vocab(token_lists: Iterable[list[str]], max_size: int, min_count: int = 1) -> list[str]:
    """Most frequent tokens (ties by token), specials first, at most `max_size` entries."""
    counts = collections.Counter(t for toks in token_lists for t in toks)
    for s in SPECIALS:
        counts.pop(s, None)
    ranked = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return list(SPECIALS) + ranked[: max(0, max_size - len(SPECIALS))]


def save_vocab(tokens: list[str], path: str) -> str:
    import tensorflow as tf

    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("\n".join(tokens) + "\n")
    return path


def lookup_table(vocab_path: str):
    """token -> id (unknown tokens -> <unk> = 0), from a vocab file (an asset in SavedModels)."""
    import tensorflow as tf

    init = tf.lookup.TextFileInitializer(
        vocab_path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER
    )
    return tf.lookup.StaticHashTable(init, default_value=UNK_ID)


# ---------------------------------------------------------------------------- pipelines


# Padding for (src, src_len, tgt_in, tgt_out, tgt_len) batches: </s> ids, zero lengths.
PADDED_FIELDS = dict(padded_shapes=([None], [], [None], [None], []), padding_values=(EOS_ID, 0, EOS_ID, EOS_ID, 0))


def decoder_fields(s, t):
    """(src, src_len, <s>+tgt, tgt+</s>, len(tgt)+1): tensorflow/nmt's decoder input and output."""
    import tensorflow as tf

    t_in = tf.concat([[SOS_ID], t], 0)
    return s, tf.size(s), t_in, tf.concat([t, [EOS_ID]], 0), tf.size(t_in)


def encoder(vocab, tokenizer: str):
    """line(s) -> int32 ids: `vocab` is a codec with `encode` (the NMT model's word or subword vocabulary), or a
    token -> id lookup table used with the `tokenizer`."""
    import tensorflow as tf

    if hasattr(vocab, "encode"):
        return vocab.encode
    return lambda line: tf.cast(vocab.lookup(tokenize(line, tokenizer)), tf.int32)


def to_ids_fn(src_vocab, tgt_vocab, tokenizer: str = "space", src_max_len: int = 0, tgt_max_len: int = 0):
    """A map function: (src line, tgt line) -> (src ids, tgt ids), each cut to its max length when given."""
    enc_src, enc_tgt = encoder(src_vocab, tokenizer), encoder(tgt_vocab, tokenizer)

    def ids(enc, line, max_len):
        out = enc(line)
        return out[:max_len] if max_len else out

    return lambda src, tgt: (ids(enc_src, src, src_max_len), ids(enc_tgt, tgt, tgt_max_len))


def both_non_empty(s, t):
    import tensorflow as tf

    return tf.logical_and(tf.size(s) > 0, tf.size(t) > 0)


def text_dataset(paths: str | list[str]):
    """Lines of one or more files (plain or gzip, local or in a bucket: read from the node cache)."""
    import tensorflow as tf

    from tfcluster import storage

    paths = [paths] if isinstance(paths, str) else list(paths)
    kinds = {is_gzip(p.partition("?")[0]) for p in paths}
    if len(kinds) > 1:
        raise UserError(f"{paths[0]} ...: mix plain and gzip files in one prefix; use one kind")
    return tf.data.TextLineDataset(storage.local_copies(paths), compression_type="GZIP" if kinds.pop() else "")


def train_dataset(
    src_path: str | list[str],
    tgt_path: str | list[str],
    src_table,
    tgt_table,
    *,
    batch_size: int,
    tokenizer: str = "space",
    src_max_len: int,
    tgt_max_len: int,
    num_buckets: int = 5,
    num_shards: int = 1,
    shard_index: int = 0,
    seed: int = 0,
    shuffle_buffer: int = 0,
):
    """Repeated, shuffled, bucketed batches of (src, src_len, tgt_in, tgt_out, tgt_len), as tensorflow/nmt.
    `src_table`/`tgt_table`: lookup tables used with `tokenizer`, or codecs (see `encoder`)."""
    import tensorflow as tf

    ds = tf.data.Dataset.zip((text_dataset(src_path), text_dataset(tgt_path)))
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index)
    # Tokenized, truncated and mapped to ids once: the cache holds id vectors, later epochs only shuffle them.
    ds = ds.map(to_ids_fn(src_table, tgt_table, tokenizer, src_max_len, tgt_max_len), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.filter(both_non_empty)
    ds = ds.cache().shuffle(shuffle_buffer or batch_size * 1000, seed=seed, reshuffle_each_iteration=True).repeat()

    ds = ds.map(decoder_fields, num_parallel_calls=tf.data.AUTOTUNE)
    padded = dict(PADDED_FIELDS, drop_remainder=True)
    if num_buckets > 1 and src_max_len:
        width = (max(src_max_len, tgt_max_len or src_max_len) + num_buckets - 1) // num_buckets

        def key(s, sl, ti, to, tl):
            return tf.cast(tf.minimum(num_buckets, tf.maximum(sl // width, tl // width)), tf.int64)

        ds = ds.group_by_window(key, lambda _, w: w.padded_batch(batch_size, **padded), window_size=batch_size)
    else:
        ds = ds.padded_batch(batch_size, **padded)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(src_path: str, tgt_path: str, src_table, tgt_table, *, batch_size: int, tokenizer: str = "space"):
    """Dev/test batches in file order, every non-empty pair, no truncation."""
    import tensorflow as tf

    ds = tf.data.Dataset.zip((text_dataset(src_path), text_dataset(tgt_path)))
    ds = ds.map(to_ids_fn(src_table, tgt_table, tokenizer)).filter(both_non_empty)
    return ds.map(decoder_fields).padded_batch(batch_size, **PADDED_FIELDS).prefetch(2)
