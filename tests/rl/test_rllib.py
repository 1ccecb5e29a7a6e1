"""RLlib itself on tfcluster's environments and networks (ray[rllib] 2.60, TensorFlow, old API stack).

RLlib's TF policies need Keras 2 (`TF_USE_LEGACY_KERAS=1` before TensorFlow is imported), and
tfcluster's own code runs Keras 3: each check runs in a process of its own, through
`python -m tfcluster.rl.rllib` (what a user runs) or `rllib_models_check.py`.
"""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = os.path.join(HERE, os.pardir, os.pardir, "lib")


def _run(args, timeout=600, script=None):
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([LIB, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, script] if script else [sys.executable, "-m", "tfcluster.rl.rllib", *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    return p, lines


def test_import_and_registration_in_the_projects_environment():
    """`import ray.rllib` works, and registering keeps TensorFlow eager for tfcluster's Keras 3 code."""
    code = ("import ray.rllib, tfcluster.rl\nnames = tfcluster.rl.register_envs()\nimport tensorflow as tf\n"
            "from ray.tune.registry import _global_registry, TRAINABLE_CLASS, RLLIB_MODEL\n"
            "assert 'tfcluster/CartPole-v1' in names and 'tfcluster/Breakout' in names\n"
            "assert tf.executing_eagerly()\n"
            "assert _global_registry.contains(TRAINABLE_CLASS, 'tfcluster_DQN')\n"
            "assert all(_global_registry.contains(RLLIB_MODEL, m) for m in ('tfcluster_dqn', 'tfcluster_pg'))\n"
            "print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": LIB})
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-3000:]


@pytest.mark.parametrize("model", ["", "tfcluster_pg"])
def test_rllib_ppo_tensorflow_learns_on_tfcluster_cartpole(model):
    """RLlib's own PPO (framework tf2) on tfcluster/CartPole-v1, with RLlib's default network and with
    the book's REINFORCE network as its model: the mean return rises over 4 iterations."""
    p, rows = _run(["train", "--env", "CartPole-v1", "--iterations", "4", "--seed", "0", "--model", model])
    assert p.returncode == 0, p.stderr[-3000:]
    returns = [r["episode_return_mean"] for r in rows if "iteration" in r]
    assert len(returns) == 4 and rows[-1]["num_env_steps_sampled_lifetime"] == 16000
    assert returns[-1] > returns[0] + 5, returns


def test_rllibs_env_checks_pass_on_cartpole_and_an_atari_game():
    p, rows = _run(["check-envs", "CartPole-v0", "CartPole-v1", "Breakout"])
    assert p.returncode == 0, (rows, p.stderr[-3000:])
    assert [(r["env"], r["ok"], r["sampled"]) for r in rows] == [
        ("tfcluster/CartPole-v0", True, 64), ("tfcluster/CartPole-v1", True, 64), ("tfcluster/Breakout", True, 64)]
    assert rows[-1]["model"] == "tfcluster_dqn" and "(80, 80, 4)" in rows[-1]["observation_space"]


def test_the_books_networks_as_rllib_models_compute_what_tfclusters_do():
    p, rows = _run([], script=os.path.join(HERE, "rllib_models_check.py"))
    assert p.returncode == 0, p.stderr[-3000:]
    (report,) = rows
    assert set(report) == {"tfcluster_dqn/nature", "tfcluster_dqn/mlp", "tfcluster_pg/pg"}
    for name, r in report.items():
        assert r["max_abs_diff"] < 1e-5, (name, r)
        assert r["value_shape"] == [5]


def test_rllib_dqn_tensorflow():
    """RLlib's DQN with TensorFlow: in RLlib 2.60 the old API stack (the only one with TF) fails while
    building its replay buffer; the check runs it for real and skips, naming the version and the error,
    only while that upstream failure is what it sees."""
    import ray

    p, rows = _run(["train", "--algo", "DQN", "--env", "CartPole-v1", "--iterations", "1"])
    failed = [r for r in rows if "build_error" in r]
    if failed and ray.__version__ == "2.60.0" and "argument of type 'ABCMeta' is not iterable" in failed[0]["build_error"]:
        pytest.skip(f"RLlib {ray.__version__}: old-stack DQN with framework tf2 fails building its replay buffer "
                    f"(Algorithm._create_local_replay_buffer_if_necessary: {failed[0]['build_error']})")
    assert p.returncode == 0 and any("iteration" in r for r in rows), (rows, p.stderr[-3000:])
