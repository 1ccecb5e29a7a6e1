"""Cloud storage for real: a short NMT run with `--storage_path s3://...` against an S3-protocol server
on 127.0.0.1. The S3 stand-in is moto's server mode (`python -m moto.server`), run as its own process
from `.venv/s3-stand-in` (`make test` installs it from requirements-s3.lock): it speaks the S3 REST
API that pyarrow's S3 file system (Ray Train's storage layer) talks to a real bucket.

A worker is killed mid-run (fault injection) and Ray Train restarts it from the checkpoint in the
bucket; then the same command with a new, empty out_dir (as on another machine) resumes from the
bucket alone and exports.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from tfcluster import runs, workloads
from tfcluster.metrics import read_metrics
from tfcluster.train import driver
from tfcluster.train.loop import FAIL_AT_STEP_ENV
from test_driver import small_cfg

STAND_IN = os.environ.get("TFCLUSTER_S3_STAND_IN", "")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir(os.path.join(STAND_IN, "moto")),
                       reason="no S3 stand-in: run through `make test` (it installs moto into .venv/s3-stand-in)"),
]


@pytest.fixture
def s3_bucket(moto_endpoint):
    """A fresh bucket in the session's S3 stand-in (conftest's `moto_endpoint`), named through pyarrow's
    `?endpoint_override=` URI form (inline keys, no AWS environment), as Ray Train's storage reads it."""
    import uuid

    import pyarrow.fs

    bucket = f"tfcluster-runs-{uuid.uuid4().hex[:8]}"
    host = moto_endpoint.split("://", 1)[1]
    uri = f"s3://testing:testing@{bucket}/store?endpoint_override={host}&scheme=http&region=us-east-1"
    fs, _ = pyarrow.fs.FileSystem.from_uri(uri.replace("/store?", "?") + "&allow_bucket_creation=true")
    fs.create_dir(bucket)
    yield uri


def test_nmt_checkpoints_in_s3_survive_a_killed_worker_and_a_new_machine(ray_local, tmp_path, s3_bucket, monkeypatch):
    cfg = small_cfg(tmp_path, num_train_steps=20, max_failures=1, storage_path=s3_bucket,
                        model_base_path=str(tmp_path / "models"))
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "15")
    driver.run(workloads.get("nmt"), cfg)
    assert (tmp_path / "run" / ".failed_at_15").exists()
    assert [r["step"] for r in read_metrics(cfg.out_dir) if "train/loss" in r] == [5, 10, 15, 20]

    fs, experiment = runs.storage_fs(runs.join(s3_bucket, "nmt"))
    assert runs.latest_stored_checkpoint(fs, experiment) is not None
    assert runs.exists(fs, runs.join(experiment, runs.BEST_DIR))

    monkeypatch.delenv(FAIL_AT_STEP_ENV)
    elsewhere = dataclasses.replace(cfg, out_dir=str(tmp_path / "elsewhere"), num_train_steps=30)
    metrics = driver.run(workloads.get("nmt"), elsewhere)
    assert [r["step"] for r in read_metrics(elsewhere.out_dir) if "train/loss" in r] == [25, 30]
    assert metrics["export_path"].endswith("/nmt/2")


def test_a_sweep_in_s3_exports_and_resumes_from_the_bucket(ray_local, tmp_path, s3_bucket, monkeypatch):
    """The sweep's trials keep their run folders in the bucket; results.csv and best_config.json are
    there and name bucket folders; --export_best and --resume read the bucket, not the driver's disk."""
    import csv
    import io
    import json

    from tfcluster.data.toy import write_corpus
    from tfcluster.tune import sweep

    corpus = write_corpus(str(tmp_path / "corpus"), sizes={"train": 200, "dev": 10})
    sweeps = runs.join(s3_bucket, "sweeps")
    argv = ["--num_samples", "1", "--scheduler", "fifo", "--cpus_per_trial", "1", "--evals_per_trial", "2",
            "--storage_path", sweeps, "--name", "s3", "--export_best", "--model_base_path", str(tmp_path / "models"),
            "--src", "src", "--tgt", "tgt", "--train_prefix", corpus["train"], "--dev_prefix", corpus["dev"],
            "--num_train_steps", "10", "--num_units", "8", "--num_layers", "1", "--batch_size", "16",
            "--attention", "", "--seed", "1"]
    monkeypatch.setenv("TMPDIR", str(tmp_path / "driver"))  # the driver's local copies, removed below
    (tmp_path / "driver").mkdir()
    out = sweep.run(workloads.get("nmt"), *sweep.parse(workloads.get("nmt"), argv))
    assert out["experiment"] == runs.join(sweeps, "s3") and out["export_path"].endswith("/nmt/1")

    fs, exp = runs.storage_fs(runs.join(sweeps, "s3"))
    with fs.open_input_stream(f"{exp}/results.csv") as f:
        (row,) = list(csv.DictReader(io.StringIO(f.read().decode())))
    assert row["status"] == "DONE" and row["out_dir"].startswith("s3://") and "/s3/trial_" in row["out_dir"]
    with fs.open_input_stream(f"{exp}/best_config.json") as f:
        assert json.loads(f.read())["out_dir"] == row["out_dir"]
    run_fs, run_path = runs.storage_fs(row["out_dir"])
    for name in ("config.json", "metrics.jsonl", "best/checkpoint"):
        assert runs.exists(run_fs, f"{run_path}/{name}"), name

    import shutil

    shutil.rmtree(tmp_path / "driver")  # another machine: nothing of the first run on its disk
    (tmp_path / "driver").mkdir()
    again = sweep.run(workloads.get("nmt"), *sweep.parse(workloads.get("nmt"), [*argv, "--resume"]))
    assert again["best"]["trial"] == out["best"]["trial"] and again["export_path"].endswith("/nmt/2")
