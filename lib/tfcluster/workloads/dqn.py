"""Deep Q-Learning (the book's chapter 20, deep-rl-tensorflow's flags) on Ray, exported for serving.

The workload's contract object. The learner (Config, networks, train step, algorithm, export) is
`tfcluster.rl.dqn`, re-exported here under its old names.
"""

from __future__ import annotations

from tfcluster import contract
from tfcluster.rl import evaluate as rl_evaluate
from tfcluster.rl.algorithm import env_preset, evaluate_offline
from tfcluster.rl.dqn import (  # noqa: F401 - the learner's names, as before
    Config, DQN, DQNConfig, NetSpec, QPolicy, build_q_network, export, export_checkpoint,
    linearly_decaying_epsilon, make_optimizer, make_train_step, mlp_q_values, net_spec, parse_dims,
    parse_sizes, target_q,
)
from tfcluster.tune import spaces
from tfcluster.workloads.base import Workload

WORKLOAD = Workload(
    name="dqn", config=Config, serving=contract.DQN, algorithm=DQN, export=export_checkpoint,
    preset=env_preset("dqn", Config), offline=evaluate_offline(DQN),
    metric=spaces.RL_METRIC[0], mode=spaces.RL_METRIC[1], search_space=spaces.dqn_space,
    release=contract.ReleaseCheck("mean_return", "max", rl_evaluate.mean_return, rl_evaluate.from_run),
    description=__doc__.splitlines()[0],
)
