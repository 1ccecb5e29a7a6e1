"""tfcluster's DQN and PG speak RLlib's language: its setting names, its nested result layout,
`from_checkpoint`, Tune trainables by name; and a solve by evaluation must be confirmed."""

import numpy as np
import pytest

from tfcluster.errors import UserError
from tfcluster.rl import DQNConfig, PGConfig
from tfcluster.rl.algorithm import flat, nested


def test_rllib_names_map_onto_the_books_flags():
    cfg = (DQNConfig().environment("CartPole-v1")
           .training(lr=1e-3, gamma=0.95, train_batch_size=48, target_network_update_freq=300,
                     num_steps_sampled_before_learning_starts=700, double_q=True, dueling=True,
                     epsilon=[(0, 1.0), (5700, 0.05)], replay_buffer_config={"capacity": 20_000},
                     steps_per_stats=500)
           .env_runners(num_env_runners=2, rollout_fragment_length=50)
           .learners(num_gpus_per_learner=0)
           .evaluation(evaluation_interval=4, evaluation_duration=7)
           .framework("tf2")
           .to_config())
    assert (cfg.learning_rate, cfg.discount, cfg.batch_size, cfg.t_target_q_update_freq) == (1e-3, 0.95, 48, 300)
    assert (cfg.t_learn_start, cfg.double_q, cfg.dueling, cfg.memory_size) == (700, True, True, 20_000)
    # RLlib's epsilon schedule counts from step 0; the book's decay starts after t_learn_start
    assert (cfg.ep_start, cfg.ep_end, cfg.t_ep_end) == (1.0, 0.05, 5000)
    assert (cfg.t_test, cfg.test_episodes, cfg.use_gpu) == (4 * 500, 7, False)
    assert (cfg.num_env_runners, cfg.rollout_fragment_length) == (2, 50)
    old_stack = DQNConfig().exploration(exploration_config={"type": "EpsilonGreedy", "initial_epsilon": 0.9,
                                                            "final_epsilon": 0.02, "epsilon_timesteps": 3000})
    assert (lambda c: (c.ep_start, c.ep_end, c.t_ep_end))(old_stack.to_config()) == (0.9, 0.02, 3000)
    pg_cfg = PGConfig().training(lr=0.02, gamma=0.9).evaluation(evaluation_duration=3).to_config()
    assert (pg_cfg.learning_rate, pg_cfg.discount, pg_cfg.test_episodes) == (0.02, 0.9, 3)


def test_names_without_a_counterpart_are_one_line_errors():
    with pytest.raises(UserError, match="whole episodes; set batch_episodes"):
        PGConfig().training(train_batch_size=1000)
    with pytest.raises(UserError, match="unknown setting 'no_such_thing'"):
        DQNConfig().training(no_such_thing=1)
    with pytest.raises(UserError, match="framework must be 'tf2'"):
        DQNConfig().framework("torch")


def test_nested_and_flat_are_inverse():
    step = {"env_runners/episode_return_mean": 20.0, "env_runners/num_env_steps_sampled_lifetime": 400,
            "learners/default_policy/loss": 0.5, "evaluation/env_runners/episode_return_mean": 30.0,
            "perf/time_total_s": 1.0, "done": False, "training_iteration": 2}
    n = nested(step)
    assert n["env_runners"]["episode_return_mean"] == 20.0 and n["learners"]["default_policy"]["loss"] == 0.5
    assert n["evaluation"]["env_runners"]["episode_return_mean"] == 30.0
    assert n["num_env_steps_sampled_lifetime"] == 400 and n["done"] is False
    assert flat(n) == step


@pytest.fixture
def pg_algo():
    algo = PGConfig().environment("CartPole-v0").training(steps_per_stats=2, final_test_episodes=5).debugging(seed=3).build()
    yield algo
    algo.stop()


def test_train_returns_rllibs_layout_and_from_checkpoint_restores(pg_algo, tmp_path):
    r = pg_algo.train()
    assert r["env_runners"]["num_episodes_lifetime"] == 10
    assert r["num_env_steps_sampled_lifetime"] == r["env_runners"]["num_env_steps_sampled_lifetime"] > 0
    assert "num_module_steps_trained_lifetime" in r["learners"]["default_policy"]
    path = str(tmp_path / "ckpt")
    saved = pg_algo.save(path)
    again = type(pg_algo).from_checkpoint(saved)  # what save() returned, as RLlib allows
    try:
        assert again.cfg == pg_algo.cfg and again.num_episodes == pg_algo.num_episodes
        for a, b in zip(again.policy_weights(), pg_algo.policy_weights()):
            np.testing.assert_array_equal(a, b)
    finally:
        again.stop()
    with pytest.raises(UserError, match="no PG checkpoint"):
        type(pg_algo).from_checkpoint(str(tmp_path))


def test_tune_runs_them_by_name(ray_local, tmp_path):
    from ray import tune

    from tfcluster.rl import register_envs

    register_envs()
    grid = tune.Tuner(
        "tfcluster_PG",
        param_space=PGConfig().environment("CartPole-v0").training(steps_per_stats=2).to_dict(),
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="by_name", stop={"training_iteration": 2}, verbose=0),
    ).fit()
    (result,) = list(grid)
    assert result.error is None
    assert result.metrics["training_iteration"] == 2
    assert result.metrics["env_runners"]["num_episodes_lifetime"] == 20
    assert "env_runners/episode_return_mean" in result.metrics_dataframe.columns  # Tune's flat metric names


def test_a_lucky_short_evaluation_must_be_confirmed(monkeypatch):
    """The DQN preset stops on evaluation: a 10-episode mean at the threshold is checked on
    --final_test_episodes held-out episodes first, and a failed check does not end the run."""
    algo = DQNConfig().environment("CartPole-v1").training(final_test_episodes=20).build()
    try:
        calls = []

        def fake_eval(episodes, display=False, held_out=False):
            calls.append((episodes, held_out))
            return {"evaluation/env_runners/episode_return_mean": 480.0 if not held_out else 300.0}

        monkeypatch.setattr(algo, "evaluate_policy", fake_eval)
        result = {"evaluation/env_runners/episode_return_mean": 500.0}
        assert not algo.record_evaluation(result)
        assert calls == [(20, True)] and result["evaluation/confirm/episode_return_mean"] == 300.0
        monkeypatch.setattr(algo, "evaluate_policy", lambda *a, **k: {"evaluation/env_runners/episode_return_mean": 490.0})
        assert algo.record_evaluation({"evaluation/env_runners/episode_return_mean": 500.0})
    finally:
        algo.stop()
