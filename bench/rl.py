"""RL benchmarks, printed as JSON (and written to bench/results/rl.json).

    python bench/rl.py --what compare               # tfcluster DQN, PG vs RLlib PPO (TF), RLlib DQN: time to a solved greedy policy

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
    from tfcluster.runs import init_ray

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


# ---------------------------------------------------------------------------- compare: time to solved

TARGET, HELD_OUT = 475.0, 100  # CartPole-v1 solved: greedy mean >= 475 over 100 held-out episodes
CHECK_EVERY_S = 1.0  # the greedy check runs (off the clock) after an iteration once this much training time passed


def _race(train_iteration, said_done, greedy_fn, env_steps, budget_s: float, seed: int) -> dict:
    """Train until the greedy policy averages >= TARGET over HELD_OUT held-out episodes (seeds 1,000,000 +
    seed * 1,000 + i, never used in training) or `budget_s` of training time. The check runs after an
    iteration when CHECK_EVERY_S of training passed since the last one, or the algorithm says it is done;
    checks are off the clock."""
    from tfcluster.rl.rllib import greedy_return

    trained, since, checks, best = 0.0, 0.0, 0, float("nan")
    while trained < budget_s:
        t0 = time.time()
        train_iteration()
        dt = time.time() - t0
        trained, since = trained + dt, since + dt
        if since >= CHECK_EVERY_S or said_done():
            since, checks = 0.0, checks + 1
            mean = greedy_return(greedy_fn(), "CartPole-v1", HELD_OUT, seed=1_000_000 + seed * 1_000)
            best = mean if best != best else max(best, mean)
            if mean >= TARGET:
                return {"seed": seed, "solved": True, "seconds": round(trained, 1), "env_steps": int(env_steps()),
                        "greedy_mean": round(mean, 1), "greedy_checks": checks}
    return {"seed": seed, "solved": False, "seconds": round(trained, 1), "env_steps": int(env_steps()),
            "best_greedy_mean": best, "greedy_checks": checks}


def race_tfcluster(algo_name: str, seed: int, budget_s: float) -> dict:
    import numpy as np

    from tfcluster.rl import DQNConfig, PGConfig

    builder = DQNConfig() if algo_name == "dqn" else PGConfig()
    algo = builder.environment("CartPole-v1").debugging(seed=seed).build()
    policy, rng = algo.runners.local.policy, np.random.default_rng(0)

    def greedy():
        policy.set_weights(algo.policy_weights())
        return lambda obs: policy.act(obs, 0.0, rng)

    last: dict = {}

    def step():
        last.update(algo.train())

    try:
        return _race(step, lambda: bool(last.get("done")), greedy, lambda: algo.env_steps, budget_s, seed)
    finally:
        algo.stop()


def race_rllib(algo_name: str, seed: int, budget_s: float) -> dict:
    """In a process of its own (RLlib's TF policies need TF_USE_LEGACY_KERAS=1 before TensorFlow loads)."""
    import json
    import subprocess

    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--what", "_rllib_race", "--algo", algo_name,
                        "--seed", str(seed), "--budget_s", str(budget_s)],
                       env=env, capture_output=True, text=True, timeout=budget_s * 3 + 600)
    rows = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    return rows[-1] if rows else {"seed": seed, "error": p.stderr.strip().splitlines()[-1:] or ["no output"]}


def _rllib_race(algo_name: str, seed: int, budget_s: float) -> None:
    import json

    from tfcluster.rl import rllib

    rllib.legacy_keras_process()
    import ray

    ray.init(address="local", include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {rllib.LEGACY_KERAS: "1"}})
    from tfcluster.rl.envs import register_envs

    register_envs()
    config = rllib.ppo_config("CartPole-v1", seed=seed) if algo_name == "ppo" else rllib.dqn_config("CartPole-v1", seed=seed)
    try:
        algo = config.build()
    except Exception as e:  # noqa: BLE001 - RLlib 2.60's old-stack DQN (tf2) fails here
        print(json.dumps({"seed": seed, "error": f"{type(e).__name__}: {e}", "ray": ray.__version__}), flush=True)
        return
    last: dict = {}

    def step():
        last.update(algo.train())

    out = _race(step, lambda: False, lambda: rllib.rllib_greedy(algo), lambda: last["num_env_steps_sampled_lifetime"],
                budget_s, seed)
    algo.stop()
    print(json.dumps(out), flush=True)


