"""The Ray Train driver: 2 workers under MultiWorkerMirroredStrategy, resume, restart after a failure."""

import os

import pytest

from tfcluster import config as config_mod
from tfcluster import workloads
from tfcluster.data import toy
from tfcluster import runs
from tfcluster.errors import UserError
from tfcluster.metrics import read_metrics
from tfcluster.train import driver
from tfcluster.train.loop import FAIL_AT_STEP_ENV
from tfcluster.workloads import nmt


def small_cfg(tmp_path, **kw):
    p = toy.write_corpus(str(tmp_path / "data"), sizes={"train": 400, "dev": 10})
    base = dict(
        src="src", tgt="tgt", train_prefix=p["train"], dev_prefix=p["dev"], vocab_prefix=p["vocab"],
        out_dir=str(tmp_path / "run"), num_units=16, attention="luong", batch_size=16,
        steps_per_stats=5, steps_per_external_eval=10, max_failures=1,
    )
    return nmt.Config(**{**base, **kw})


def steps(out_dir, key="train/loss"):
    return [r["step"] for r in read_metrics(out_dir) if key in r]


def _scratch_dirs() -> set[str]:
    import glob
    import tempfile

    return set(glob.glob(os.path.join(tempfile.gettempdir(), "tfcluster-worker*")))


def test_two_workers_train_export_then_resume(ray_local, tmp_path):
    cfg = small_cfg(tmp_path, num_workers=2, num_train_steps=10, model_base_path=str(tmp_path / "models"))
    before = _scratch_dirs()
    metrics = driver.run(workloads.get("nmt"), cfg)
    assert _scratch_dirs() <= before  # the non-chief's throw-away checkpoints are gone with its run
    assert metrics["export_path"].endswith(os.path.join("models", "nmt", "1"))
    assert steps(cfg.out_dir) == [5, 10]
    saved = config_mod.load(nmt.Config, cfg.out_dir)
    assert saved.num_workers == 2 and saved.attention == "luong"
    # The same run with more steps continues from step 10, not from 0.
    more = config_mod.build(nmt.Config, {**config_mod.to_dict(cfg), "num_train_steps": 20})
    driver.run(workloads.get("nmt"), more)
    assert steps(cfg.out_dir) == [5, 10, 15, 20]
    assert os.path.basename(driver.latest_checkpoint(cfg.out_dir)) == "ckpt-20"


def test_two_workers_stop_together_on_the_time_budget_and_average(ray_local, tmp_path):
    """--max_train_minutes with 2 workers: both stop at the same step (the chief's clock, all-reduced; a
    worker left in a collective would hang the run), the stop is evaluated, averaged and exported."""
    cfg = small_cfg(tmp_path, num_workers=2, num_train_steps=100000, max_train_minutes=0.4, avg_ckpts=True,
                    decay_scheme="luong234", optimizer="adam", learning_rate=0.01, model_base_path=str(tmp_path / "models"))
    metrics = driver.run(workloads.get("nmt"), cfg)
    assert metrics["export_path"].endswith(os.path.join("models", "nmt", "1"))
    records = read_metrics(cfg.out_dir)
    stop = records[-1]["step"]
    assert 10 <= stop < 100000 and "eval/avg_ckpts" in records[-1]
    assert [r["train/lr"] for r in records if r["step"] == stop and "train/lr" in r] == [pytest.approx(0.01 / 16)]
    assert os.path.basename(driver.latest_checkpoint(cfg.out_dir)) == f"ckpt-{stop}"


def test_failed_worker_restarts_from_last_checkpoint(ray_local, tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path, num_workers=1, num_train_steps=20)
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "15")
    driver.run(workloads.get("nmt"), cfg)
    assert os.path.exists(os.path.join(cfg.out_dir, ".failed_at_15"))
    # Steps 5 and 10 were logged before the crash at 15; the restarted worker resumed at the
    # step-10 checkpoint and logged 15 and 20. Restarting from scratch would repeat 5 and 10.
    assert steps(cfg.out_dir) == [5, 10, 15, 20]


def test_more_workers_than_cpus_is_one_line(ray_local, tmp_path):
    cfg = small_cfg(tmp_path, num_workers=3, num_train_steps=2)
    with pytest.raises(UserError, match=r"--num_workers 3 x --cpus_per_worker 1 needs 3 CPUs, the Ray cluster has 2"):
        runs.require(driver.needs(cfg))


def test_waiting_for_resources_says_so_and_gives_up_with_one_line(ray_local, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runs, "WAIT_POLL_S", 0.2)
    cfg = small_cfg(tmp_path, num_workers=3, num_train_steps=2, wait_for_resources=1.0)
    with pytest.raises(UserError, match=r"needs 3 CPUs, the Ray cluster has 2; .*\(waited 1 s\)"):
        runs.require(driver.needs(cfg), cfg.wait_for_resources)
    assert "# waiting up to 1 s for the Ray cluster to offer 3 CPU (have 2)" in capsys.readouterr().out
    runs.require(driver.needs(small_cfg(tmp_path, num_workers=2)), 1.0)  # what fits never waits


def test_path_settings_become_absolute_for_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = nmt.Config(train_prefix="data/train", out_dir="runs/x", model_base_path="gs://bucket/models", vocab_prefix="")
    out = config_mod.absolute_paths(cfg)
    assert out.train_prefix == str(tmp_path / "data" / "train") and out.out_dir == str(tmp_path / "runs" / "x")
    assert out.model_base_path == "gs://bucket/models" and out.vocab_prefix == "" and out.src == cfg.src
