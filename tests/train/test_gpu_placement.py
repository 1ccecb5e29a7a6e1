"""GPU placement without a GPU: a Ray cluster whose node advertises GPUs it does not have
(`ray.cluster_utils.Cluster` nodes with `num_gpus`; Ray's GPU resources are logical), so placement,
CUDA_VISIBLE_DEVICES per worker, the resource check and the warning line are checked short of the
CUDA kernels. TensorFlow sees no device here, so every worker trains on the CPU after its warning.

Slow (a cluster start and several worker-group starts): marked `slow`, run by `make test`.
"""

from __future__ import annotations

import csv
import json
import os

import pytest

from tfcluster import runs, workloads
from tfcluster.data import toy
from tfcluster.errors import UserError
from tfcluster.train import driver

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory, local_ray_starter):
    """A head with no resources, a CPU-only node and a node with 2 CPUs and 2 (advertised) GPUs."""
    import ray
    from ray.cluster_utils import Cluster

    was_local = ray.is_initialized()
    if was_local:
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cpu_node = cluster.add_node(num_cpus=2, resources={"cpu_node": 1})
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=2, resources={"gpu_node": 1})
    cluster.wait_for_nodes()
    runs.init_ray(cluster.address)
    yield {"cluster": cluster, "cpu_node": cpu_node.node_id, "gpu_node": gpu_node.node_id}
    ray.shutdown()
    cluster.shutdown()
    if was_local:
        local_ray_starter()


def _nmt_cfg(tmp_path, **kw):
    from tfcluster.workloads import nmt

    p = toy.write_corpus(str(tmp_path / "data"), sizes={"train": 200, "dev": 8})
    return nmt.Config(src="src", tgt="tgt", train_prefix=p["train"], dev_prefix=p["dev"], vocab_prefix=p["vocab"],
                      out_dir=str(tmp_path / "run"), num_units=8, num_layers=1, batch_size=16, num_train_steps=6,
                      steps_per_stats=3, steps_per_external_eval=6, **kw)


def _workers(out_dir):
    with open(os.path.join(out_dir, driver.WORKERS_FILE)) as f:
        return [json.loads(line) for line in f]


def test_use_gpu_gives_each_worker_its_own_gpu_and_trains_on_cpu_with_one_warning(gpu_cluster, tmp_path, capfd):
    cfg = _nmt_cfg(tmp_path, use_gpu=True, num_workers=2, cpus_per_worker=1, model_base_path=str(tmp_path / "models"))
    out = driver.run(workloads.get("nmt"), cfg)
    assert os.path.isdir(out["export_path"])
    workers = _workers(cfg.out_dir)
    assert sorted(w["rank"] for w in workers) == [0, 1]
    assert {w["node_id"] for w in workers} == {gpu_cluster["gpu_node"]}
    # One GPU each, and TensorFlow in each worker sees only its own (not the node's two).
    assert sorted(w["gpu_ids"][0] for w in workers) == ["0", "1"] and all(len(w["gpu_ids"]) == 1 for w in workers)
    assert all(w["cuda_visible_devices"] == w["gpu_ids"][0] for w in workers)
    logged = capfd.readouterr()
    warnings = [l for l in (logged.out + logged.err).splitlines() if "--use_gpu was given but TensorFlow finds no GPU" in l]
    assert len(warnings) == 2 and {("worker 0" in l, "worker 1" in l) for l in warnings} == {(True, False), (False, True)}


def test_asking_for_more_gpus_than_the_cluster_has_is_one_line(gpu_cluster, tmp_path):
    cfg = _nmt_cfg(tmp_path, use_gpu=True, num_workers=3, cpus_per_worker=0.5)
    with pytest.raises(UserError, match="GPU") as e:
        driver.run(workloads.get("nmt"), cfg)
    assert "\n" not in str(e.value) and "--use_gpu with --num_workers 3" in str(e.value)


def test_a_sweep_trial_of_two_gpu_workers_reserves_a_gpu_per_worker(gpu_cluster, tmp_path):
    from tfcluster.tune import sweep

    corpus = toy.write_corpus(str(tmp_path / "corpus"), sizes={"train": 200, "dev": 8})
    sc, cfg, explicit = sweep.parse(workloads.get("nmt"), [
        "--num_samples", "1", "--scheduler", "fifo", "--workers_per_trial", "2", "--cpus_per_trial", "2",
        "--gpus_per_trial", "2", "--evals_per_trial", "1", "--storage_path", str(tmp_path / "sweeps"), "--name", "g",
        "--src", "src", "--tgt", "tgt", "--train_prefix", corpus["train"], "--dev_prefix", corpus["dev"],
        "--vocab_prefix", corpus["vocab"], "--num_train_steps", "6", "--num_units", "8", "--num_layers", "1",
        "--batch_size", "16",
    ])
    sweep.run(workloads.get(sc.workload), sc, cfg, explicit)
    with open(tmp_path / "sweeps" / "g" / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "DONE"
    workers = _workers(row["out_dir"])
    assert {w["node_id"] for w in workers} == {gpu_cluster["gpu_node"]}
    assert sorted(w["cuda_visible_devices"] for w in workers) == ["0", "1"]
    with open(os.path.join(row["out_dir"], "config.json")) as f:
        assert json.load(f)["use_gpu"] is True


def test_the_rl_learner_lands_on_the_gpu_node(gpu_cluster, tmp_path):
    from ray._private import state  # the GCS's actor table: the state API needs the dashboard, off here

    from tfcluster.rl import algorithm

    wl = workloads.get("pg")
    cfg = wl.config(out_dir=str(tmp_path / "pg"), use_gpu=True, num_env_runners=0, total_episodes=10,
                    batch_episodes=5, steps_per_stats=1, final_test_episodes=2)
    algorithm.run(wl, cfg)
    learners = [a for a in state.actors().values() if a["ActorClassName"] == wl.algorithm.__name__]
    assert learners and {a["Address"]["NodeID"] for a in learners} == {gpu_cluster["gpu_node"]}, learners
