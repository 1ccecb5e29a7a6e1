"""The workload contract and the run system every workload shares (`tfcluster.runs`)."""

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tfcluster import config as config_mod
from tfcluster import runs, workloads
from tfcluster.config import LoopConfig, RunConfig
from tfcluster.tune import sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(workloads.WORKLOADS))
def test_every_train_and_sweep_job_prints_its_help(name):
    for job in (f"jobs/train_{name}.py", f"jobs/sweep_{name}.py"):
        out = subprocess.run([sys.executable, job, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "--out_dir" in out.stdout and "--wait_for_resources" in out.stdout
    assert (ROOT / f"jobs/train_{name}.py").read_text().count("main(") == 1


def test_rl_configs_carry_no_data_parallel_settings():
    rl = {f.name for f in dataclasses.fields(workloads.get("dqn").config)}
    loop_only = {f.name for f in dataclasses.fields(LoopConfig)} - {f.name for f in dataclasses.fields(RunConfig)}
    assert loop_only == {"num_workers", "max_failures", "steps_per_external_eval", "keep_checkpoint_max", "storage_path",
                         "max_train_minutes", "avg_ckpts", "precision", "jit_compile"}
    assert not rl & loop_only
    for name in ("nmt", "dcgan", "ocr"):
        assert issubclass(workloads.get(name).config, LoopConfig)


def test_rl_preset_comes_from_the_contract_and_flags_win():
    wl = workloads.get("pg")
    cfg = runs.parse(wl, ["--env", "CartPole-v0", "--batch_episodes", "3", "--out_dir", "/nonexistent/pg"])
    preset = config_mod.load_json(str(ROOT / "lib/tfcluster/presets/pg_cartpole.json"))
    assert cfg.batch_episodes == 3
    assert all(getattr(cfg, k) == v for k, v in preset.items() if k != "batch_episodes")


def test_sweep_settings_are_one_dataclass_with_documented_flags():
    sc, cfg, explicit = sweep.parse(workloads.get("nmt"), ["--num_samples", "3", "--resume", "--name", "x", "--num_units", "8"])
    assert (sc.num_samples, sc.resume, sc.name, sc.workload) == (3, True, "x", "nmt")
    assert explicit == {"num_units": 8} and cfg.num_units == 8
    docs = config_mod.field_docs(sweep.SweepConfig)
    flagged = [f.name for f in dataclasses.fields(sweep.SweepConfig) if f.metadata.get("flag", True)]
    assert flagged and all(docs.get(n) for n in flagged)
    with pytest.raises(SystemExit):
        sweep.parse(workloads.get("nmt"), ["--scheduler", "bogus"])


@pytest.mark.parametrize(("value", "best", "mode", "better"), [
    (1.0, None, "max", True), (1.0, math.nan, "min", True), (2.0, 1.0, "max", True), (2.0, 1.0, "min", False),
    (1.0, 1.0, "max", False), (math.nan, 1.0, "max", False), (None, None, "max", False),
])
def test_is_better(value, best, mode, better):
    assert runs.is_better(value, best, mode) is better


def test_need_message_names_the_flags_and_the_fix():
    need = runs.Need("GPU", 2, "--use_gpu with --num_workers 2", "drop --use_gpu or add GPU nodes")
    assert need.message(0) == ("--use_gpu with --num_workers 2 needs 2 GPUs, the Ray cluster has 0; "
                               "drop --use_gpu or add GPU nodes")


def test_lib_probes_no_workload_module():
    out = subprocess.run(["grep", "-rn", r"hasattr(wl\|hasattr(mod\|getattr(workloads\|hasattr(task", "lib/"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.stdout == ""


def test_each_training_command_is_recorded_in_the_run_folder(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(sys, "argv", ["jobs/train_nmt.py", "--hparams_path", "nmt_multi30k_en_de"])
    runs.record_command(str(tmp_path))
    runs.record_command(str(tmp_path), ["--num_train_steps", "20"])  # a resume with other flags
    lines = [json.loads(l) for l in (tmp_path / runs.COMMANDS_FILE).read_text().splitlines()]
    assert [l["argv"] for l in lines] == [["python", "jobs/train_nmt.py", "--hparams_path", "nmt_multi30k_en_de"],
                                          ["python", "jobs/train_nmt.py", "--num_train_steps", "20"]]
    assert lines[0]["cpus"] >= 1 and lines[0]["gpus"] >= 0 and lines[0]["time"] <= lines[1]["time"]
