"""Multi30k for the demo: found beside the checkout, in the cache, or downloaded and verified;
with the network unreachable, one line and the generated corpus."""

import functools
import gzip
import hashlib
import http.server
import os
import threading

import pytest

from tfcluster import demo
from tfcluster.data import multi30k
from tfcluster.serving.local import free_port


@pytest.fixture
def fake_multi30k(tmp_path, monkeypatch):
    """Small stand-in files with their checksums put in place of the real ones, and a fresh cache."""
    src = tmp_path / "served"
    src.mkdir()
    sums = {}
    for name in multi30k.FILES:
        text = "".join(f"{name} line {i} .\n" for i in range(5)).encode()
        (src / f"{name}.gz").write_bytes(gzip.compress(text))
        sums[name] = hashlib.sha256(text).hexdigest()
    monkeypatch.setattr(multi30k, "FILES", sums)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return src


@pytest.fixture
def http_folder():
    """Serve a folder on 127.0.0.1 (the stand-in for the dataset's public address)."""
    servers = []

    def serve(folder):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *a: None
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"

    yield serve
    for s in servers:
        s.shutdown()
        s.server_close()


def test_a_present_folder_is_used_as_it_is(fake_multi30k):
    assert multi30k.locate(str(fake_multi30k)) == str(fake_multi30k)


def test_download_is_verified_and_cached(fake_multi30k, http_folder, monkeypatch, tmp_path):
    monkeypatch.setenv(multi30k.URL_ENV, http_folder(fake_multi30k))
    got = multi30k.locate(str(tmp_path / "absent"))
    assert got == multi30k.cache_dir() and got.startswith(str(tmp_path / "cache"))
    assert sorted(os.listdir(got)) == sorted(f"{n}.gz" for n in multi30k.FILES)
    # The cache is used next time, with no server at all.
    monkeypatch.setenv(multi30k.URL_ENV, f"http://127.0.0.1:{free_port()}/")
    assert multi30k.locate(None) == got


def test_a_file_that_fails_its_checksum_is_not_kept(fake_multi30k, http_folder, monkeypatch):
    bad = next(iter(multi30k.FILES))
    (fake_multi30k / f"{bad}.gz").write_bytes(gzip.compress(b"something else\n"))
    monkeypatch.setenv(multi30k.URL_ENV, http_folder(fake_multi30k))
    with pytest.raises(multi30k.FetchError, match="does not match its SHA-256 checksum"):
        multi30k.locate(None)
    cache = multi30k.cache_dir()
    assert not os.path.exists(os.path.join(cache, f"{bad}.gz"))
    assert not [f for f in os.listdir(cache) if f.endswith(".part")]


def test_demo_falls_back_to_the_generated_corpus_in_one_line(fake_multi30k, monkeypatch, tmp_path, capsys):
    """No ../shared, nothing cached, and the network unreachable (a closed port on 127.0.0.1)."""
    monkeypatch.setattr(demo, "MULTI30K", str(tmp_path / "no-shared" / "multi30k"))
    monkeypatch.setenv(multi30k.URL_ENV, f"http://127.0.0.1:{free_port()}/")
    flags, sentences = demo.corpus(str(tmp_path / "work"))
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith("corpus: Multi30k is not available (cannot download http://127.0.0.1:")
    assert "training on the generated word-for-word corpus" in out
    assert flags[flags.index("--src") + 1] == "src" and os.path.exists(flags[flags.index("--train_prefix") + 1] + ".src")
    assert sentences


def test_demo_uses_a_downloaded_multi30k(fake_multi30k, http_folder, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo, "MULTI30K", str(tmp_path / "no-shared" / "multi30k"))
    monkeypatch.setenv(multi30k.URL_ENV, http_folder(fake_multi30k))
    flags, _ = demo.corpus(str(tmp_path / "work"))
    assert flags[flags.index("--train_prefix") + 1] == os.path.join(multi30k.cache_dir(), "train")
    assert capsys.readouterr().out == f"corpus: Multi30k en->de from {multi30k.cache_dir()}\n"
