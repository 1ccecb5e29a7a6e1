"""RL sweeps: the algorithm is the trial; ASHA over REINFORCE on CartPole, export of the best
trial, and `--resume` of a sweep interrupted mid-trial."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_pg_sweep_asha_exports_the_best_trial(tmp_path, ray_local):
    import gymnasium
    import tensorflow as tf

    from tfcluster.rl.algorithm import policy_weights_from
    from tfcluster import workloads
    from tfcluster.tune import sweep
    from tfcluster.workloads import pg

    storage, models = tmp_path / "sweeps", tmp_path / "models"
    sc, cfg, explicit = sweep.parse(workloads.get("pg"), [
        "--env", "CartPole-v0", "--num_samples", "3", "--scheduler", "asha", "--grace_period", "2",
        "--storage_path", str(storage), "--name", "pg", "--export_best", "--model_base_path", str(models),
        "--batch_episodes", "5", "--steps_per_stats", "4", "--total_episodes", "200", "--seed", "2",
    ])
    assert cfg.env == "CartPole-v0" and cfg.batch_episodes == 5 and "batch_episodes" in explicit
    out = sweep.run(workloads.get(sc.workload), sc, cfg, explicit)

    rows = _rows(storage / "pg" / "results.csv")
    metric = "env_runners/episode_return_mean"
    assert len(rows) == 3 and "batch_episodes" not in rows[0] and "learning_rate" in rows[0]
    for r in rows:  # 20 episodes an iteration, 10 iterations at most
        its = int(r["iterations"])
        assert r["status"] == ("DONE" if its == 10 else "STOPPED") and 1 <= its <= 10
        with open(os.path.join(r["out_dir"], "config.json")) as f:
            trial_cfg = json.load(f)
        assert trial_cfg["batch_episodes"] == 5 and trial_cfg["learning_rate"] == float(r["learning_rate"])
    assert any(r["status"] == "DONE" for r in rows)
    best = json.loads((storage / "pg" / "best_config.json").read_text())
    assert best["metric"] == metric and best["value"] == max(float(r[metric]) for r in rows)

    # the export is the best trial's best checkpoint, acting as it does in process
    assert out["export_path"] == str(models / "pg" / "1")
    weights = policy_weights_from(best["out_dir"], "best")
    served = tf.saved_model.load(out["export_path"]).signatures["serving_default"]
    obs = np.random.default_rng(0).normal(0, 0.5, size=(32, 4)).astype(np.float32)
    policy = pg.Policy("auto", None, gymnasium.spaces.Discrete(2))
    policy.set_weights(weights)
    np.testing.assert_array_equal(served(observation=tf.constant(obs))["action"].numpy(),
                                  policy.act(obs, 0.0, np.random.default_rng()))
    assert (storage / "pg" / "env_runners_episode_return_mean.png").stat().st_size > 0


def test_rl_sweep_refuses_workers_per_trial(tmp_path):
    from tfcluster.errors import UserError
    from tfcluster import workloads
    from tfcluster.tune import sweep

    sc, cfg, explicit = sweep.parse(workloads.get("dqn"), ["--env", "CartPole-v1", "--workers_per_trial", "2",
                                            "--storage_path", str(tmp_path)])
    assert cfg.network_header_type == "mlp"  # the CartPole preset, as train_dqn.py picks it
    with pytest.raises(UserError, match="--num_env_runners"):
        sweep.run(workloads.get(sc.workload), sc, cfg, explicit)


def _sweep(tmp_path, *extra):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "lib"), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "jobs", "sweep_pg.py"), "--env", "CartPole-v0", "--num_samples", "2",
         "--scheduler", "fifo", "--max_concurrent_trials", "1", "--batch_episodes", "5", "--steps_per_stats", "2",
         "--total_episodes", "400", "--storage_path", str(tmp_path / "sweeps"), "--name", "interrupted",
         "--seed", "3", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


@pytest.mark.timeout(420)
def test_resume_continues_an_interrupted_sweep(tmp_path):
    exp = tmp_path / "sweeps" / "interrupted"
    proc = _sweep(tmp_path)
    deadline = time.time() + 240
    progress = []
    while time.time() < deadline and proc.poll() is None:  # interrupt once a trial has a few checkpoints
        progress = list(exp.glob("trial_*/progress.csv"))
        if progress and sum(1 for _ in open(progress[0])) > 4:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: Tune saves the experiment state and stops
    proc.communicate(timeout=120)

    resumed = _sweep(tmp_path, "--resume")
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log[-3000:]
    assert f"# resuming {exp}" in log
    rows = _rows(exp / "results.csv")
    assert len(rows) == 2 and all(r["status"] == "DONE" for r in rows), rows
    # The interrupted trial went on from its last checkpoint, not from scratch: iteration 1 ran
    # once, and at most the iteration in flight at the interruption ran again. N <= 40 iterations
    # (400 episodes, 10 an iteration, fewer if solved first).
    its = [int(r["training_iteration"]) for r in _rows(progress[0])]
    last = its[-1]
    assert its.count(1) == 1 and set(its) == set(range(1, last + 1)) and len(its) <= last + 1, its
    assert 4 < last <= 40
