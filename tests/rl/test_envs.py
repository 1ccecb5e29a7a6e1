"""Env wrappers pass gymnasium's checker, are registered with RLlib's registry, and reject bad names."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from tfcluster.errors import UserError
from tfcluster.rl import envs, register_envs


@pytest.mark.parametrize("name", ["CartPole-v0", "CartPole-v1"])
def test_cartpole_passes_check_env(name):
    env = envs.make_env(name)
    check_env(env)
    assert env.render().shape == (200, 300, 3)


def test_breakout_passes_check_env_with_the_books_preprocessing():
    env = envs.make_env("Breakout", observation_dims=(84, 84), history_length=4, min_r=-1, max_r=1)
    check_env(env)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (84, 84, 4) and obs.dtype == np.uint8
    assert all((obs[..., i] == obs[..., 0]).all() for i in range(4))  # reset repeats the first frame
    nxt, r, *_ = env.step(1)
    np.testing.assert_array_equal(nxt[..., :3], obs[..., 1:])  # the stack shifts by one frame
    assert -1.0 <= r <= 1.0


def test_unknown_environment_is_one_line():
    with pytest.raises(UserError, match="unknown environment 'NoSuchGame'"):
        envs.make_env("NoSuchGame")


def test_register_envs_with_rllib_registry():
    from ray.tune.registry import ENV_CREATOR, _global_registry

    names = register_envs()
    for n in ("tfcluster/CartPole-v0", "tfcluster/CartPole-v1", "tfcluster/Breakout", "tfcluster/SpaceInvaders"):
        assert n in names and _global_registry.contains(ENV_CREATOR, n)
    env = _global_registry.get(ENV_CREATOR, "tfcluster/Breakout")({"observation_dims": (80, 80)})
    assert env.observation_space.shape == (80, 80, 4)
    assert _global_registry.get(ENV_CREATOR, "tfcluster/CartPole-v1")({}).spec is None
