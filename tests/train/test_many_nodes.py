"""Many machines, on one host: a Ray cluster of 3 nodes (`ray.cluster_utils.Cluster`, each node its own
raylet with 1 CPU and its own temp folder), 2 Ray Train workers on different nodes, and the node
holding the chief removed mid-run with the chief's local checkpoints deleted too. The run must
finish from the checkpoint in storage, lose at most one checkpoint interval, and export.

Slow (a cluster start, two worker-group starts): marked `slow`, and run by `make test`.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tfcluster import runs, workloads
from tfcluster.data import toy
from tfcluster.metrics import read_metrics
from tfcluster.train import driver

pytestmark = pytest.mark.slow

STATS, EVAL = 5, 10


@pytest.fixture
def three_nodes(tmp_path, local_ray_starter):
    import ray
    from ray.cluster_utils import Cluster

    was_local = ray.is_initialized()
    if was_local:
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3},
    })
    for i in range(3):
        scratch = tmp_path / f"node{i}"
        scratch.mkdir()
        cluster.add_node(num_cpus=1, env_vars={"TMPDIR": str(scratch)})
    cluster.wait_for_nodes()
    runs.init_ray(cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    if was_local:  # give the tests after this one the session's local Ray back
        local_ray_starter()


def _nmt_cfg(tmp_path, **kw):
    from tfcluster.workloads import nmt

    p = toy.write_corpus(str(tmp_path / "data"), sizes={"train": 400, "dev": 10})
    return nmt.Config(src="src", tgt="tgt", train_prefix=p["train"], dev_prefix=p["dev"], vocab_prefix=p["vocab"],
                      out_dir=str(tmp_path / "run"), num_units=16, attention="luong", batch_size=16,
                      num_train_steps=80, steps_per_stats=STATS, steps_per_external_eval=EVAL, **kw)


def _dcgan_cfg(tmp_path, **kw):
    from tfcluster.workloads import dcgan

    root = tmp_path / "data" / "faces"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(64):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{i:03d}.jpg")
    return dcgan.Config(dataset="faces", data_dir=str(tmp_path / "data"), input_height=16, output_height=16,
                        epoch=10, batch_size=8, gf_dim=8, df_dim=8, z_dim=8, out_dir=str(tmp_path / "run"),
                        steps_per_stats=STATS, steps_per_external_eval=EVAL, sample_every=1000, swd_images=16, **kw)


@pytest.mark.parametrize("workload", ["nmt", "dcgan"])
def test_losing_the_chiefs_node_resumes_from_storage(three_nodes, tmp_path, workload):
    cfg = (_nmt_cfg if workload == "nmt" else _dcgan_cfg)(
        tmp_path, num_workers=2, cpus_per_worker=1, max_failures=2, storage_path=str(tmp_path / "store"),
        model_base_path=str(tmp_path / "models"))
    outcome: dict = {}

    def train():
        try:
            outcome["metrics"] = driver.run(workloads.get(workload), cfg)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            outcome["error"] = e

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    deadline = time.time() + 300
    while time.time() < deadline and not any(r["step"] >= 2 * EVAL + STATS for r in _records(cfg.out_dir)):
        assert thread.is_alive(), outcome
        time.sleep(0.2)
    chief = json.load(open(os.path.join(cfg.out_dir, driver.CHIEF_FILE)))
    node = next(n for n in three_nodes.list_all_nodes() if n.node_id == chief["node_id"])
    before = max(r["step"] for r in _records(cfg.out_dir))
    shutil.rmtree(os.path.join(cfg.out_dir, runs.CKPT_DIR))  # the chief's disk goes with its node
    shutil.rmtree(os.path.join(cfg.out_dir, runs.BEST_DIR), ignore_errors=True)
    three_nodes.remove_node(node, allow_graceful=False)
    print(f"# removed the chief's node {chief['node_id'][:12]} at step >= {before}; deleted out_dir/ckpt and best/")
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in outcome, outcome

    steps = [r["step"] for r in _records(cfg.out_dir)]
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    resumed_from = steps[restart] - STATS
    print(f"# steps logged {steps}; resumed from step {resumed_from}")
    assert resumed_from >= EVAL, "the run started again from step 0"
    assert steps[restart - 1] - resumed_from <= EVAL  # lost at most one checkpoint interval
    assert steps[-1] == (cfg.num_train_steps if workload == "nmt" else steps[-1]) and steps[-1] > before
    assert os.path.isdir(outcome["metrics"]["export_path"])
    chief_after = json.load(open(os.path.join(cfg.out_dir, driver.CHIEF_FILE)))
    assert chief_after["node_id"] != chief["node_id"]


def _records(out_dir):
    if not os.path.exists(os.path.join(out_dir, "metrics.jsonl")):
        return []
    return [r for r in read_metrics(out_dir) if any(k.startswith("train/") for k in r)]


def test_a_sweep_with_two_workers_per_trial_across_nodes(three_nodes, tmp_path):
    """--workers_per_trial 2 on the 3-node cluster: each trial is a Ray Train run whose workers sit on
    two nodes; the trial's run folder, best/ and the export come from the experiment's storage."""
    import csv

    from tfcluster.tune import sweep

    p = toy.write_corpus(str(tmp_path / "data"), sizes={"train": 200, "dev": 10})
    storage, models = tmp_path / "store", tmp_path / "models"
    out = sweep.run(workloads.get("nmt"), *sweep.parse(workloads.get("nmt"), [
        "--num_samples", "1", "--scheduler", "fifo", "--workers_per_trial", "2", "--cpus_per_trial", "2",
        "--evals_per_trial", "2", "--storage_path", str(storage), "--name", "w2", "--export_best",
        "--model_base_path", str(models), "--src", "src", "--tgt", "tgt", "--train_prefix", p["train"],
        "--dev_prefix", p["dev"], "--num_train_steps", "20", "--num_units", "8", "--num_layers", "1",
        "--batch_size", "16", "--attention", "", "--seed", "1"]))
    with open(storage / "w2" / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "DONE" and int(row["step"]) == 20
    assert row["out_dir"].startswith(str(storage / "w2" / "trial_"))
    assert json.load(open(storage / "w2" / "best_config.json"))["out_dir"] == row["out_dir"]
    assert os.path.exists(os.path.join(row["out_dir"], runs.BEST_DIR, "checkpoint"))
    chief = json.load(open(os.path.join(row["out_dir"], driver.CHIEF_FILE)))
    assert chief["world_size"] == 2
    assert os.path.exists(os.path.join(out["export_path"], "saved_model.pb"))


def test_rl_env_runners_spread_over_nodes_and_a_lost_one_is_replaced(three_nodes, capsys):
    """DQN with --num_env_runners 2: the runners sit on two different nodes (the learner is this
    process, on the head); the node of one is removed mid-run, a replacement starts on the node left
    free, and training goes on."""
    from tfcluster.rl import DQNConfig

    algo = (DQNConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=2, rollout_fragment_length=50)
            .training(t_learn_start=200, t_ep_end=2000, steps_per_stats=400, t_test=0, test_episodes=2,
                      mlp_hidden_sizes="32", batch_size=32)
            .debugging(seed=0).build())
    try:
        algo.train()
        nodes = algo.runners.node_ids()
        assert len(set(nodes)) == 2, nodes  # spread: one runner a node
        lost = next(n for n in three_nodes.list_all_nodes() if n.node_id == nodes[0])
        before = algo.env_steps
        three_nodes.remove_node(lost, allow_graceful=False)
        print(f"# removed the node of env runner 1 ({nodes[0][:12]}) at env step {before}")
        deadline = time.time() + 120  # Ray notices the node is gone within its health-check period
        while algo.runners.num_restarts == 0 and time.time() < deadline:
            algo.train()
        restarted_at = algo.env_steps
        results = [algo.train() for _ in range(2)]  # and training goes on with the replacement
        assert results[-1]["env_runners"]["num_env_runner_restarts"] == 1
        assert algo.env_steps >= restarted_at + 2 * 400 > before
        after = algo.runners.node_ids()
        assert after[0] != nodes[0] and after[1] == nodes[1] and len(set(after)) == 2, (nodes, after)
        assert "env runner 1 lost" in capsys.readouterr().out
    finally:
        algo.stop()
