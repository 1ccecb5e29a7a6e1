"""DQN: NumPy acting equals Keras, presets by env, the return rises on CartPole, export, bad input."""

import numpy as np
import pytest
import tensorflow as tf

from tfcluster.errors import UserError
from tfcluster.rl import DQNConfig
from tfcluster import runs
from tfcluster.workloads import dqn


@pytest.mark.parametrize("dueling", [False, True])
def test_numpy_mlp_matches_keras(dueling):
    model = dqn.build_q_network((4,), "float32", 3, "mlp", (16, 8), dueling)
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    np.testing.assert_allclose(dqn.mlp_q_values(model.get_weights(), x, dueling), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_preset_follows_the_env_and_flags_win():
    cp = runs.parse(dqn.WORKLOAD, ["--env", "CartPole-v1", "--out_dir", "/nonexistent/x"])
    at = runs.parse(dqn.WORKLOAD, ["--env", "Breakout", "--out_dir", "/nonexistent/y"])
    assert (cp.network_header_type, cp.optimizer, cp.t_learn_start) == ("mlp", "adam", 1000)
    assert (at.network_header_type, at.optimizer, at.t_learn_start, at.learning_rate) == ("nips", "rmsprop", 50_000, 0.00025)
    own = runs.parse(dqn.WORKLOAD, ["--env", "CartPole-v1", "--double_q", "false", "--out_dir", "/nonexistent/z"])
    assert own.double_q is False


def test_memory_beyond_available_and_bad_network_are_one_line():
    with pytest.raises(UserError, match="--memory_size 100000000 needs .* GB .*lower --memory_size"):
        DQNConfig().environment("Breakout").training(memory_size=100_000_000).build()
    with pytest.raises(UserError, match="needs image observations"):
        DQNConfig().environment("CartPole-v1").training(network_header_type="nips").build()


def test_return_rises_on_cartpole_and_export_matches(tmp_path, tf_serving_run):
    algo = (DQNConfig().environment("CartPole-v1")
            .training(t_learn_start=500, t_ep_end=2000, steps_per_stats=3000, t_test=0, test_episodes=5,
                      mlp_hidden_sizes="64,64", learning_rate=0.0005, ep_end=0.01, t_train_freq=1,
                      rollout_fragment_length=1, t_target_q_update_freq=500, batch_size=64)
            .debugging(seed=0).build())
    try:
        before = algo.evaluate_policy(5)["evaluation/env_runners/episode_return_mean"]
        r = algo.train()
        after = algo.evaluate_policy(5)["evaluation/env_runners/episode_return_mean"]
        assert r["env_runners"]["num_env_steps_sampled_lifetime"] == 3000
        assert r["learners"]["default_policy"]["num_module_steps_trained_lifetime"] == 2500
        assert after > before + 30, (before, after)

        path = dqn.export(algo.policy_weights(), algo.cfg, str(tmp_path))
        fn = tf.saved_model.load(path).signatures["serving_default"]
        obs = np.random.default_rng(1).normal(0, 0.3, size=(64, 4)).astype(np.float32)
        out = fn(observation=tf.constant(obs))
        policy = dqn.QPolicy(dqn.net_spec(algo.cfg), algo.runners.local.env.observation_space, algo.runners.local.env.action_space)
        policy.set_weights(algo.policy_weights())
        assert out["action"].dtype == tf.int64 and out["q_values"].dtype == tf.float32
        np.testing.assert_array_equal(out["action"].numpy(), policy.act(obs, 0.0, np.random.default_rng()))
        np.testing.assert_allclose(out["q_values"].numpy(), policy.q_values(obs), rtol=1e-4, atol=1e-4)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"observation must have shape \[batch, 4\]"):
            fn(observation=tf.zeros((2, 5)))
        np.testing.assert_array_equal(tf_serving_run(path, {"observation": obs})["action"], out["action"].numpy())
    finally:
        algo.stop()
