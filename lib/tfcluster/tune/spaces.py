"""Search spaces, one per workload, next to its `Config` fields, in a plain JSON form.

A space maps a Config field to a spec:
  {"loguniform": [lo, hi]}  {"uniform": [lo, hi]}  {"quniform": [lo, hi, q]}
  {"randint": [lo, hi]}     {"choice": [a, b, ...]}  or a constant value.
A JSON (or YAML) file passed with `--search_space` overrides entries; `null` drops one.
Fields given explicitly on the command line are never searched.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tfcluster.errors import UserError


def nmt_space(base: dict[str, Any]) -> dict[str, Any]:
    """tensorflow/nmt's knobs: learning rate (log scale, range by optimizer), size, dropout, attention."""
    adam = base.get("optimizer", "sgd") == "adam"
    return {
        "learning_rate": {"loguniform": [1e-4, 1e-2] if adam else [0.1, 2.0]},
        "num_units": {"choice": [32, 64, 128, 256]},
        "num_layers": {"choice": [1, 2]},
        "dropout": {"uniform": [0.0, 0.3]},
        "attention": {"choice": ["", "luong", "scaled_luong", "bahdanau", "normed_bahdanau"]},
        "batch_size": {"choice": [32, 64, 128]},
    }


def dcgan_space(base: dict[str, Any]) -> dict[str, Any]:
    """DCGAN's knobs: Adam learning rate and beta1, batch size, z_dim, filter widths."""
    return {
        "learning_rate": {"loguniform": [5e-5, 1e-3]},
        "beta1": {"uniform": [0.3, 0.9]},
        "batch_size": {"choice": [32, 64, 128]},
        "z_dim": {"choice": [50, 100, 128]},
        "gf_dim": {"choice": [32, 64]},
        "df_dim": {"choice": [32, 64]},
    }


def pg_space(base: dict[str, Any]) -> dict[str, Any]:
    """REINFORCE's knobs: Adam learning rate, hidden units, episodes per update, discount."""
    return {
        "learning_rate": {"loguniform": [1e-3, 5e-2]},
        "hidden_units": {"choice": [8, 10, 16, 32]},
        "batch_episodes": {"choice": [1, 2, 5, 10]},
        "discount": {"uniform": [0.95, 0.999]},
    }


def dqn_space(base: dict[str, Any]) -> dict[str, Any]:
    """DQN's knobs: learning rate (log scale around the optimizer's usual value), batch size,
    target-network period, exploration decay, discount, double Q."""
    adam = base.get("optimizer", "rmsprop") == "adam"
    steps = int(base.get("t_train_max", 0)) or 100_000
    return {
        "learning_rate": {"loguniform": [1e-4, 5e-3] if adam else [5e-5, 1e-3]},
        "batch_size": {"choice": [32, 64, 128]},
        "t_target_q_update_freq": {"choice": [256, 1000, 4000] if steps <= 1_000_000 else [2500, 10_000, 20_000]},
        "t_ep_end": {"choice": sorted({max(1, steps // 20), max(1, steps // 10), max(1, steps // 4)})},
        "discount": {"uniform": [0.95, 0.999]},
        "double_q": {"choice": [False, True]},
    }


RL_METRIC = ("env_runners/episode_return_mean", "max")
# Float knobs PBT may perturb between checkpoints (shapes must not change).
MUTABLE = {"learning_rate", "dropout", "beta1", "discount"}


def load_overrides(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        raise UserError(f"search space file not found: {path}")
    with open(path) as f:
        if path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise UserError("YAML search spaces need PyYAML; use JSON instead") from None
            data = yaml.safe_load(f)
        else:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold an object of field -> spec")
    return data


def search_space(default: dict[str, Any], fixed: set[str], overrides: dict[str, Any] | None = None,
                 fields: set[str] | None = None) -> dict[str, Any]:
    """The JSON-form space: the workload's `default` space, then overrides, minus the fixed fields."""
    space = dict(default)
    for k, v in (overrides or {}).items():
        if v is None:
            space.pop(k, None)
        else:
            space[k] = v
    if fields is not None:
        unknown = sorted(set(space) - fields)
        if unknown:
            raise UserError(f"search space: unknown setting(s) {', '.join(unknown)}")
    return {k: v for k, v in space.items() if k not in fixed}


def to_tune(spec: Any):
    """One JSON spec -> a Ray Tune domain (constants pass through)."""
    from ray import tune

    if not isinstance(spec, dict) or len(spec) != 1:
        return spec
    (kind, args), = spec.items()
    makers = {"loguniform": tune.loguniform, "uniform": tune.uniform, "quniform": tune.quniform,
              "randint": tune.randint, "choice": lambda *a: tune.choice(list(a))}
    if kind not in makers:
        raise UserError(f"search space: unknown distribution {kind!r}; one of: {', '.join(makers)}")
    return makers[kind](*args)


def bounds(spec: Any) -> tuple[float, float] | None:
    """(low, high) of a continuous spec, else None."""
    if isinstance(spec, dict) and len(spec) == 1:
        (kind, args), = spec.items()
        if kind in ("loguniform", "uniform", "quniform"):
            return float(args[0]), float(args[1])
    return None


def tune_space(space: dict[str, Any]) -> dict[str, Any]:
    return {k: to_tune(v) for k, v in space.items()}
