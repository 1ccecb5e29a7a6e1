"""A two-trial NMT sweep on the toy corpus: results.csv, best_config.json, the plot, the export."""

import csv
import json
import os

from tfcluster.data.toy import write_corpus


def test_nmt_sweep_fifo_two_trials(tmp_path, ray_local):
    from tfcluster import workloads
    from tfcluster.tune import sweep

    corpus = write_corpus(str(tmp_path / "corpus"), sizes={"train": 200, "dev": 10, "test": 10})
    storage, models = tmp_path / "sweeps", tmp_path / "models"
    sc, cfg, explicit = sweep.parse(workloads.get("nmt"), [
        "--num_samples", "2", "--scheduler", "fifo", "--cpus_per_trial", "1", "--evals_per_trial", "2",
        "--storage_path", str(storage), "--name", "toy", "--export_best", "--model_base_path", str(models),
        "--src", "src", "--tgt", "tgt", "--train_prefix", corpus["train"], "--dev_prefix", corpus["dev"],
        "--num_train_steps", "20", "--num_units", "8", "--num_layers", "1", "--batch_size", "16",
        "--attention", "", "--seed", "1",
    ])
    assert {"num_units", "num_layers", "batch_size", "attention"} <= set(explicit)
    out = sweep.run(workloads.get(sc.workload), sc, cfg, explicit)

    exp = storage / "toy"
    with open(exp / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert all(r["status"] == "DONE" and int(r["step"]) == 20 and int(r["iterations"]) == 2 for r in rows)
    # explicit flags are fixed: never sampled, the same in every trial
    assert "num_units" not in rows[0] and "learning_rate" in rows[0]
    for r in rows:
        with open(os.path.join(r["out_dir"], "config.json")) as f:
            trial_cfg = json.load(f)
        assert (trial_cfg["num_units"], trial_cfg["num_layers"], trial_cfg["attention"]) == (8, 1, "")
    assert rows[0]["learning_rate"] != rows[1]["learning_rate"]

    best = json.loads((exp / "best_config.json").read_text())
    assert best["metric"] == "eval/bleu" and best["mode"] == "max"
    top = max(float(r["eval/bleu"]) for r in rows)
    assert best["value"] == top
    row = next(r for r in rows if r["trial"] == best["trial"])
    assert float(row["eval/bleu"]) == top
    assert best["config"]["learning_rate"] == float(row["learning_rate"])
    assert best["full_config"]["learning_rate"] == best["config"]["learning_rate"]

    assert (exp / "eval_bleu.png").stat().st_size > 0
    assert out["export_path"] == str(models / "nmt" / "1")
    assert os.path.exists(os.path.join(out["export_path"], "saved_model.pb"))


def test_nmt_sweep_with_two_workers_per_trial(tmp_path, ray_local):
    """--workers_per_trial 2: each trial is a Ray Train run under MultiWorkerMirroredStrategy whose
    chief's eval reports reach Tune with their checkpoints (what PBT and --resume need)."""
    from tfcluster import workloads
    from tfcluster.tune import sweep

    corpus = write_corpus(str(tmp_path / "corpus"), sizes={"train": 200, "dev": 10, "test": 10})
    storage = tmp_path / "sweeps"
    sc, cfg, explicit = sweep.parse(workloads.get("nmt"), [
        "--num_samples", "1", "--scheduler", "fifo", "--workers_per_trial", "2", "--cpus_per_trial", "2",
        "--evals_per_trial", "2", "--storage_path", str(storage), "--name", "w2",
        "--src", "src", "--tgt", "tgt", "--train_prefix", corpus["train"], "--dev_prefix", corpus["dev"],
        "--num_train_steps", "20", "--num_units", "8", "--num_layers", "1", "--batch_size", "16",
        "--attention", "", "--seed", "1",
    ])
    sweep.run(workloads.get(sc.workload), sc, cfg, explicit)

    with open(storage / "w2" / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "DONE" and int(row["step"]) == 20 and int(row["iterations"]) == 2
    with open(os.path.join(row["out_dir"], "config.json")) as f:
        trial_cfg = json.load(f)
    assert (trial_cfg["num_workers"], trial_cfg["cpus_per_worker"]) == (2, 1.0)
    trial_dir = os.path.dirname(row["out_dir"])
    tune_ckpts = sorted(d for d in os.listdir(trial_dir) if d.startswith("checkpoint_"))
    assert len(tune_ckpts) == 2  # one per eval report, holding the chief's TF checkpoint
    assert "ckpt-20.index" in os.listdir(os.path.join(trial_dir, tune_ckpts[-1]))


def test_workers_per_trial_needs_a_cpu_each(tmp_path):
    import pytest

    from tfcluster.errors import UserError
    from tfcluster import workloads
    from tfcluster.tune import sweep

    sc, cfg, explicit = sweep.parse(workloads.get("nmt"), ["--workers_per_trial", "4", "--cpus_per_trial", "2",
                                            "--src", "a", "--tgt", "b", "--storage_path", str(tmp_path)])
    with pytest.raises(UserError, match="needs --cpus_per_trial of at least 4"):
        sweep.run(workloads.get(sc.workload), sc, cfg, explicit)
