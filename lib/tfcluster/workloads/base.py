"""The workload contract: one typed object per workload, read by the drivers, the sweep and the CLI.

Each workload module ends with `WORKLOAD = Workload(...)` naming:

* `config`: its Config dataclass (flags, presets and config.json come from it);
* how it trains: `task(cfg, strategy, ctx)` builds a `Task` for the shared data-parallel
  loop (`tfcluster.train.loop`, Ray Train workers), or `algorithm` is its RL algorithm
  class (a `ray.tune.Trainable`, env runners as Ray actors);
* `export(cfg, which)`: writes the best/last checkpoint as the next SavedModel version;
* `serving`: its serving contract (`tfcluster.contract.ModelSpec`);
* optional `prepare(cfg) -> cfg` (driver-side, once: vocabularies, image indexes),
  `offline(cfg) -> bool` (inference/visualize/evaluate-only modes: True when it handled
  the command and nothing is to be trained) and `preset(ns)` (a preset chosen by the
  flags, as RL's by --env);
* `metric`, `mode`: what "better" means for best checkpoints and sweeps;
* `search_space(base) -> {field: spec}` for Ray Tune, and `planned_steps(cfg)`, the
  training steps a config plans (how often a sweep trial reports).

Nothing here imports TensorFlow, nor the machinery that runs a workload (`train/`, `rl/`): the
contract sits below the drivers, which receive the object; `tfcluster.train_cli`
dispatches a run. `tfcluster.workloads.get(name)` returns the object; see ARCHITECTURE.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal

from tfcluster import contract


def model_part(module: str, part: str) -> Callable[[str], Any]:
    """A module `__getattr__` for a workload's light module: names it lacks (`nmt.Task`, `dcgan.export`)
    come from its model part `part`, imported (with TensorFlow) on first use."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        import importlib

        try:
            return getattr(importlib.import_module(part), name)
        except AttributeError:
            raise AttributeError(f"module {module!r} has no attribute {name!r}") from None

    return __getattr__


def _identity(cfg: Any) -> Any:
    return cfg


def _never(cfg: Any) -> bool:
    return False


def _no_preset(ns: Any) -> None:
    return None


def _no_space(base: dict[str, Any]) -> dict[str, Any]:
    return {}


def _num_train_steps(cfg: Any) -> int:
    return int(getattr(cfg, "num_train_steps", 0) or 0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Workload:
    name: str
    """Registry name: `jobs/train_<name>.py`, `tfcluster train <name>`, the model name it exports."""
    config: type
    """The Config dataclass (a `tfcluster.config.RunConfig` subclass)."""
    serving: contract.ModelSpec
    """What its SavedModel serves."""
    export: Callable[[Any, str], str]
    """`export(cfg, which)`: export the "best" or "last" checkpoint of cfg.out_dir to cfg.model_base_path."""
    metric: str
    mode: Literal["max", "min"]
    task: Callable[[Any, Any, Any], Any] | None = None
    """Data-parallel workloads: `task(cfg, strategy, ctx)` -> a `tfcluster.train.loop.Task`."""
    algorithm: type | None = None
    """RL workloads: the algorithm class (`tfcluster.rl.algorithm.Algorithm`, a Tune Trainable)."""
    prepare: Callable[[Any], Any] = _identity
    offline: Callable[[Any], bool] = _never
    preset: Callable[[Any], None] = _no_preset
    """`preset(ns)`: pick a preset (set ns.hparams_path) when none was given, e.g. by --env (RL)."""
    search_space: Callable[[dict[str, Any]], dict[str, Any]] = _no_space
    planned_steps: Callable[[Any], int] = _num_train_steps
    release: contract.ReleaseCheck | None = None
    """How `tfcluster release` (and `--promote`) judges a served version: the metric, measured through gRPC."""
    description: str = ""

    def __post_init__(self) -> None:
        if (self.task is None) == (self.algorithm is None):
            raise TypeError(f"workload {self.name}: give exactly one of task= (data-parallel loop) or algorithm= (RL)")

    @property
    def is_rl(self) -> bool:
        return self.algorithm is not None

    @property
    def kind(self) -> str:
        """"loop" (a Task for the shared data-parallel loop) or "algorithm" (an RL algorithm)."""
        return "algorithm" if self.is_rl else "loop"
