"""RLlib on tfcluster's environments and networks.

    from tfcluster.rl import register_envs
    register_envs()     # envs tfcluster/CartPole-v1, tfcluster/Breakout, ...; models tfcluster_dqn,
                        # tfcluster_pg; Tune trainables tfcluster_DQN, tfcluster_PG
    config = (PPOConfig().api_stack(enable_rl_module_and_learner=False,
                                    enable_env_runner_and_connector_v2=False)
              .framework("tf2").environment("tfcluster/CartPole-v1")
              .training(model={"custom_model": "tfcluster_pg"}))

When `import ray.rllib` is the first to import TensorFlow, RLlib's `try_import_tf` calls
`disable_v2_behavior()` and eager execution is off for the whole process; `register_envs()` and
tfcluster's learners turn it back on (`keep_tf2`). Importing TensorFlow first avoids it.

RLlib 2.60's TensorFlow algorithms are on its old API stack (ModelV2 and TF policies; the new
stack is PyTorch only), and its TF code needs Keras 2: a process that runs them sets
`TF_USE_LEGACY_KERAS=1` before TensorFlow is imported (`tf-keras` is installed for it).
tfcluster's own learners use Keras 3 and never set it; `python -m tfcluster.rl.rllib`
(below) sets it for its own process and its env runners.

The models are the book's networks, built by the very functions tfcluster's learners use,
with the Keras RLlib's process has (`tf.keras`):
- `tfcluster_dqn`: DQN's Q-network (`nips`, `nature` or `mlp`, `dueling`), its Q-values as the
  action logits, and a value head on the last hidden layer (what PPO needs). Options in
  `custom_model_config`: network_header_type, mlp_hidden_sizes, dueling.
- `tfcluster_pg`: the REINFORCE policy network (one hidden ReLU layer, no bias; softmax head)
  and a value head on its hidden layer. Option: hidden_units.

    python -m tfcluster.rl.rllib train --env CartPole-v1 --model tfcluster_pg --iterations 4
    python -m tfcluster.rl.rllib train --algo DQN      # RLlib 2.60: fails building (see dqn_config)
    python -m tfcluster.rl.rllib check-envs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

LEGACY_KERAS = "TF_USE_LEGACY_KERAS"
MODELS = ("tfcluster_dqn", "tfcluster_pg")
TRAINABLES = {"tfcluster_DQN": ("tfcluster.rl.dqn", "DQN"), "tfcluster_PG": ("tfcluster.rl.pg", "PG")}


def register() -> list[str]:
    """The one registration entry point: tfcluster's envs (tfcluster/CartPole-v0, -v1, tfcluster/<Game> for every
    ALE game) with `ray.tune.registry.register_env`, so RLlib algorithms train on exactly these tasks; its
    networks as RLlib models (tfcluster_dqn, tfcluster_pg); its algorithms as Tune trainables (tfcluster_DQN,
    tfcluster_PG). Returns the env names."""
    from ray.tune.registry import register_env

    from tfcluster.rl.envs import env_names, make_env

    names = env_names()
    for n in names:
        register_env(n, lambda env_config, _n=n: make_env(_n, **dict(env_config or {})))
    register_models()
    register_trainables()
    return names


def register_trainables() -> list[str]:
    """tfcluster's DQN and PG as Ray Tune trainables by name: `tune.Tuner("tfcluster_DQN", ...)`."""
    import importlib

    from ray.tune import register_trainable

    for name, (module, cls) in TRAINABLES.items():
        register_trainable(name, getattr(importlib.import_module(module), cls))
    return list(TRAINABLES)


def register_models() -> list[str]:
    """`tfcluster_dqn` and `tfcluster_pg` in RLlib's ModelCatalog (nothing when RLlib is not installed)."""
    import tensorflow  # noqa: F401 - first: RLlib's try_import_tf turns TF2 behaviour (eager) off when it imports TF itself
    try:
        from ray.rllib.models import ModelCatalog
    except ImportError:
        return []
    from tfcluster.rl.algorithm import keep_tf2

    keep_tf2()
    q_model, policy_model = _model_classes()
    ModelCatalog.register_custom_model("tfcluster_dqn", q_model)
    ModelCatalog.register_custom_model("tfcluster_pg", policy_model)
    return list(MODELS)


_CLASSES: tuple[type, type] | None = None


