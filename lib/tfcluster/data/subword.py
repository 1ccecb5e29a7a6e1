"""SentencePiece subword models for NMT: trained on the training text, run inside the graph.

The `sentencepiece` library trains a unigram or BPE model with byte fallback on the raw
(cased, untokenized) training text; tensorflow-text's SentencePiece ops apply it inside
tf.data, the training step's evaluation and the exported SavedModel, so a served model
takes raw text and returns detokenized text with no Python step around it. The ids of
the specials are the word vocabularies' (`<unk>` 0, `<s>` 1, `</s>` 2), so the model,
the decoders and the pipelines do not care which kind of vocabulary they read.

Byte fallback: a character the model has no piece for becomes its UTF-8 bytes
(`<0xF0> <0x9F> ...`) instead of `<unk>`, and decoding turns the bytes back into the
character, so any input, emoji and unseen scripts included, round-trips.
"""

from __future__ import annotations

import io
from typing import Iterable

from tfcluster.data.text import EOS, EOS_ID, SOS, SOS_ID, UNK, UNK_ID
from tfcluster.errors import UserError

MODEL_TYPES = ("unigram", "bpe")
BYTE_PIECES = 256


def train(lines: Iterable[str], vocab_size: int, model_type: str = "unigram", seed: int = 0,
          max_sentences: int = 2_000_000) -> bytes:
    """A serialized SentencePiece model trained on `lines` (at most `vocab_size` pieces; fewer when the text
    has fewer to give)."""
    import sentencepiece as spm

    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown subword model {model_type!r}; one of {MODEL_TYPES}")
    kept = [line for line in lines if line.strip()]
    if not kept:
        raise UserError("no text to train a SentencePiece model on (the training files are empty)")
    out = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(kept), model_writer=out, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, byte_fallback=True, hard_vocab_limit=False,
        unk_id=UNK_ID, bos_id=SOS_ID, eos_id=EOS_ID, pad_id=-1, unk_piece=UNK, bos_piece=SOS, eos_piece=EOS,
        input_sentence_size=max_sentences, shuffle_input_sentence=True, num_threads=1, minloglevel=2,
    )
    return out.getvalue()


def _processor(model: bytes):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model)
    return sp


def check_model(model: bytes, shown: str = "the SentencePiece model") -> bytes:
    """A model this project can use: its specials at the word vocabularies' ids, and byte fallback."""
    try:
        sp = _processor(model)
    except Exception as e:  # the library's parse error names no file
        raise UserError(f"{shown} is not a SentencePiece model ({type(e).__name__}: {e})") from None
    want = {UNK_ID: UNK, SOS_ID: SOS, EOS_ID: EOS}
    got = {i: sp.id_to_piece(i) for i in want if i < sp.get_piece_size()}
    if got != want or sp.unk_id() != UNK_ID:
        raise UserError(f"{shown} must have <unk> <s> </s> as ids 0 1 2 (trained with --unk_id=0 --bos_id=1 "
                        f"--eos_id=2 --pad_id=-1); it has {got}")
    if not any(sp.is_byte(i) for i in range(sp.get_piece_size())):
        raise UserError(f"{shown} has no byte pieces; train it with --byte_fallback=true so no input becomes <unk>")
    return model


def size(model: bytes) -> int:
    return _processor(model).get_piece_size()


def pieces(model: bytes) -> list[str]:
    """The model's pieces in id order (the run's vocab file, for reading)."""
    sp = _processor(model)
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
