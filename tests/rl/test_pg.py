"""REINFORCE: NumPy acting equals the Keras network, the return rises on CartPole, save/restore, export."""

import numpy as np
import pytest
import tensorflow as tf

from tfcluster.rl import PGConfig
from tfcluster.workloads import pg


@pytest.fixture(scope="module")
def algo():
    a = (PGConfig().environment("CartPole-v0").training(steps_per_stats=20).debugging(seed=0)
         .env_runners(num_env_runners=0).build())
    yield a
    a.stop()


def test_numpy_policy_matches_keras():
    for head, n in (("sigmoid", 2), ("softmax", 3)):
        model = pg.build_model(4, n, 10, head)
        x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
        logits = model(x).numpy()
        ref = tf.nn.softmax(logits).numpy() if head == "softmax" else np.stack([1 - tf.sigmoid(logits[:, 0]), tf.sigmoid(logits[:, 0])], 1)
        np.testing.assert_allclose(pg.probabilities(model.get_weights(), x, head), ref, rtol=1e-5, atol=1e-6)


def test_return_rises_on_cartpole(algo):
    first = algo.train()  # 20 updates x 5 episodes
    for _ in range(2):
        last = algo.train()
    assert first["env_runners"]["num_episodes_lifetime"] == 100
    assert last["env_runners"]["episode_return_mean"] > first["env_runners"]["episode_return_mean"] + 10


def test_save_restore_round_trip(algo, tmp_path):
    algo.save(str(tmp_path))
    before = [w.copy() for w in algo.policy_weights()]
    algo.train()
    assert not all(np.allclose(a, b) for a, b in zip(before, algo.policy_weights()))
    algo.restore(str(tmp_path))
    for a, b in zip(before, algo.policy_weights()):
        np.testing.assert_array_equal(a, b)


def test_restore_keeps_the_configured_learning_rate(algo, tmp_path):
    """A PBT trial restores another trial's checkpoint with its own, perturbed rate."""
    algo.save(str(tmp_path))
    other = PGConfig().environment("CartPole-v0").training(learning_rate=0.05).build()
    try:
        other.restore(str(tmp_path))
        assert float(other.optimizer.learning_rate.numpy()) == pytest.approx(0.05)
        assert int(other.optimizer.iterations.numpy()) == int(algo.optimizer.iterations.numpy()) > 0
        for a, b in zip(algo.policy_weights(), other.policy_weights()):
            np.testing.assert_array_equal(a, b)
    finally:
        other.stop()


def test_export_reload_same_actions_and_shape_error(algo, tmp_path, tf_serving_run):
    path = pg.export(algo.policy_weights(), algo.cfg, str(tmp_path))
    assert path.endswith("/pg/1")
    fn = tf.saved_model.load(path).signatures["serving_default"]
    obs = np.random.default_rng(1).normal(0, 0.5, size=(64, 4)).astype(np.float32)
    out = fn(observation=tf.constant(obs))
    policy = pg.Policy("auto", algo.runners.local.env.observation_space, algo.runners.local.env.action_space)
    policy.set_weights(algo.policy_weights())
    assert out["action"].dtype == tf.int64 and out["probabilities"].shape == (64, 2)
    np.testing.assert_array_equal(out["action"].numpy(), policy.act(obs, 0.0, np.random.default_rng()))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"observation must have shape \[batch, 4\]"):
        fn(observation=tf.zeros((1, 3)))
    np.testing.assert_array_equal(tf_serving_run(path, {"observation": obs})["action"], out["action"].numpy())


def test_runs_with_a_remote_env_runner(ray_local):
    a = PGConfig().environment("CartPole-v0").training(steps_per_stats=2).env_runners(num_env_runners=1).build()
    try:
        r = a.train()
        assert a.runners.num_remote == 1
        assert r["env_runners"]["num_episodes_lifetime"] == 10 and r["env_runners"]["num_env_steps_sampled_lifetime"] > 10
    finally:
        a.stop()
