"""RL benchmarks, printed as JSON (and written to bench/results/rl.json).

    python bench/rl.py --what pg --seeds 5          # REINFORCE: episodes to 195 on CartPole-v0, median over seeds
    python bench/rl.py --what dqn --seeds 1         # DQN (mlp): env steps to 475 on CartPole-v1 (+ RLlib if torch)
    python bench/rl.py --what breakout              # Breakout nips: env steps/s with 0, 1, 2 env runners; 1M replay size

PG counts episodes until the mean of 100 consecutive episodes is at least 195 (the book
allowed 10,000). DQN stops at the preset's criterion (greedy evaluation of 10 episodes at
least 475, checked every 2,000 steps). When PyTorch is importable, RLlib's DQN and PPO
train on the very same `tfcluster/CartPole-v1` env in the same run, for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "lib"))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from report import emit  # noqa: E402  (bench/report.py, beside this file)


def train_until_done(algo, max_seconds: float) -> dict:
    t0 = time.time()
    r: dict = {}
    while time.time() - t0 < max_seconds:
        r = algo.train()
        if r.get("done"):
            break
    algo.stop()
    return r


def bench_pg(seeds: list[int], max_seconds: float) -> dict:
    from tfcluster.rl import PGConfig

    runs = []
    for s in seeds:
        t0 = time.time()
        r = train_until_done(PGConfig().environment("CartPole-v0").debugging(seed=s).build(), max_seconds)
        runs.append({"seed": s, "solved": "env_runners/solved_at_episodes" in r,
                     "episodes": r.get("env_runners/solved_at_episodes"), "env_steps": r.get("env_runners/solved_at_env_steps"),
                     "seconds": round(time.time() - t0, 1)})
    solved = [x for x in runs if x["solved"]]
    return {"benchmark": "pg_cartpole_v0_to_195", "runs": runs,
            "solved": f"{len(solved)}/{len(runs)}",
            "median_episodes": statistics.median(x["episodes"] for x in solved) if solved else None,
            "median_seconds": statistics.median(x["seconds"] for x in solved) if solved else None}


def bench_dqn(seeds: list[int], max_seconds: float) -> dict:
    from tfcluster.rl import DQNConfig

    runs = []
    for s in seeds:
        t0 = time.time()
        r = train_until_done(DQNConfig().environment("CartPole-v1").debugging(seed=s).build(), max_seconds)
        runs.append({"seed": s, "solved": "env_runners/solved_at_env_steps" in r,
                     "env_steps": r.get("env_runners/solved_at_env_steps", r.get("env_runners/num_env_steps_sampled_lifetime")),
                     "seconds": round(time.time() - t0, 1)})
    out = {"benchmark": "dqn_mlp_cartpole_v1_to_475", "runs": runs}
    out["rllib"] = bench_rllib(max_seconds)
    return out


def bench_rllib(max_seconds: float) -> dict:
    """RLlib's DQN and PPO (PyTorch) on tfcluster/CartPole-v1, stopping at a mean return of 475."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return {"skipped": "PyTorch is not installed (RLlib's algorithms need it; benchmark only)"}
    from ray.rllib.algorithms.dqn import DQNConfig as RLlibDQN
    from ray.rllib.algorithms.ppo import PPOConfig

    from tfcluster.rl import register_envs
    from tfcluster.train.driver import init_ray

    init_ray("")
    register_envs()
    out = {}
    for name, cfg in (("dqn", RLlibDQN()), ("ppo", PPOConfig())):
        algo = cfg.environment("tfcluster/CartPole-v1").env_runners(num_env_runners=0).build_algo()
        t0, r = time.time(), {}
        while time.time() - t0 < max_seconds:
            r = algo.train()
            if r["env_runners"].get("episode_return_mean", 0) >= 475:
                break
        out[name] = {"env_steps": r["env_runners"].get("num_env_steps_sampled_lifetime"),
                     "return_mean": r["env_runners"].get("episode_return_mean"), "seconds": round(time.time() - t0, 1)}
        algo.stop()
    return out


def bench_breakout(steps: int) -> dict:
    import numpy as np

    from tfcluster.rl import DQNConfig, replay
    from tfcluster.train.driver import init_ray

    out = {"benchmark": "dqn_nips_breakout_throughput", "steps_measured": steps,
           "replay_1m_80x80_gb": round(replay.memory_bytes(1_000_000, (80, 80)) / 1e9, 2),
           "replay_1m_84x84_gb": round(replay.memory_bytes(1_000_000, (84, 84)) / 1e9, 2),
           "book": "65 env steps/s, 50M steps in about 8 days"}
    for runners in (0, 1, 2):
        if runners:
            init_ray("")
        algo = (DQNConfig().environment("Breakout")
                .training(memory_size=50_000, t_learn_start=500, t_test=0, steps_per_stats=500)
                .env_runners(num_env_runners=runners).build())
        algo.train()  # warm-up: actors start, memory fills past t_learn_start, tf.functions trace
        t0, s0 = time.time(), algo.env_steps
        while algo.env_steps - s0 < steps:
            algo.train()
        rate = (algo.env_steps - s0) / (time.time() - t0)
        out[f"env_steps_per_s_{runners}_runners"] = round(rate, 1)
        algo.stop()
    a = replay.ReplayMemory(100_000, (80, 80), np.uint8, 4)
    out["replay_100k_80x80_allocated_gb"] = round(a.nbytes / 1e9, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", choices=["pg", "dqn", "breakout", "all"], default="all")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--max_seconds", type=float, default=1800, help="per training run")
    p.add_argument("--breakout_steps", type=int, default=2000)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "rl.json"))
    a = p.parse_args()
    seeds = list(range(1, a.seeds + 1))
    results = {}
    if a.what in ("pg", "all"):
        results["pg"] = bench_pg(seeds, a.max_seconds)
    if a.what in ("dqn", "all"):
        results["dqn"] = bench_dqn(seeds, a.max_seconds)
    if a.what in ("breakout", "all"):
        results["breakout"] = bench_breakout(a.breakout_steps)
    results["machine"] = {"cpus": os.cpu_count()}
    emit(results, a.out)


if __name__ == "__main__":
    main()
