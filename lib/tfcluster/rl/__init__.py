"""Reinforcement learning on Ray: env wrappers (registered with RLlib), replay memory, env runners, learners.

    from tfcluster.rl import register_envs, DQNConfig, PGConfig
    register_envs()                         # tfcluster/CartPole-v0, -v1, tfcluster/Breakout, ...; RLlib models
                                            # tfcluster_dqn, tfcluster_pg; Tune trainables tfcluster_DQN/_PG
    algo = DQNConfig().environment("CartPole-v1").build()
    print(algo.train()["env_runners/episode_return_mean"])

The learners (Config, networks, train step, algorithm, export) are `tfcluster.rl.dqn` and
`tfcluster.rl.pg`; `DQNConfig`, `PGConfig`, `DQN` and `PG` are re-exported here (imported on
first use, so `import tfcluster.rl` stays light). The workloads (`tfcluster.workloads.dqn`, `.pg`)
wrap them in their contract objects; nothing here imports a workload.
"""

from __future__ import annotations

_LAZY = {"DQNConfig": "tfcluster.rl.dqn", "DQN": "tfcluster.rl.dqn", "PGConfig": "tfcluster.rl.pg", "PG": "tfcluster.rl.pg",
         "PRESETS": "tfcluster.rl.algorithm", "preset_path": "tfcluster.rl.algorithm",
         "presets_for": "tfcluster.rl.algorithm"}


def register_envs() -> list[str]:
    """RLlib and Tune see tfcluster's envs (tfcluster/CartPole-v1, tfcluster/Breakout, ...), its networks
    (models tfcluster_dqn, tfcluster_pg) and its algorithms (trainables tfcluster_DQN, tfcluster_PG):
    `tfcluster.rl.rllib.register`, the one registration entry point."""
    from tfcluster.rl.rllib import register

    return register()


register_rllib = register_envs


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