def _model_classes() -> tuple[type, type]:
    """The two TFModelV2 classes, defined on first use (RLlib is imported only then)."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    import numpy as np
    from ray.rllib.models.tf.tf_modelv2 import TFModelV2

    from tfcluster.rl import dqn, pg

    class _WithValue(TFModelV2):
        """An action-logits network plus a value head on its last hidden layer."""

        def _finish(self, net, hidden_layer: str) -> None:
            import tensorflow as tf

            value = tf.keras.layers.Dense(1, name="value_out")(net.get_layer(hidden_layer).output)
            self.base_model = net  # the book's network alone (its weights are tfcluster's)
            self.model = tf.keras.Model(net.inputs, [net.outputs[0], value], name=f"{net.name}_with_value")
            self._value = None

        def forward(self, input_dict, state, seq_lens):
            import tensorflow as tf

            obs = tf.cast(input_dict["obs"], tf.float32)
            logits, self._value = self.model(obs)
            return logits, state

        def value_function(self):
            import tensorflow as tf

            return tf.reshape(self._value, [-1])

    class QModel(_WithValue):
        def __init__(self, obs_space, action_space, num_outputs, model_config, name, **kw):
            super().__init__(obs_space, action_space, num_outputs, model_config, name)
            import tensorflow as tf

            opts = {**model_config.get("custom_model_config", {}), **kw}
            shape = tuple(obs_space.shape)
            header = opts.get("network_header_type", "mlp" if len(shape) == 1 else "nature")
            sizes = dqn.parse_sizes(str(opts.get("mlp_hidden_sizes", "64,64")))
            net = dqn.build_q_network(shape, "float32", int(num_outputs), header, sizes,
                                      bool(opts.get("dueling", False)), keras_module=tf.keras)
            hidden = [layer.name for layer in net.layers if layer.name.startswith("hidden_")][-1]
            self._finish(net, hidden)

    class PolicyModel(_WithValue):
        def __init__(self, obs_space, action_space, num_outputs, model_config, name, **kw):
            super().__init__(obs_space, action_space, num_outputs, model_config, name)
            import tensorflow as tf

            opts = {**model_config.get("custom_model_config", {}), **kw}
            obs_dim = int(np.prod(obs_space.shape))
            net = pg.build_model(obs_dim, int(num_outputs), int(opts.get("hidden_units", 10)), "softmax",
                                 keras_module=tf.keras)
            self._finish(net, "hidden")

    _CLASSES = (QModel, PolicyModel)
    return _CLASSES


# ---------------------------------------------------------------------------- running RLlib


def legacy_keras_process() -> None:
    """This process runs RLlib's TF policies: Keras 2 for tf.keras. Must run before TensorFlow is imported."""
    if "tensorflow" in sys.modules and os.environ.get(LEGACY_KERAS) != "1":
        raise RuntimeError(f"set {LEGACY_KERAS}=1 before TensorFlow is imported to run RLlib's TF algorithms")
    os.environ[LEGACY_KERAS] = "1"
    import tensorflow  # noqa: F401 - before RLlib, whose own import of TF would switch eager execution off


def ppo_config(env: str, *, model: str = "", seed: int = 0, num_env_runners: int = 0, lr: float | None = None):
    """RLlib's PPO with TensorFlow (old API stack) on a tfcluster env, optionally with a tfcluster model."""
    from ray.rllib.algorithms.ppo import PPOConfig

    config = (PPOConfig()
              .api_stack(enable_rl_module_and_learner=False, enable_env_runner_and_connector_v2=False)
              .framework("tf2")
              .environment(env if env.startswith("tfcluster/") else f"tfcluster/{env}")
              .env_runners(num_env_runners=num_env_runners)
              .debugging(seed=seed, log_level="ERROR"))
    if model:
        config = config.training(model={"custom_model": model})
    if lr is not None:
        config = config.training(lr=lr)
    return config


def dqn_config(env: str, *, seed: int = 0, num_env_runners: int = 0):
    """RLlib's DQN with TensorFlow (old API stack, the replay buffer it asks for) on a tfcluster env.
    In RLlib 2.60 building it fails (`TypeError: argument of type 'ABCMeta' is not iterable` in
    `Algorithm._create_local_replay_buffer_if_necessary`): kept so the failure stays visible."""
    from ray.rllib.algorithms.dqn import DQNConfig

    return (DQNConfig()
            .api_stack(enable_rl_module_and_learner=False, enable_env_runner_and_connector_v2=False)
            .framework("tf2")
            .environment(env if env.startswith("tfcluster/") else f"tfcluster/{env}")
            .training(replay_buffer_config={"type": "MultiAgentPrioritizedReplayBuffer", "prioritized_replay_alpha": 0.6,
                                            "prioritized_replay_beta": 0.4, "prioritized_replay_eps": 1e-6})
            .env_runners(num_env_runners=num_env_runners)
            .debugging(seed=seed, log_level="ERROR"))


def greedy_return(policy_fn, env: str, episodes: int = 100, seed: int = 1_000_000) -> float:
    """Mean return of `episodes` held-out episodes (seeds seed..seed+episodes-1, never used in training)
    played greedily, all episodes stepped in lockstep: `policy_fn(obs_batch) -> actions`."""
    import numpy as np

    from tfcluster.rl.envs import make_env

    envs = [make_env(env.removeprefix("tfcluster/")) for _ in range(episodes)]
    obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
    totals, live = np.zeros(episodes), list(range(episodes))
    while live:
        actions = policy_fn(np.stack([obs[i] for i in live]))
        still = []
        for i, a in zip(live, actions):
            o, r, term, trunc, info = envs[i].step(int(a))
            totals[i] += float(info.get("raw_reward", r))
            obs[i] = o
            if not (term or trunc):
                still.append(i)
        live = still
    return float(totals.mean())


