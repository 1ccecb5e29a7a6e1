"""Env runners: step environments with the current policy weights, locally or as Ray actors.

Like RLlib's EnvRunnerGroup: one local runner (in the learner process; it samples when
`num_env_runners` is 0 and runs evaluation) plus `num_env_runners` Ray actors. The
learner puts its weights into the object store once per round (`ray.put`) and every
runner's `sample_*` call receives that reference, so the weights travel once per node.

Across machines: the runner actors are spread over the cluster's nodes (Ray's SPREAD
strategy, or the trial's placement group in a sweep), and a runner whose process or node
is lost is replaced by a new actor and its work sent again (RLlib's
`restart_failed_env_runners`), so training goes on.

A policy is anything with `set_weights(list[np.ndarray])` and
`act(obs[None], explore, rng) -> actions`; the workload passes a picklable factory
`policy_fn(observation_space, action_space)`.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Callable

import numpy as np

from tfcluster.rl.envs import history_length, make_env


def newest_frame(obs: np.ndarray, history: int) -> np.ndarray:
    """The frame an observation adds: the last channel of a frame stack, or the whole vector."""
    return obs[..., -1] if history > 1 else obs


class EnvRunner:
    """One environment, one policy copy; samples replay fragments (DQN) or whole episodes (PG)."""

    def __init__(self, env_name: str, env_config: dict, policy_fn: Callable[..., Any], seed: int, index: int = 0):
        self._env_name, self._env_config, self._eval_env = env_name, dict(env_config), None
        self.env = make_env(env_name, **env_config)
        self.history = history_length(self.env)
        self.policy = policy_fn(self.env.observation_space, self.env.action_space)
        self.index = index
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.env.action_space.seed(self.seed)
        self.obs: np.ndarray | None = None
        self.t = 0
        self.ep_return = 0.0
        self.ep_len = 0
        self.recent: collections.deque = collections.deque(maxlen=self.history)
        self._seeded = False

    # ------------------------------------------------------------------ episodes
    def _reset(self) -> None:
        obs, _ = self.env.reset(seed=None if self._seeded else self.seed)
        self._seeded = True
        self.obs, self.t, self.ep_return, self.ep_len = obs, 0, 0.0, 0
        self.recent.clear()
        self.recent.append(newest_frame(obs, self.history))

    def _step(self, action: int):
        obs, r, term, trunc, info = self.env.step(int(action))
        self.ep_return += float(info.get("raw_reward", r))
        self.ep_len += 1
        self.t += 1
        self.obs = obs
        self.recent.append(newest_frame(obs, self.history))
        return obs, float(r), bool(term), bool(trunc)

    # ------------------------------------------------------------------ DQN: replay fragments
    def sample_steps(self, weights: list | None, num_steps: int, explore: float) -> dict[str, Any]:
        """`num_steps` env steps as a replay fragment (see replay.py) plus finished-episode stats."""
        if weights is not None:
            self.policy.set_weights(weights)
        if self.obs is None:
            self._reset()
        frames, actions, rewards, term_, valid, hist = [], [], [], [], [], []

        def push(frame, h):
            frames.append(frame), actions.append(0), rewards.append(0.0), term_.append(False), valid.append(False), hist.append(h)

        # context: the frames of this episode the current state stacks (oldest first)
        ctx = list(self.recent)
        for j, frame in enumerate(ctx):
            push(frame, min(self.t - (len(ctx) - 1 - j), self.history - 1))
        returns, lens = [], []
        for _ in range(num_steps):
            a = int(self.policy.act(self.obs[None], explore, self.rng)[0])
            _, r, term, trunc = self._step(a)
            actions[-1], rewards[-1], term_[-1], valid[-1] = a, r, term, True
            push(self.recent[-1], min(self.t, self.history - 1))
            if term or trunc:
                returns.append(self.ep_return), lens.append(self.ep_len)
                self._reset()
                push(self.recent[-1], 0)
        fragment = {
            "frames": np.stack(frames), "actions": np.asarray(actions, np.int32),
            "rewards": np.asarray(rewards, np.float32), "terminated": np.asarray(term_, bool),
            "valid": np.asarray(valid, bool), "hist": np.asarray(hist, np.uint8),
        }
        return {"fragment": fragment, "num_steps": num_steps, "episode_returns": returns, "episode_lens": lens}

    # ------------------------------------------------------------------ PG: whole episodes
    def sample_episodes(self, weights: list | None, num_episodes: int, explore: float = 1.0) -> list[dict[str, np.ndarray]]:
        """`num_episodes` complete episodes: observations, actions, rewards."""
        if weights is not None:
            self.policy.set_weights(weights)
        out = []
        for _ in range(num_episodes):
            self._reset()
            obs, acts, rews = [], [], []
            while True:
                a = int(self.policy.act(self.obs[None], explore, self.rng)[0])
                obs.append(self.obs)
                _, r, term, trunc = self._step(a)
                acts.append(a), rews.append(r)
                if term or trunc:
                    break
            out.append({"obs": np.asarray(obs, np.float32), "actions": np.asarray(acts, np.int32),
                        "rewards": np.asarray(rews, np.float32), "return": self.ep_return})
        self.obs = None
        return out

    def node_id(self) -> str:
        """The Ray node this runner lives on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def evaluate(self, weights: list | None, num_episodes: int, explore: float, record: bool = False,
                 seed: int | None = None) -> dict[str, Any]:
        """Returns of `num_episodes` episodes on a separate env copy (greedy when `explore` is 0), episode i
        seeded `seed + i` (default: this runner's seed + 10,000), and the rendered frames of the first
        episode when `record`."""
        if weights is not None:
            self.policy.set_weights(weights)
        if self._eval_env is None:
            self._eval_env = make_env(self._env_name, **self._env_config)
        base = self.seed + 10_000 if seed is None else int(seed)
        env, rng = self._eval_env, np.random.default_rng(base)
        returns, frames = [], []
        for i in range(num_episodes):
            obs, _ = env.reset(seed=base + i)
            total = 0.0
            if record and i == 0:
                frames.append(env.render())
            while True:
                a = int(self.policy.act(obs[None], explore, rng)[0])
                obs, r, term, trunc, info = env.step(a)
                total += float(info.get("raw_reward", r))
                if record and i == 0:
                    frames.append(env.render())
                if term or trunc:
                    break
            returns.append(total)
        return {"episode_returns": returns, "frames": frames}