def bench_compare(seeds: list[int], budget_s: float) -> dict:
    out: dict = {"benchmark": "cartpole_v1_time_to_solved_greedy",
                 "rule": f"greedy policy mean >= {TARGET:g} over {HELD_OUT} held-out episodes; training time only "
                         f"(greedy checks, after an iteration every {CHECK_EVERY_S:g} s of training or when the "
                         "algorithm says it is solved, are off the clock)",
                 "budget_s": budget_s, "seeds": seeds}
    for name, fn in (("tfcluster_dqn", lambda s: race_tfcluster("dqn", s, budget_s)),
                     ("tfcluster_pg", lambda s: race_tfcluster("pg", s, budget_s)),
                     ("rllib_ppo_tf", lambda s: race_rllib("ppo", s, budget_s)),
                     ("rllib_dqn_tf", lambda s: race_rllib("dqn", s, budget_s))):
        runs = []
        for s in seeds:
            runs.append(fn(s))
            print(f"# {name} seed {s}: {runs[-1]}", file=sys.stderr, flush=True)
            if "error" in runs[-1]:
                break  # an upstream failure: the same for every seed
        solved = [r for r in runs if r.get("solved")]
        out[name] = {"runs": runs, "solved": f"{len(solved)}/{len(runs)}",
                     "median_seconds": statistics.median(r["seconds"] for r in solved) if solved else None,
                     "median_env_steps": statistics.median(r["env_steps"] for r in solved) if solved else None}
    ours = [out[k]["median_seconds"] for k in ("tfcluster_dqn", "tfcluster_pg") if out[k]["median_seconds"]]
    theirs = [out[k]["median_seconds"] for k in ("rllib_ppo_tf", "rllib_dqn_tf") if out[k]["median_seconds"]]
    if ours and theirs:
        out["speedup_best_vs_best"] = round(min(theirs) / min(ours), 1)
        for k in ("tfcluster_dqn", "tfcluster_pg"):
            if out[k]["median_seconds"]:
                out[f"speedup_{k}_vs_rllib_best"] = round(min(theirs) / out[k]["median_seconds"], 1)
        out["goal_5x_met"] = out["speedup_best_vs_best"] >= 5
    return out


def bench_breakout(steps: int) -> dict:
    import numpy as np

    from tfcluster.rl import DQNConfig, replay
    from tfcluster.runs import init_ray

    out = {"benchmark": "dqn_nature_double_q_breakout_throughput", "steps_measured": steps,
           "replay_1m_80x80_gb": round(replay.memory_bytes(1_000_000, (80, 80)) / 1e9, 2),
           "replay_1m_84x84_gb": round(replay.memory_bytes(1_000_000, (84, 84)) / 1e9, 2),
           "book": "65 env steps/s, 50M steps in about 8 days"}
    for runners in (0, 1, 2):
        if runners:
            init_ray("")
        algo = (DQNConfig().environment("Breakout")  # the book's preprocessing; nature network, double Q
                .training(network_header_type="nature", double_q=True, memory_size=50_000, t_learn_start=500,
                          t_test=0, steps_per_stats=500, final_test_episodes=0)
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
    p.add_argument("--what", choices=["compare", "pg", "dqn", "breakout", "all", "_rllib_race"], default="all")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget_s", type=float, default=600, help="compare: training seconds per run")
    p.add_argument("--algo", default="ppo", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--max_seconds", type=float, default=1800, help="per training run")
    p.add_argument("--breakout_steps", type=int, default=2000)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "rl.json"))
    a = p.parse_args()
    seeds = list(range(1, a.seeds + 1))
    if a.what == "_rllib_race":
        _rllib_race(a.algo, a.seed, a.budget_s)
        return
    results = {}
    if a.what == "compare":
        results["compare"] = bench_compare(seeds, a.budget_s)
        results["breakout"] = bench_breakout(a.breakout_steps)
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