def rllib_greedy(algo) -> Any:
    """`policy_fn` for `greedy_return` from an RLlib (old-stack) algorithm: its most likely actions."""
    policy = algo.get_policy()

    def act(obs_batch):
        actions, _, _ = policy.compute_actions(obs_batch, explore=False)
        return actions

    return act


def train(args: argparse.Namespace) -> int:
    legacy_keras_process()
    import ray


    ray.init(address="local", include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {LEGACY_KERAS: "1"}})
    register()
    if args.algo == "DQN":
        config = dqn_config(args.env, seed=args.seed, num_env_runners=args.num_env_runners)
        if args.model:
            config = config.training(model={"custom_model": args.model})
    else:
        config = ppo_config(args.env, model=args.model, seed=args.seed, num_env_runners=args.num_env_runners)
    try:
        algo = config.build()
    except Exception as e:  # noqa: BLE001 - one JSON line says what RLlib raised
        import ray as _ray

        print(json.dumps({"algo": args.algo, "ray": _ray.__version__, "build_error": f"{type(e).__name__}: {e}"}),
              flush=True)
        ray.shutdown()
        return 3
    t0 = time.time()
    try:
        for _ in range(args.iterations):
            r = algo.train()
            print(json.dumps({"iteration": r["training_iteration"],
                              "episode_return_mean": r["env_runners"]["episode_return_mean"],
                              "num_env_steps_sampled_lifetime": r["num_env_steps_sampled_lifetime"],
                              "seconds": round(time.time() - t0, 2)}), flush=True)
        if args.greedy_episodes:
            mean = greedy_return(rllib_greedy(algo), args.env, args.greedy_episodes)
            print(json.dumps({"greedy_episodes": args.greedy_episodes, "greedy_return_mean": mean}), flush=True)
    finally:
        algo.stop()
        ray.shutdown()
    return 0


def check_envs(args: argparse.Namespace) -> int:
    """RLlib's checks on tfcluster's envs: RLlib 2.60 has no single-agent `check_env` of its own (it makes
    envs through gymnasium, whose checker it relies on), so each env gets gymnasium's `check_env`, then
    RLlib's own env runner (old API stack, TF) builds the registered env with a tfcluster model and
    samples from it, which checks every observation against the space through RLlib's preprocessors."""
    legacy_keras_process()
    import ray
    from gymnasium.utils.env_checker import check_env

    from tfcluster.rl.envs import make_env

    ray.init(address="local", include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {LEGACY_KERAS: "1"}})
    registered = set(register())
    failed = 0
    try:
        for name in args.envs:
            full = name if name.startswith("tfcluster/") else f"tfcluster/{name}"
            row: dict[str, Any] = {"env": full}
            try:
                if full not in registered:
                    raise ValueError("not registered")
                env = make_env(full.removeprefix("tfcluster/"))
                check_env(env, skip_render_check=True)
                model = "tfcluster_pg" if len(env.observation_space.shape) == 1 else "tfcluster_dqn"
                algo = (ppo_config(full, model=model)
                        .training(train_batch_size=args.steps, minibatch_size=args.steps, num_epochs=1)
                        .env_runners(rollout_fragment_length=args.steps).build())
                try:
                    batch = algo.env_runner.sample()
                    row.update(ok=True, model=model, observation_space=str(env.observation_space),
                               sampled=int(batch.env_steps()))
                finally:
                    algo.stop()
            except Exception as e:  # noqa: BLE001 - reported per env
                failed += 1
                row.update(ok=False, error=f"{type(e).__name__}: {e}".splitlines()[0][:300])
            print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tfcluster.rl.rllib", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="RLlib PPO or DQN (TensorFlow) on a tfcluster env; a JSON line per iteration")
    t.add_argument("--algo", default="PPO", choices=["PPO", "DQN"])
    t.add_argument("--env", default="CartPole-v1")
    t.add_argument("--model", default="", choices=["", *MODELS], help="a tfcluster network as RLlib's model")
    t.add_argument("--iterations", type=int, default=4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--num_env_runners", type=int, default=0)
    t.add_argument("--greedy_episodes", type=int, default=0, help="then the greedy mean return over held-out episodes")
    c = sub.add_parser("check-envs", help="RLlib's environment checks on tfcluster envs")
    c.add_argument("envs", nargs="*", default=["CartPole-v0", "CartPole-v1", "Breakout"])
    c.add_argument("--steps", type=int, default=64, help="env steps RLlib samples from each env")
    args = p.parse_args(argv)
    return train(args) if args.command == "train" else check_envs(args)


if __name__ == "__main__":
    sys.exit(main())
