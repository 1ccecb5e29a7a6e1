"""REINFORCE policy gradient (the book's chapter 21) on Ray, exported for serving.

The workload's contract object. The learner (Config, networks, train step, algorithm, export) is
`tfcluster.rl.pg`, re-exported here under its old names.
"""

from __future__ import annotations

from tfcluster import contract
from tfcluster.rl import evaluate as rl_evaluate
from tfcluster.rl.algorithm import env_preset, evaluate_offline
from tfcluster.rl.pg import (  # noqa: F401 - the learner's names, as before
    Config, PG, PGConfig, Policy, build_model, discount_and_normalize, discounted_returns, export,
    export_checkpoint, log_prob, make_train_step, normalize, policy_fn, probabilities, resolve_head,
)
from tfcluster.tune import spaces
from tfcluster.workloads.base import Workload

WORKLOAD = Workload(
    name="pg", config=Config, serving=contract.PG, algorithm=PG, export=export_checkpoint,
    preset=env_preset("pg", Config), offline=evaluate_offline(PG),
    metric=spaces.RL_METRIC[0], mode=spaces.RL_METRIC[1], search_space=spaces.pg_space,
    release=contract.ReleaseCheck("mean_return", "max", rl_evaluate.mean_return, rl_evaluate.from_run),
    description=__doc__.splitlines()[0],
)
