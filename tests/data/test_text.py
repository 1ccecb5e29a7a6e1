import gzip

import pytest
import tensorflow as tf

from tfcluster.data import text, toy
from tfcluster.errors import UserError


def test_simple_tokenizer_lowercases_and_splits_punctuation():
    toks = text.tokenize(tf.constant(["Zwei junge, weiße Männer!", "A man's bike."]), "simple").to_list()
    assert [t.decode() for t in toks[0]] == ["zwei", "junge", ",", "weiße", "männer", "!"]
    assert [t.decode() for t in toks[1]] == ["a", "man", "'", "s", "bike", "."]
    assert list(text.tokenize_py(["Hello ,  World"], "space")) == [["Hello", ",", "World"]]


def test_check_vocab_prepends_specials_and_rejects_duplicates():
    assert text.check_vocab(["<unk>", "<s>", "</s>", "a"]) == (["<unk>", "<s>", "</s>", "a"], False)
    assert text.check_vocab(["a", "b"]) == (["<unk>", "<s>", "</s>", "a", "b"], True)
    assert text.check_vocab(["<s>", "a", "<unk>"])[0] == ["<unk>", "<s>", "</s>", "a"]
    with pytest.raises(UserError, match="twice"):
        text.check_vocab(["a", "a"])


def test_build_vocab_by_frequency_then_token():
    v = text.build_vocab([["b", "a", "b"], ["c", "a", "b"]], max_size=5)
    assert v == ["<unk>", "<s>", "</s>", "b", "a"]


def test_gzip_and_plain_files_resolve_and_read(tmp_path):
    (tmp_path / "t.en").write_text("one\ntwo\n")
    with gzip.open(tmp_path / "t.de.gz", "wt") as f:
        f.write("eins\nzwei\n")
    assert text.resolve(str(tmp_path / "t"), "de").endswith(".de.gz")
    assert list(text.read_lines(text.resolve(str(tmp_path / "t"), "de"))) == ["eins", "zwei"]
    assert text.check_parallel(str(tmp_path / "t.en"), str(tmp_path / "t.de.gz")) == 2
    with pytest.raises(UserError, match="corpus file not found: .*t.fr"):
        text.resolve(str(tmp_path / "t"), "fr")


def test_line_count_mismatch_and_empty_lines(tmp_path, capsys):
    (tmp_path / "a.x").write_text("1\n2\n3\n")
    (tmp_path / "a.y").write_text("1\n2\n")
    with pytest.raises(UserError, match="has 3 lines but .* has 2"):
        text.check_parallel(str(tmp_path / "a.x"), str(tmp_path / "a.y"))
    (tmp_path / "b.x").write_text("1\n\n3\n")
    (tmp_path / "b.y").write_text("1\n2\n3\n")
    assert text.check_parallel(str(tmp_path / "b.x"), str(tmp_path / "b.y")) == 2
    assert "first at line 2" in capsys.readouterr().out


def test_train_dataset_fields_and_shards(tmp_path):
    p = toy.write_corpus(str(tmp_path), sizes={"train": 40}, gz=True)
    st, tt = text.lookup_table(p["vocab"] + ".src"), text.lookup_table(p["vocab"] + ".tgt")
    kw = dict(batch_size=4, tokenizer="space", src_max_len=5, tgt_max_len=6, num_buckets=1)
    src, src_len, tgt_in, tgt_out, tgt_len = next(iter(text.train_dataset(p["train"] + ".src.gz", p["train"] + ".tgt.gz", st, tt, **kw)))
    assert src.shape[0] == 4 and int(tf.reduce_max(src_len)) <= 5
    assert all(int(x) == text.SOS_ID for x in tgt_in[:, 0])
    for row, n in zip(tgt_out.numpy(), tgt_len.numpy()):
        assert row[n - 1] == text.EOS_ID and text.UNK_ID not in row[: n - 1]
    # Two shards see disjoint sentences.
    def firsts(i):
        ds = text.train_dataset(p["train"] + ".src.gz", p["train"] + ".tgt.gz", st, tt, num_shards=2, shard_index=i, **dict(kw, batch_size=20))
        return {tuple(r) for r in next(iter(ds))[0].numpy().tolist()}
    assert not firsts(0) & firsts(1)
