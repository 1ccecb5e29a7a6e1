"""tfcluster.storage against the S3 stand-in (moto's server on 127.0.0.1), through plain s3:// URIs with
the endpoint and credentials in the standard AWS environment variables: the node cache, globs, parallel
file pairs, atomic exports to a bucket, the sync sidecar, and one-line errors for bad buckets."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from tfcluster import contract, export, storage
from tfcluster.data import text
from tfcluster.errors import UserError



def cache_files(tmp_path):
    root = tmp_path / "node-cache"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_an_object_is_fetched_once_per_node_and_again_when_it_changes(s3, tmp_path):
    uri = f"{s3}/data/train.en"
    storage.write_bytes(uri, b"a man rides a bike .\n")
    first = storage.local_copy(uri)
    stamp = os.stat(first).st_mtime_ns
    time.sleep(0.05)
    assert storage.local_copy(uri) == first and os.stat(first).st_mtime_ns == stamp  # a cache hit: not written again
    assert open(first).read() == "a man rides a bike .\n" and first.endswith("-train.en")  # keeps its name (.gz stays .gz)

    storage.write_bytes(uri, b"a woman walks a dog .\n")  # a changed object (other size and time): fetched again
    second = storage.local_copy(uri)
    assert second != first and open(second).read() == "a woman walks a dog .\n"
    assert not [n for n in cache_files(tmp_path) if ".part-" in n]  # no half-written entry left


def test_globs_list_objects_and_pair_parallel_files_for_workers(s3, tmp_path):
    for i in range(3):
        storage.write_bytes(f"{s3}/corpus/train-{i}.en", f"hello {i}\n".encode())
        storage.write_bytes(f"{s3}/corpus/train-{i}.de", f"hallo {i}\n".encode())
    storage.write_bytes(f"{s3}/corpus/dev.en", b"x\n")
    assert storage.glob(f"{s3}/corpus/train-*.en") == [f"{s3}/corpus/train-{i}.en" for i in range(3)]
    assert storage.glob(f"{s3}/*/dev.en") == [f"{s3}/corpus/dev.en"]
    pairs = text.file_pairs(f"{s3}/corpus/train-*", "en", "de")
    assert pairs == [(f"{s3}/corpus/train-{i}.en", f"{s3}/corpus/train-{i}.de") for i in range(3)]
    # three files, two workers: whole files each (0 and 2, then 1); one file, two workers: every other line
    assert text.shard_files(pairs, 2, 0) == (pairs[0::2], 1, 0) and text.shard_files(pairs, 2, 1) == (pairs[1:2], 1, 0)
    assert text.shard_files(pairs[:1], 2, 1) == (pairs[:1], 2, 1)
    storage.write_bytes(f"{s3}/corpus/train-3.en", b"lonely\n")
    with pytest.raises(UserError, match="train-3 has a .en or a .de file but not both"):
        text.file_pairs(f"{s3}/corpus/train-*", "en", "de")
    # the same calls on a local folder
    local = tmp_path / "local"
    local.mkdir()
    for name in ("a.jpg", "b.jpg", "c.png"):
        (local / name).write_bytes(b"x")
    assert storage.glob(str(local / "*.jpg")) == [str(local / "a.jpg"), str(local / "b.jpg")]


def test_missing_bucket_missing_object_and_unreachable_endpoint_are_one_line(s3, tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"s3://no-such-bucket-x/train.en: the bucket no-such-bucket-x does not exist"):
        storage.local_copy("s3://no-such-bucket-x/train.en")
    with pytest.raises(UserError, match=r"/nothing.en: no such file or object"):
        storage.local_copy(f"{s3}/nothing.en")
    with pytest.raises(UserError, match=r"corpus file not found: s3://no-such-bucket-x/train.en \(nor s3://no-such-bucket-x/train.en.gz\): the bucket"):
        text.resolve("s3://no-such-bucket-x/train", "en")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"cannot reach the storage endpoint") as e:
        storage.local_copy(f"{s3}/train.en")
    assert time.monotonic() - t0 < 30 and "\n" not in str(e.value)
    assert not [n for n in cache_files(tmp_path) if not n.endswith(".lock")]  # nothing half-written


def _module(tf, mb: int):
    class Big(tf.Module):
        def __init__(self):
            self.w = tf.Variable(np.ones((mb * 1024 * 256,), np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, observation):
            p = tf.nn.softmax(observation[:, :2] + self.w[0])
            return {"action": tf.argmax(p, -1), "probabilities": p}

    return Big()


def test_an_export_to_a_bucket_is_never_seen_half_written(s3, tmp_path):
    """A poller lists the bucket every 50 ms during the export: whenever the version has its saved_model.pb,
    it has every file of the finished version; a failed upload leaves nothing behind."""
    import tensorflow as tf

    base = f"{s3}/models"
    m = _module(tf, 24)
    seen, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            files = storage.walk_files(f"{base}/pg/1") if "1" in storage.listdir(f"{base}/pg") else []
            seen.append({name for name, _size, _t in files})
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        path = export.save_version(m, {"serving_default": m.serve}, base, contract.PG)
    finally:
        stop.set()
        poller.join()
    final = {name for name, _s, _t in storage.walk_files(path)}
    assert path == f"{base}/pg/1" and "saved_model.pb" in final and any(n.startswith("variables/") for n in final)
    assert len(seen) >= 3
    for names in seen:
        assert "saved_model.pb" not in names or names == final, sorted(final - names)
    assert export.versions(base, "pg") == [1] and export.next_version(base, "pg") == 2
    export.check_signature(path, contract.PG)  # loads through the node cache

    import shutil as shutil_mod

    calls = {"n": 0}
    real = shutil_mod.copyfileobj

    def failing(src, dst, length=0):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("connection reset by peer")
        return real(src, dst, length)

    shutil_mod.copyfileobj = failing
    try:
        with pytest.raises(UserError, match="connection reset"):
            export.save_version(m, {"serving_default": m.serve}, base, contract.PG)
    finally:
        shutil_mod.copyfileobj = real
    assert storage.listdir(f"{base}/pg") == ["1"]  # no partial version 2


def test_sync_models_mirrors_complete_versions_and_a_server_polling_the_folder_serves_them(s3_upload, s3, tmp_path):
    from tfcluster.serving import Client, LocalServer, tiny
    from tfcluster.serving.sync import main as sync_main

    local = tmp_path / "exports"
    v1 = tiny.export(tiny.pg_policy(0), str(local), contract.PG)
    v2 = tiny.export(tiny.pg_policy(1), str(local), contract.PG)
    s3_upload(v1, f"{s3}/models/pg/1")
    # version 2 is mid-upload: everything but its saved_model.pb
    for name, _s, _t in storage.walk_files(v2):
        if name != "saved_model.pb":
            s3_upload(os.path.join(v2, name), f"{s3}/models/pg/2/{name}")
    dst = tmp_path / "mirror"
    assert sync_main([f"{s3}/models", str(dst), "--once"]) == 0
    assert sorted(os.listdir(dst / "pg")) == ["1"]

    server = LocalServer(model_base_path=str(dst / "pg"), model_name="pg", file_system_poll_wait_seconds=1,
                         log_path=str(tmp_path / "server.log")).start()
    try:
        server.wait_until_available("pg", timeout_s=120)
        client = Client(server.target)
        obs = np.array([[0.1, -0.2, 0.3, 0.0]], np.float32)
        assert client.metadata("pg").version == 1

        s3_upload(os.path.join(v2, "saved_model.pb"), f"{s3}/models/pg/2/saved_model.pb")  # the upload completes
        storage.delete_tree(f"{s3}/models/pg/1")  # and version 1 is retired at the source
        assert sync_main([f"{s3}/models", str(dst), "--once", "--models", "pg"]) == 0
        assert sorted(os.listdir(dst / "pg")) == ["2"]  # no .tmp- or .removed- folders left
        deadline = time.time() + 60
        while client.metadata("pg").version != 2:
            assert time.time() < deadline, server.log_tail()
            time.sleep(0.5)
        import tensorflow as tf

        want = tf.saved_model.load(v2).signatures["serving_default"](observation=tf.constant(obs))
        got = client.predict("pg", {"observation": obs})
        np.testing.assert_allclose(got["probabilities"], want["probabilities"].numpy(), rtol=1e-6)
        client.close()
    finally:
        assert server.stop() == 0, server.log_tail()


def test_sync_models_says_one_line_for_a_missing_bucket(s3, tmp_path, capsys):
    from tfcluster.serving.sync import main as sync_main

    with pytest.raises(SystemExit) as e:
        sync_main(["s3://no-such-bucket-y/models", str(tmp_path / "m"), "--once", "--models", "nmt"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: s3://no-such-bucket-y/models/nmt") and "does not exist" in err and "\n" not in err
