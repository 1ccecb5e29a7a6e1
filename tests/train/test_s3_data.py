"""Data in a bucket and models out to it, end to end against the S3 stand-in (moto's server on 127.0.0.1),
through plain s3:// URIs with the endpoint and keys in the standard AWS environment variables:

* NMT trained by 2 Ray Train workers from a glob of corpus files in the bucket (each worker takes whole
  files), exported to the bucket, served from the bucket by `tfcluster serve`, translated over gRPC
  exactly as the exported signature translates in process;
* DCGAN trained from an image folder in the bucket.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tfcluster import storage
from tfcluster import workloads
from tfcluster.data import toy
from tfcluster.metrics import read_metrics
from tfcluster.workloads import nmt

pytestmark = pytest.mark.slow


def _split(prefix: str, langs: tuple[str, str], parts: int) -> None:
    """Write prefix-<i>.<lang> files, `parts` of them, from prefix.<lang>."""
    for lang in langs:
        lines = open(f"{prefix}.{lang}").read().splitlines()
        for i in range(parts):
            with open(f"{prefix}-{i}.{lang}", "w") as f:
                f.write("\n".join(lines[i::parts]) + "\n")
        os.remove(f"{prefix}.{lang}")


def test_nmt_from_a_bucket_to_a_bucket_served_from_the_bucket(s3_upload, ray_local, tmp_path, s3):
    import tensorflow as tf

    from tfcluster.serving import Client, LocalServer
    from tfcluster.train import driver

    local = toy.write_corpus(str(tmp_path / "corpus"), sizes={"train": 400, "dev": 10})
    _split(local["train"], ("src", "tgt"), 3)
    s3_upload(str(tmp_path / "corpus"), f"{s3}/multi30k")
    cfg = nmt.Config(src="src", tgt="tgt", train_prefix=f"{s3}/multi30k/train-*", dev_prefix=f"{s3}/multi30k/dev",
                     vocab_prefix=f"{s3}/multi30k/vocab", out_dir=str(tmp_path / "run"), num_units=16,
                     attention="luong", batch_size=16, steps_per_stats=5, steps_per_external_eval=10,
                     num_workers=2, num_train_steps=20, model_base_path=f"{s3}/models")
    metrics = driver.run(workloads.get("nmt"), cfg)
    assert metrics["export_path"] == f"{s3}/models/nmt/1"
    records = read_metrics(cfg.out_dir)
    assert [r["step"] for r in records if "train/loss" in r] == [5, 10, 15, 20]
    assert any("eval/bleu" in r for r in records)
    assert storage.is_complete_version(f"{s3}/models/nmt/1")

    sources = ["a man rides a bike .", "two dogs play ."]
    loaded = tf.saved_model.load(storage.local_tree(f"{s3}/models/nmt/1"))
    want = loaded.signatures["serving_default"](source=tf.constant(sources))["translation"].numpy()

    server = LocalServer(model_name="nmt", model_base_path=f"{s3}/models/nmt", file_system_poll_wait_seconds=1,
                         log_path=str(tmp_path / "server.log")).start()
    try:
        server.wait_until_available("nmt", timeout_s=180)
        client = Client(server.target)
        got = client.predict("nmt", {"source": np.array(sources, dtype=object)})
        assert list(got["translation"]) == list(want)
        assert client.metadata("nmt").version == 1
        client.close()
    finally:
        assert server.stop() == 0, server.log_tail()


def test_serve_from_a_missing_bucket_is_one_line(tmp_path, s3):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "tfcluster.serving.server", "--model_name=nmt",
                          "--model_base_path=s3://no-such-bucket-z/models/nmt", "--port=0"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "..", "lib")})
    assert out.returncode == 2
    err = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert err == ["error: model nmt: base path s3://no-such-bucket-z/models/nmt: the bucket no-such-bucket-z does not exist"]


def test_dcgan_trains_from_an_image_folder_in_a_bucket(s3_upload, tmp_path, s3):
    from PIL import Image

    from tfcluster.train.loop import run_loop
    from tfcluster.workloads import dcgan

    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:20, 0:20] / 20
    for i in range(32):
        a, b, c = rng.random(3)
        img = np.stack([a * yy + (1 - a) * xx, b * xx, c * (1 - yy)], -1) * 255
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:03d}.jpg")
    (folder / "broken.jpg").write_bytes(b"garbage")
    s3_upload(str(folder), f"{s3}/images/faces")

    cfg = dcgan.prepare(dcgan.Config(dataset="faces", data_dir=f"{s3}/images", input_height=16, output_height=16,
                                     crop=True, epoch=2, batch_size=8, gf_dim=8, df_dim=8, z_dim=8,
                                     out_dir=str(tmp_path / "run"), steps_per_stats=4, sample_every=8, swd_images=16))
    index = dcgan.folder_index(cfg)
    assert index.size == 33 and index.files[0] == f"{s3}/images/faces/000.jpg" and cfg.c_dim == 3
    run_loop(lambda s: dcgan.Task(cfg, s), cfg)
    stats = [r for r in read_metrics(cfg.out_dir) if "train/d_loss" in r]
    assert stats and all(np.isfinite(r["train/d_loss"]) and np.isfinite(r["train/g_loss"]) for r in stats)
    cached = [n for n in os.listdir(tmp_path / "node-cache") if n.endswith(".jpg")]
    assert len(cached) == 33  # every object fetched once into the node cache (the broken one skipped by the pipeline)