class EnvRunnerGroup:
    """The local runner plus `num_env_runners` Ray actors (runner i seeded with seed + i)."""

    def __init__(self, env_name: str, env_config: dict, policy_fn: Callable[..., Any], *, seed: int,
                 num_env_runners: int = 0, num_cpus_per_env_runner: float = 1.0,
                 restart_failed_env_runners: bool = True):
        self.local = EnvRunner(env_name, env_config, policy_fn, seed, 0)
        self.remote: list = []
        self._inflight: dict = {}
        self._args = (env_name, env_config, policy_fn, seed)
        self._cpus = num_cpus_per_env_runner
        self.restart = restart_failed_env_runners
        self.num_restarts = 0
        self.remote = [self._start(i) for i in range(1, num_env_runners + 1)]

    def _start(self, index: int, generation: int = 0):
        """Runner actor `index` (1-based); a replacement gets a seed of its own (`generation`)."""
        import ray
        from ray.util import get_current_placement_group

        env_name, env_config, policy_fn, seed = self._args
        # In a sweep the trial's placement group holds the runners' CPUs (Tune captures child actors);
        # otherwise spread the runners over the nodes, away from each other.
        options = {} if get_current_placement_group() is not None else {"scheduling_strategy": "SPREAD"}
        actor = ray.remote(num_cpus=self._cpus, max_restarts=0)(EnvRunner).options(**options)
        return actor.remote(env_name, env_config, policy_fn, seed + index + 1000 * generation, index)

    def _replace(self, i: int, error: BaseException) -> None:
        """Runner i (0-based in `remote`) died with its process or node: start another, or give up."""
        if not self.restart:
            raise error
        self.num_restarts += 1
        print(f"# env runner {i + 1} lost ({type(error).__name__}); starting a replacement "
              f"(restart {self.num_restarts})", flush=True)
        self.remote[i] = self._start(i + 1, self.num_restarts)

    @property
    def num_remote(self) -> int:
        return len(self.remote)

    def next_fragments(self, weights: list, num_steps: int, explore: float) -> list[dict]:
        """Replay fragments. Local: sampled now. Remote: the ones ready (at least one); those
        runners are sent off again at once with `weights`, so sampling overlaps learning. A lost
        runner is replaced and sent off too."""
        if not self.remote:
            return [self.local.sample_steps(weights, num_steps, explore)]
        import ray
        from ray.exceptions import RayActorError

        ref = ray.put(weights)
        out: list[dict] = []
        while not out:
            busy = set(self._inflight.values())
            for i, r in enumerate(self.remote):
                if i not in busy:
                    self._inflight[r.sample_steps.remote(ref, num_steps, explore)] = i
            ready, _ = ray.wait(list(self._inflight), num_returns=1)
            for f in ready:
                i = self._inflight.pop(f)
                try:
                    out.append(ray.get(f))
                except RayActorError as e:
                    self._replace(i, e)
                    continue
                self._inflight[self.remote[i].sample_steps.remote(ref, num_steps, explore)] = i
        return out

    def sample_episodes(self, weights: list, num_episodes: int) -> list[dict]:
        """`num_episodes` on-policy episodes, split across the remote runners (or sampled locally); a
        lost runner's share is sampled again by its replacement."""
        if not self.remote:
            return self.local.sample_episodes(weights, num_episodes)
        import ray
        from ray.exceptions import RayActorError

        ref = ray.put(weights)
        per = math.ceil(num_episodes / len(self.remote))
        pending = {r.sample_episodes.remote(ref, per): i for i, r in enumerate(self.remote)}
        episodes: list[dict] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                episodes.extend(ray.get(ready[0]))
            except RayActorError as e:
                self._replace(i, e)
                pending[self.remote[i].sample_episodes.remote(ref, per)] = i
        return episodes[:num_episodes]

    def node_ids(self) -> list[str]:
        """The nodes of the remote runners, in order."""
        import ray

        return ray.get([r.node_id.remote() for r in self.remote])

    def stop(self) -> None:
        import ray

        for r in self.remote:
            ray.kill(r)
        self.remote, self._inflight = [], {}
