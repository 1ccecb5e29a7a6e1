"""RLlib-shaped pieces shared by DQN and policy gradient: config builder, Algorithm, run driver.

    from tfcluster.rl import DQNConfig
    algo = (DQNConfig().environment("CartPole-v1").training(double_q=True)
            .env_runners(num_env_runners=2).build())
    result = algo.train()              # RLlib's layout: result["env_runners"]["episode_return_mean"], ...
    algo.save("/tmp/ckpt"); algo.restore("/tmp/ckpt"); DQN.from_checkpoint("/tmp/ckpt")
    tune.Tuner(DQN, param_space=DQNConfig().training(...).to_dict())   # a Ray Tune trainable

`Algorithm` is a `ray.tune.Trainable` (as RLlib's is): `step()` runs one iteration and
returns results under RLlib's names, flat ("env_runners/episode_return_mean", as
metrics.jsonl and Tune's metric names have them); `train()` returns them nested as RLlib
does (`result["env_runners"]["episode_return_mean"]`, `result["learners"]["default_policy"]`,
`result["num_env_steps_sampled_lifetime"]`); `save_checkpoint` / `load_checkpoint` keep the
weights, optimizer state and counters (not the replay memory, as RLlib by default).
`run(...)` is what `jobs/train_<workload>.py` calls: it trains until solved or out of
budget, writes metrics.jsonl, keeps the last and the best checkpoint and exports.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Literal

import numpy as np
from ray.tune import Trainable

from tfcluster import config as config_mod
from tfcluster import runs
from tfcluster.config import RunConfig
from tfcluster.errors import UserError
from tfcluster.runs import BEST_DIR, CKPT_DIR

RESULT_PREFIXES = ("env_runners/", "learners/", "evaluation/", "perf/")
RESULT_KEYS = tuple(p.rstrip("/") for p in RESULT_PREFIXES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLConfig(RunConfig):
    """Settings DQN and policy gradient share (RLlib's names where RLlib has one)."""

    env: str = "CartPole-v1"
    """Environment: CartPole-v0, CartPole-v1, an Atari game (Breakout, Pong, ...) or a gymnasium id."""
    num_env_runners: int = 0
    """Ray actors stepping environments with the current weights (RLlib); 0: sample in the learner process."""
    num_cpus_per_env_runner: float = 1.0
    """CPUs reserved per env-runner actor (RLlib)."""
    restart_failed_env_runners: bool = True
    """Replace an env runner lost with its process or node and go on (RLlib); false: the run fails."""
    solve_score: float = 0.0
    """Stop once env_runners/episode_return_mean reaches this; 0: the env's own threshold (CartPole-v0 195, v1 475; Atari none); negative: never."""
    solve_metric: Literal["env_runners", "evaluation"] = "env_runners"
    """Which mean return must reach solve_score: the last 100 training episodes (env_runners, RLlib's stop
    criterion) or the --test_episodes evaluation episodes run every --t_test steps (evaluation)."""
    metrics_num_episodes_for_smoothing: int = 100
    """Episodes averaged into env_runners/episode_return_mean (RLlib: 100; CartPole's "solved" window)."""
    is_train: bool = True
    """Train (true) or evaluate the best checkpoint in out_dir (false) (deep-rl-tensorflow)."""
    display: bool = False
    """Write one greedy episode as out_dir/episode-<step>.gif (there is no screen)."""
    test_episodes: int = 10
    """Episodes per evaluation (every --t_test steps, and the --is_train false run)."""
    final_test_episodes: int = 100
    """Held-out episodes (seeds training never used) the exported policy plays at the end of every run,
    reported as evaluation/final/...; and the episodes that must confirm a solve by evaluation."""

    def check_rl(self) -> None:
        from tfcluster.rl import envs

        self.check_run()
        envs.kind(self.env)  # unknown environment -> one line
        if self.num_env_runners < 0:
            raise ValueError(f"--num_env_runners must be 0 or more, got {self.num_env_runners}")
        if self.metrics_num_episodes_for_smoothing < 1:
            raise ValueError("--metrics_num_episodes_for_smoothing must be at least 1")
        if self.test_episodes < 0 or self.final_test_episodes < 0:
            raise ValueError("--test_episodes and --final_test_episodes must be 0 or more")


class AlgorithmConfig:
    """RLlib-style builder over a workload's frozen Config: chained setters, `.build()`.

    Every setter takes tfcluster's flag names and RLlib's names for the same settings
    (`RLLIB_NAMES`; the README has the table): `lr`, `gamma`, `num_gpus_per_learner`,
    `evaluation_duration`, and per algorithm more (`DQNConfig`: `train_batch_size`,
    `target_network_update_freq`, `num_steps_sampled_before_learning_starts`, `epsilon`
    schedules, ...). Settings that depend on others (`evaluation_interval` in iterations,
    `epsilon` as an absolute-step schedule) are resolved in `to_config`, after the preset.
    """

    config_cls: type = RLConfig
    algo_cls: type | None = None
    # RLlib name -> tfcluster field (same value)
    RLLIB_NAMES: dict[str, str] = {"lr": "learning_rate", "gamma": "discount", "evaluation_duration": "test_episodes"}
    # RLlib names resolved in to_config (they need the other settings)
    RLLIB_DEFERRED: frozenset[str] = frozenset({"num_gpus_per_learner"})
    RLLIB_REFUSED: dict[str, str] = {}

    def __init__(self, **values: Any):
        self._values: dict[str, Any] = {}
        self._rllib: dict[str, Any] = {}
        self._set(**values)

    def _set(self, **kw: Any) -> "AlgorithmConfig":
        names = {f.name for f in dataclasses.fields(self.config_cls)}
        for k, v in kw.items():
            if v is None:
                continue
            if k in self.RLLIB_REFUSED:
                raise UserError(f"{type(self).__name__}: {k!r} has no counterpart here: {self.RLLIB_REFUSED[k]}")
            if k in self.RLLIB_DEFERRED:
                self._rllib[k] = v
                continue
            k = self.RLLIB_NAMES.get(k, k)
            if k not in names:
                raise UserError(f"{type(self).__name__}: unknown setting {k!r}")
            self._values[k] = v
        return self

    def resolve_rllib(self, values: dict[str, Any]) -> dict[str, Any]:
        """Settings given under RLlib's deferred names, as tfcluster fields (after preset and flags)."""
        out: dict[str, Any] = {}
        if "num_gpus_per_learner" in self._rllib:
            out["use_gpu"] = float(self._rllib["num_gpus_per_learner"]) > 0
        return out

    def environment(self, env: str | None = None, *, env_config: dict | None = None) -> "AlgorithmConfig":
        """The env name (with or without the `tfcluster/` prefix) and wrapper settings."""
        return self._set(env=env.removeprefix("tfcluster/") if env else None, **(env_config or {}))

    def training(self, **kw: Any) -> "AlgorithmConfig":
        return self._set(**kw)

    def env_runners(self, *, num_env_runners: int | None = None, num_cpus_per_env_runner: float | None = None,
                    rollout_fragment_length: int | None = None) -> "AlgorithmConfig":
        return self._set(num_env_runners=num_env_runners, num_cpus_per_env_runner=num_cpus_per_env_runner,
                         rollout_fragment_length=rollout_fragment_length)

    def fault_tolerance(self, *, restart_failed_env_runners: bool | None = None) -> "AlgorithmConfig":
        return self._set(restart_failed_env_runners=restart_failed_env_runners)

    def learners(self, *, num_gpus_per_learner: float | None = None) -> "AlgorithmConfig":
        return self._set(num_gpus_per_learner=num_gpus_per_learner)

    def evaluation(self, *, evaluation_interval: int | None = None, evaluation_duration: int | None = None,
                   evaluation_duration_unit: str = "episodes") -> "AlgorithmConfig":
        if evaluation_duration_unit != "episodes":
            raise UserError(f"{type(self).__name__}: evaluation_duration_unit must be 'episodes'")
        return self._set(evaluation_interval=evaluation_interval, evaluation_duration=evaluation_duration)

    def exploration(self, *, exploration_config: dict | None = None, explore: bool | None = None) -> "AlgorithmConfig":
        """RLlib's old-stack exploration settings (EpsilonGreedy's initial/final epsilon, epsilon_timesteps)."""
        return self._set(exploration_config=exploration_config)

    def framework(self, framework: str | None = None, **_: Any) -> "AlgorithmConfig":
        if framework not in (None, "tf2", "tf"):
            raise UserError(f"{type(self).__name__} is TensorFlow: framework must be 'tf2', got {framework!r}")
        return self

    def debugging(self, *, seed: int | None = None) -> "AlgorithmConfig":
        return self._set(seed=seed)

    def reporting(self, *, metrics_num_episodes_for_smoothing: int | None = None) -> "AlgorithmConfig":
        return self._set(metrics_num_episodes_for_smoothing=metrics_num_episodes_for_smoothing)

    def update_from_dict(self, values: dict[str, Any]) -> "AlgorithmConfig":
        return self._set(**values)

    def to_config(self):
        """The resolved, checked Config (preset for the env < values set here)."""
        env = self._values.get("env", getattr(self.config_cls, "env", None))
        base = presets_for(self.config_cls, env)
        defaults = {f.name: f.default for f in dataclasses.fields(self.config_cls)
                    if f.default is not dataclasses.MISSING}
        values = {**base, **self._values}
        values.update(self.resolve_rllib({**defaults, **values}))
        return config_mod.build(self.config_cls, values, type(self).__name__)

    def to_dict(self) -> dict[str, Any]:
        return config_mod.to_dict(self.to_config())

    def build(self) -> "Algorithm":
        return self.algo_cls(config=self.to_dict())  # type: ignore[misc]

    build_algo = build


class Algorithm(Trainable):
    """A Ray Tune trainable: `setup(config)` builds learner and runners, `step()` is one iteration."""

    config_cls: type = RLConfig

    # subclasses set: self.cfg, self.runners, self.episode_returns (deque), counters
    def setup(self, config: dict) -> None:
        cfg = config_mod.build(self.config_cls, config, type(self).__name__)
        self.cfg = cfg
        if "ray.rllib" in sys.modules:  # an RLlib import may have switched eager execution off
            keep_tf2()
        if cfg.num_env_runners > 0:
            runs.init_ray(cfg.address)
        import keras

        from tfcluster import quiet

        quiet.warn_if_no_gpu(cfg.use_gpu, f"the learner ({os.uname().nodename})")
        keras.utils.set_random_seed(cfg.seed)
        self.episode_returns: collections.deque = collections.deque(maxlen=cfg.metrics_num_episodes_for_smoothing)
        self.episode_lens: collections.deque = collections.deque(maxlen=cfg.metrics_num_episodes_for_smoothing)
        self.env_steps = 0
        self.num_episodes = 0
        self.solved_at: dict[str, float] | None = None
        self.wall_start = time.time()
        self.threshold = self.solve_threshold()
        self.build_learner()

    def build_learner(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def train(self) -> dict[str, Any]:
        """One training iteration, in RLlib's nested result layout (`flat(result)` gives step()'s keys)."""
        return nested(super().train())

    @classmethod
    def from_checkpoint(cls, checkpoint: Any, **overrides: Any) -> "Algorithm":
        """A new algorithm with the config and state of a checkpoint folder (or `ray.tune.Checkpoint`, or
        what `save()` returned), as RLlib's `Algorithm.from_checkpoint`; `overrides` change settings
        (e.g. num_env_runners=0)."""
        checkpoint = getattr(checkpoint, "checkpoint", checkpoint)
        path = getattr(checkpoint, "path", checkpoint)
        state_file = os.path.join(path, "state.json")
        if not os.path.exists(state_file):
            raise UserError(f"no {cls.__name__} checkpoint in {path} (state.json missing)")
        with open(state_file) as f:
            saved = json.load(f)["config"]
        algo = cls(config={**saved, **overrides})
        algo.restore(path)
        return algo

    # ---------------------------------------------------------------- episode bookkeeping
    def record_episodes(self, returns: list[float], lens: list[int]) -> bool:
        """Add finished episodes; True when the smoothed return first reaches solve_score."""
        for r, n in zip(returns, lens):
            self.episode_returns.append(float(r))
            self.episode_lens.append(int(n))
            self.num_episodes += 1
            if self.solved_at is None and self.is_solved():
                self.solved_at = {"episodes": self.num_episodes, "env_steps": self.env_steps,
                                  "seconds": time.time() - self.wall_start}
        return self.solved_at is not None

    def return_mean(self) -> float:
        return float(np.mean(self.episode_returns)) if self.episode_returns else float("nan")

    def solve_threshold(self) -> float | None:
        """`--solve_score`, or for 0 the env's registered reward threshold (gymnasium spec)."""
        if self.cfg.solve_score > 0:
            return self.cfg.solve_score
        if self.cfg.solve_score < 0:
            return None
        import gymnasium as gym

        from tfcluster.rl import envs

        name = self.cfg.env.removeprefix(envs.PREFIX)
        spec = gym.registry.get(name) if envs.kind(name) != "atari" else None
        return getattr(spec, "reward_threshold", None)

    def record_evaluation(self, result: dict[str, float]) -> bool:
        """With solve_metric evaluation: True when the evaluation mean first reaches the threshold and
        --final_test_episodes held-out episodes confirm it (one lucky short evaluation does not end a run);
        the confirmation's mean goes into `result` as evaluation/confirm/..."""
        mean = result.get("evaluation/env_runners/episode_return_mean")
        if (self.cfg.solve_metric == "evaluation" and self.threshold and self.solved_at is None
                and mean is not None and mean >= self.threshold):
            confirmed = mean
            if self.cfg.final_test_episodes > 0:
                check = self.evaluate_policy(self.cfg.final_test_episodes, held_out=True)
                confirmed = check["evaluation/env_runners/episode_return_mean"]
                result["evaluation/confirm/episode_return_mean"] = confirmed
                result["evaluation/confirm/num_episodes"] = self.cfg.final_test_episodes
            if confirmed >= self.threshold:
                self.solved_at = {"episodes": self.num_episodes, "env_steps": self.env_steps,
                                  "seconds": time.time() - self.wall_start}
        return self.solved_at is not None

    def is_solved(self) -> bool:
        if self.cfg.solve_metric != "env_runners":
            return False
        s = self.threshold
        window = self.cfg.metrics_num_episodes_for_smoothing
        return bool(s) and len(self.episode_returns) >= min(window, 100) and self.return_mean() >= s

    def env_runner_results(self) -> dict[str, float]:
        r = np.asarray(self.episode_returns or [math.nan])
        n = np.asarray(self.episode_lens or [math.nan])
        out = {
            "env_runners/episode_return_mean": float(r.mean()),
            "env_runners/episode_return_max": float(r.max()),
            "env_runners/episode_return_min": float(r.min()),
            "env_runners/episode_len_mean": float(n.mean()),
            "env_runners/num_episodes_lifetime": self.num_episodes,
            "env_runners/num_env_steps_sampled_lifetime": self.env_steps,
            "env_runners/num_env_runner_restarts": self.runners.num_restarts,
            "perf/time_total_s": time.time() - self.wall_start,
        }
        if self.solved_at:
            out.update({"env_runners/solved_at_episodes": self.solved_at["episodes"],
                        "env_runners/solved_at_env_steps": self.solved_at["env_steps"],
                        "env_runners/solved_at_seconds": self.solved_at["seconds"]})
        return out

    # ---------------------------------------------------------------- checkpoints
    def state_arrays(self) -> dict[str, list[np.ndarray]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_state_arrays(self, arrays: dict[str, list[np.ndarray]]) -> None:  # pragma: no cover
        raise NotImplementedError

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        arrays = self.state_arrays()
        flat = {f"{k}/{i}": a for k, lst in arrays.items() for i, a in enumerate(lst)}
        np.savez(os.path.join(checkpoint_dir, "weights.npz"), **flat)
        np.savez(os.path.join(checkpoint_dir, "policy.npz"), *arrays["policy"])
        state = {"env_steps": self.env_steps, "num_episodes": self.num_episodes,
                 "episode_returns": list(self.episode_returns), "episode_lens": list(self.episode_lens),
                 "solved_at": self.solved_at, "config": config_mod.to_dict(self.cfg), **self.extra_state()}
        with open(os.path.join(checkpoint_dir, "state.json"), "w") as f:
            json.dump(state, f)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        with np.load(os.path.join(checkpoint_dir, "weights.npz")) as z:
            arrays: dict[str, list] = collections.defaultdict(list)
            for key in sorted(z.files, key=lambda s: (s.rsplit("/", 1)[0], int(s.rsplit("/", 1)[1]))):
                arrays[key.rsplit("/", 1)[0]].append(z[key])
        self.set_state_arrays(dict(arrays))
        optimizer, lr = getattr(self, "optimizer", None), getattr(self.cfg, "learning_rate", None)
        if optimizer is not None and lr is not None:  # the config's rate, not the saved one (PBT mutates it)
            optimizer.learning_rate.assign(lr)
        with open(os.path.join(checkpoint_dir, "state.json")) as f:
            state = json.load(f)
        self.env_steps, self.num_episodes = state["env_steps"], state["num_episodes"]
        self.episode_returns.extend(state["episode_returns"])
        self.episode_lens.extend(state["episode_lens"])
        self.solved_at = state["solved_at"]
        self.load_extra_state(state)

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def policy_weights(self) -> list[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    eval_explore: float = 0.0  # epsilon (DQN) or sampling (PG, 1.0) during evaluation

    HELD_OUT_SEED = 1_000_000  # seeds from seed + this on are never used by training or periodic evaluation

    def evaluate_policy(self, episodes: int, display: bool = False, held_out: bool = False) -> dict[str, float]:
        """`evaluation/...` returns over `episodes` fresh episodes; with `display`, the first as a GIF;
        `held_out`: on seeds reserved for final checks."""
        if episodes <= 0 and not display:
            return {}
        seed = self.cfg.seed + (self.HELD_OUT_SEED if held_out else 10_000)
        out = self.runners.local.evaluate(self.policy_weights(), max(episodes, 1), self.eval_explore, record=display,
                                          seed=seed)
        r = np.asarray(out["episode_returns"])
        res = {"evaluation/env_runners/episode_return_mean": float(r.mean()),
               "evaluation/env_runners/episode_return_min": float(r.min()),
               "evaluation/env_runners/num_episodes": len(r)}
        if display:
            os.makedirs(self.cfg.out_dir, exist_ok=True)
            path = write_gif(out["frames"], os.path.join(self.cfg.out_dir, f"episode-{self.env_steps}.gif"))
            print(f"# wrote {path}", flush=True)
        return res

    def cleanup(self) -> None:
        if getattr(self, "runners", None) is not None:
            self.runners.stop()

    @classmethod
    def default_resource_request(cls, config: dict):
        """What Ray Tune reserves per trial: the learner (1 CPU, a GPU with use_gpu) plus the runners."""
        from ray.tune import PlacementGroupFactory

        learner = {"CPU": 1.0, **({"GPU": 1.0} if config.get("use_gpu") else {})}
        runner = {"CPU": float(config.get("num_cpus_per_env_runner", 1.0))}
        return PlacementGroupFactory([learner] + [runner] * int(config.get("num_env_runners", 0)), strategy="SPREAD")


# -------------------------------------------------------------------- helpers for the jobs


def nested(result: dict[str, Any]) -> dict[str, Any]:
    """RLlib's layout of a flat result: "env_runners/episode_return_mean" -> ["env_runners"]["episode_return_mean"],
    and the lifetime counters at the top as RLlib has them too."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if key.startswith(RESULT_PREFIXES):
            *parents, leaf = key.split("/")
            node = out
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        else:
            out[key] = value
    runners = out.get("env_runners", {})
    for name in ("num_env_steps_sampled_lifetime", "num_episodes_lifetime"):
        if name in runners:
            out[name] = runners[name]
    return out


def flat(result: dict[str, Any]) -> dict[str, Any]:
    """The flat keys of a `nested` result (what step() returned, and metrics.jsonl keeps)."""

    def walk(prefix: str, node: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}/", v, out)
            else:
                out[prefix + k] = v
        return out

    out: dict[str, Any] = {}
    for key, value in result.items():
        if key in RESULT_KEYS and isinstance(value, dict):
            walk(f"{key}/", value, out)
        elif key not in ("num_env_steps_sampled_lifetime", "num_episodes_lifetime"):
            out[key] = value
    return out


def write_gif(frames: list[np.ndarray], path: str, fps: int = 30) -> str:
    """An episode as an animated GIF (Pillow), for runs without a screen."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames to write")
    images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, int(1000 / fps)), loop=0)
    return path


def policy_weights_from(out_dir: str, which: str = "best") -> list[np.ndarray]:
    """The policy weights of the best (or last) checkpoint of a run; a one-line error when missing."""
    order = [BEST_DIR, CKPT_DIR] if which == "best" else [CKPT_DIR]
    for d in order:
        path = os.path.join(out_dir, d, "policy.npz")
        if os.path.exists(path):
            with np.load(path) as z:
                return [z[f"arr_{i}"] for i in range(len(z.files))]
    raise UserError(f"no checkpoint in {out_dir} ({'/'.join(order)}); train first (--is_train true)")


def needs(cfg: Any) -> list[runs.Need]:
    """What the env runners and a GPU learner ask of the Ray cluster."""
    n, c = cfg.num_env_runners, cfg.num_cpus_per_env_runner
    return [runs.Need("CPU", n * c, f"--num_env_runners {n} x --num_cpus_per_env_runner {c:g}", "lower either"),
            runs.Need("GPU", 1 if cfg.use_gpu else 0, "--use_gpu", "drop --use_gpu or add a GPU node")]


class _Handle:
    """Calls an Algorithm in this process or in a GPU Ray actor alike."""

    def __init__(self, algo_cls: type, cfg: Any):
        self.remote = bool(cfg.use_gpu)
        if self.remote:
            import ray

            self.algo = ray.remote(num_gpus=1, num_cpus=cfg.cpus_per_worker)(algo_cls).remote(config=config_mod.to_dict(cfg))
        else:
            self.algo = algo_cls(config=config_mod.to_dict(cfg))

    def __getattr__(self, name: str):
        fn = getattr(self.algo, name)
        if not self.remote:
            return fn
        import ray

        return lambda *a, **k: ray.get(fn.remote(*a, **k))


def run(wl: Any, cfg: Any) -> dict[str, Any]:
    """Train RL workload `wl` with `cfg` until solved or out of budget (resuming from out_dir/ckpt), export at the end."""
    from tfcluster.metrics import MetricsWriter

    ckpt_dir, best_dir = (os.path.abspath(runs.folder(cfg.out_dir, w)) for w in ("last", "best"))
    resumed = os.path.exists(os.path.join(ckpt_dir, "state.json"))
    runs.start(wl.name, cfg, resumed)
    if cfg.num_env_runners > 0 or cfg.use_gpu:
        runs.init_ray(cfg.address)
        runs.require(needs(cfg), cfg.wait_for_resources)
    algo = _Handle(wl.algorithm, cfg)
    if resumed:
        algo.restore(ckpt_dir)
    writer = MetricsWriter(cfg.out_dir)
    best: float | None = None
    result: dict[str, Any] = {}
    try:
        while True:
            result = flat(algo.train())
            rec = {k: v for k, v in result.items() if k.startswith(RESULT_PREFIXES) and isinstance(v, (int, float))}
            rec["training_iteration"] = result["training_iteration"]
            writer.write(int(result["env_runners/num_env_steps_sampled_lifetime"]), rec)
            algo.save(ckpt_dir)
            mean = result.get(("evaluation/" if cfg.solve_metric == "evaluation" else "") + "env_runners/episode_return_mean")
            if runs.is_better(mean, best, "max") or (best is not None and mean == best):  # ties: the later weights
                best = mean
                algo.save(best_dir)
            if result.get("done"):
                break
        # The exported policy (best/), on held-out episodes: what a user of the model gets.
        algo.set_policy_weights(policy_weights_from(cfg.out_dir, "best"))
        final = algo.evaluate_policy(cfg.final_test_episodes, cfg.display, held_out=True)
        final = {k.replace("evaluation/env_runners/", "evaluation/final/"): v for k, v in final.items()}
        if final:  # the last record holds the training and the final evaluation returns
            writer.write(int(result["env_runners/num_env_steps_sampled_lifetime"]), {**rec, **final})
            result.update(final)
            print(f"# exported policy on {cfg.final_test_episodes} held-out episodes: mean return "
                  f"{final['evaluation/final/episode_return_mean']:.1f}", flush=True)
        path = runs.export(wl, cfg, "best")
        if path:
            result["export_path"] = path
    finally:
        writer.close()
        algo.stop()
    return result


def env_preset(workload: str, config_cls: type):
    """`Workload.preset` of an RL workload: without --hparams_path, the preset of the env (--env, else
    the one saved in out_dir, else the default): `<workload>_atari.json` or `<workload>_cartpole.json`."""
    def preset(ns: Any) -> None:
        if ns.hparams_path is not None:
            return
        env = getattr(ns, "env", None)
        saved = os.path.join(getattr(ns, "out_dir", ""), config_mod.CONFIG_FILE) if hasattr(ns, "out_dir") else ""
        if env is None and saved and os.path.exists(saved):
            env = config_mod.load_json(saved).get("env")
        env = env or next(f.default for f in dataclasses.fields(config_cls) if f.name == "env")
        path = preset_path(workload, env)
        if os.path.exists(path):
            ns.hparams_path = path

    return preset


def evaluate_offline(algo_cls: type):
    """`Workload.offline` of an RL workload: `--is_train false` evaluates the best checkpoint instead of training."""

    def offline(cfg: Any) -> bool:
        if cfg.is_train:
            return False
        evaluate_run(algo_cls, cfg)
        return True

    return offline


def evaluate_run(algo_cls: type, cfg: Any) -> dict[str, float]:
    """`--is_train false`: play `--test_episodes` with the best checkpoint of out_dir (and a GIF with --display)."""
    from tfcluster.metrics import MetricsWriter

    weights = policy_weights_from(cfg.out_dir, "best")
    values = {**config_mod.to_dict(cfg), "num_env_runners": 0, "use_gpu": False}
    algo = algo_cls(config=values)
    try:
        algo.set_policy_weights(weights)
        res = algo.evaluate_policy(max(cfg.test_episodes, 1), cfg.display)
        w = MetricsWriter(cfg.out_dir)
        w.write(algo.env_steps, res)
        w.close()
    finally:
        algo.stop()
    return res


def keep_tf2() -> None:
    """Undo RLlib's `disable_v2_behavior()` (done when `import ray.rllib` is the first to import TensorFlow):
    tfcluster's Keras 3 code and RLlib's "tf2" framework both need eager execution."""
    import tensorflow as tf

    if not tf.executing_eagerly():
        tf.compat.v1.enable_v2_behavior()


# ---------------------------------------------------------------------------- presets

PRESETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "presets")


def preset_path(workload: str, env: str | None) -> str:
    """The preset for `workload` on `env`: `<workload>_atari.json` for Atari games, else `<workload>_cartpole.json`."""
    from tfcluster.rl import envs

    family = "atari" if env and envs.kind(env) == "atari" else "cartpole"
    return os.path.join(PRESETS, f"{workload}_{family}.json")


def presets_for(config_cls: type, env: str | None) -> dict[str, Any]:
    """The preset values for a learner's Config on `env` (empty when there is no preset file)."""
    workload = config_cls.__module__.rsplit(".", 1)[-1]
    path = preset_path(workload, env)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)
