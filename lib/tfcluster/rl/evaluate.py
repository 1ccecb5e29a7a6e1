"""The mean return of a served policy (DQN, PG) over fixed, held-out episodes: what `tfcluster release`
compares between `canary` and `stable`. Seeds start at `eval_seed` (default 1,000,000), far from the
training seeds (`--seed` + runner index), so no evaluation episode was seen in training."""

from __future__ import annotations

from typing import Any

import numpy as np

from tfcluster.errors import UserError


def mean_return(served, data: dict[str, Any]) -> float:
    from tfcluster.rl.envs import make_env

    name = data.get("env")
    if not name:
        raise UserError("dqn/pg's release check needs --env (the environment, e.g. CartPole-v1)")
    episodes, seed = int(data.get("episodes") or 20), int(data.get("eval_seed") or 1_000_000)
    env = make_env(name)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            action = served({"observation": np.asarray(obs)[None]})["action"][0]
            obs, reward, terminated, truncated, _ = env.step(int(action))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def from_run(cfg: Any) -> dict[str, Any]:
    """A training run's evaluation set for `--promote`: its env, 20 held-out episodes."""
    return {"env": cfg.env, "episodes": 20, "eval_seed": 1_000_000}
