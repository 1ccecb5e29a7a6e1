"""Reinforcement learning on Ray: env wrappers (registered with RLlib), replay memory, env runners.

    from tfcluster.rl import register_envs, DQNConfig, PGConfig
    register_envs()                         # tfcluster/CartPole-v0, -v1, tfcluster/Breakout, ...; RLlib models
                                            # tfcluster_dqn, tfcluster_pg; Tune trainables tfcluster_DQN/_PG
    algo = DQNConfig().environment("CartPole-v1").build()
    print(algo.train()["env_runners/episode_return_mean"])

The learners themselves (Config, networks, train step, export) live in
`tfcluster.workloads.dqn` and `tfcluster.workloads.pg`; `DQNConfig`, `PGConfig`, `DQN`
and `PG` are re-exported here (imported on first use, so `import tfcluster.rl` stays light).
"""

from __future__ import annotations

import json
import os
from typing import Any

PRESETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "presets")


def register_envs() -> list[str]:
    """RLlib and Tune see tfcluster's envs (tfcluster/CartPole-v1, tfcluster/Breakout, ...), its networks
    (models tfcluster_dqn, tfcluster_pg) and its algorithms (trainables tfcluster_DQN, tfcluster_PG)."""
    from tfcluster.rl.envs import register_envs as _register

    return _register()


register_rllib = register_envs


def preset_path(workload: str, env: str | None) -> str:
    """The preset for `workload` on `env`: `<workload>_atari.json` for Atari games, else `<workload>_cartpole.json`."""
    from tfcluster.rl import envs

    family = "atari" if env and envs.kind(env) == "atari" else "cartpole"
    return os.path.join(PRESETS, f"{workload}_{family}.json")


def presets_for(config_cls: type, env: str | None) -> dict[str, Any]:
    """The preset values for a workload Config on `env` (empty when there is no preset file)."""
    workload = config_cls.__module__.rsplit(".", 1)[-1]
    path = preset_path(workload, env)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def __getattr__(name: str):
    if name in ("DQNConfig", "DQN"):
        from tfcluster.workloads import dqn

        return getattr(dqn, name)
    if name in ("PGConfig", "PG"):
        from tfcluster.workloads import pg

        return getattr(pg, name)
    raise AttributeError(name)
