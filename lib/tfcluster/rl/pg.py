"""REINFORCE policy gradient (the book's chapter 21) on Ray, exported for serving.

    python jobs/train_pg.py --env CartPole-v0 --seed 1 --out_dir runs/pg --model_base_path models

The book's network: 4 inputs -> 10 ReLU units without bias -> a sigmoid giving the
probability of action 1. Each update plays `--batch_episodes` (5) episodes with the
current policy, discounts every episode's rewards (gamma 0.99), normalizes the returns
over the whole batch, sums the gradients of -log pi(a|s) * return over all steps and
applies them with Adam (0.01). Training stops when the mean of the last 100 episodes
reaches `--solve_score` (195, CartPole-v0's "solved") or after `--total_episodes` (10,000).
`--head softmax` (or any env with more than two actions) uses a softmax over the actions.

Read top to bottom: Config -> math -> policy network -> train step -> algorithm -> export -> main.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Literal

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

from tfcluster import contract
from tfcluster.rl.algorithm import Algorithm, AlgorithmConfig, RLConfig, policy_weights_from


# ------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(RLConfig):
    """REINFORCE settings; defaults are the book's (chapter 21) unless said otherwise."""

    env: str = "CartPole-v0"
    """Environment with discrete actions (the book: CartPole-v0)."""
    hidden_units: int = 10
    """ReLU units of the hidden layer, which has no bias (the book: 10)."""
    head: Literal["auto", "sigmoid", "softmax"] = "auto"
    """Output: sigmoid = P(action 1) for two actions (the book), softmax for any number; auto picks."""
    discount: float = 0.99
    """Reward discount gamma (the book: 0.99)."""
    batch_episodes: int = 5
    """Episodes whose gradients are summed into one update (the book: 5)."""
    learning_rate: float = 0.01
    """Adam learning rate (the book: 0.01)."""
    total_episodes: int = 10_000
    """Episode budget (the book: 10,000 iterations at most)."""
    solve_score: float = 0.0
    """Stop once the mean return of the last 100 episodes reaches this; 0: the env's threshold (CartPole-v0: 195, the book's goal)."""
    steps_per_stats: int = 10
    """Updates per iteration: a metrics.jsonl record, a stats line and a checkpoint each (10 updates = 50 episodes)."""

    def __post_init__(self) -> None:
        self.check_rl()
        if self.hidden_units < 1:
            raise ValueError(f"--hidden_units must be at least 1, got {self.hidden_units}")
        if not 0.0 <= self.discount <= 1.0:
            raise ValueError(f"--discount must be in [0, 1], got {self.discount}")
        if self.batch_episodes < 1:
            raise ValueError(f"--batch_episodes must be at least 1, got {self.batch_episodes}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.total_episodes < self.batch_episodes:
            raise ValueError("--total_episodes must be at least --batch_episodes")

    @property
    def max_iterations(self) -> int:
        """Training iterations (results) the episode budget allows."""
        return -(-self.total_episodes // (self.batch_episodes * self.steps_per_stats))


# --------------------------------------------------------------------------------------- math
def discounted_returns(rewards: np.ndarray, discount: float) -> np.ndarray:
    """G_t = r_t + discount * G_{t+1}, for one episode."""
    out = np.zeros(len(rewards), np.float32)
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = float(rewards[t]) + discount * acc
        out[t] = acc
    return out


def normalize(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """(x - mean) / std; all zeros when x is constant."""
    x = np.asarray(x, np.float32)
    std = x.std()
    return (x - x.mean()) / std if std > eps else np.zeros_like(x)


def discount_and_normalize(episode_rewards: list[np.ndarray], discount: float) -> np.ndarray:
    """Each episode's discounted returns, normalized over the whole batch (the book), concatenated."""
    return normalize(np.concatenate([discounted_returns(r, discount) for r in episode_rewards]))


# ------------------------------------------------------------------------------------- policy
def resolve_head(head: str, num_actions: int) -> str:
    if head == "auto":
        return "sigmoid" if num_actions == 2 else "softmax"
    if head == "sigmoid" and num_actions != 2:
        from tfcluster.errors import UserError

        raise UserError(f"--head sigmoid needs two actions, the env has {num_actions}; use --head softmax")
    return head


def build_model(obs_dim: int, num_actions: int, hidden_units: int, head: str, keras_module: Any = None):
    """The book's network; outputs logits (1 for the sigmoid head, num_actions for softmax). `keras_module`:
    another Keras to build it with (RLlib's TF policies use `tf.keras`, Keras 2); default Keras 3."""
    if keras_module is None:
        import keras
    else:
        keras = keras_module

    x = keras.Input((obs_dim,), name="observation")
    h = keras.layers.Dense(hidden_units, activation="relu", use_bias=False,
                           kernel_initializer="he_normal", name="hidden")(x)
    logits = keras.layers.Dense(1 if head == "sigmoid" else num_actions, name="logits")(h)
    return keras.Model(x, logits, name="pg_policy")


def probabilities(weights: list[np.ndarray], obs: np.ndarray, head: str) -> np.ndarray:
    """pi(.|obs) [B, A] from the network weights in NumPy (a CartPole step costs microseconds)."""
    w_hidden, w_out, b_out = weights
    logits = np.maximum(obs @ w_hidden, 0.0) @ w_out + b_out
    if head == "sigmoid":
        p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class Policy:
    """Samples a ~ pi(.|obs) (explore > 0) or takes the most likely action (explore == 0)."""

    def __init__(self, head: str, observation_space: Any, action_space: Any):
        self.head = resolve_head(head, int(action_space.n))
        self.weights: list[np.ndarray] | None = None

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.weights = [np.asarray(w, np.float64) for w in weights]

    def act(self, obs: np.ndarray, explore: float, rng: np.random.Generator) -> np.ndarray:
        p = probabilities(self.weights, np.asarray(obs, np.float64), self.head)
        if explore <= 0:
            return p.argmax(axis=1)
        u = rng.random((len(p), 1))
        return (u > np.cumsum(p, axis=1)[:, :-1]).sum(axis=1)


def policy_fn(head: str):
    return functools.partial(Policy, head)


# --------------------------------------------------------------------------------- train step
def log_prob(logits, actions, head: str):
    """log pi(a|s) from logits (sigmoid: one logit for action 1; softmax: one per action)."""
    import tensorflow as tf

    if head == "sigmoid":
        z = logits[:, 0]
        a = tf.cast(actions, tf.float32)
        return a * tf.math.log_sigmoid(z) + (1.0 - a) * tf.math.log_sigmoid(-z)
    return -tf.nn.sparse_softmax_cross_entropy_with_logits(labels=actions, logits=logits)


def make_train_step(model, optimizer, head: str, obs_dim: int):
    """One update: gradients of -sum_t log pi(a_t|s_t) * G_t over the batch, applied by Adam."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, obs_dim], tf.float32), tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None], tf.float32)], reduce_retracing=True)
    def train_step(obs, actions, advantages):
        with tf.GradientTape() as tape:
            logits = model(obs, training=True)
            logp = log_prob(logits, actions, head)
            loss = -tf.reduce_sum(logp * advantages)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        entropy = -tf.reduce_mean(logp)
        return {"policy_loss": loss, "mean_neg_logp": entropy}

    return train_step


# ---------------------------------------------------------------------------------- algorithm
class PG(Algorithm):
    """REINFORCE as an RLlib-shaped, Ray Tune-trainable algorithm."""

    config_cls = Config
    eval_explore = 0.0  # evaluate the most likely action, as served

    def build_learner(self) -> None:
        import keras

        from tfcluster.rl.runners import EnvRunnerGroup

        cfg = self.cfg
        self.runners = EnvRunnerGroup(cfg.env, {}, policy_fn(cfg.head), seed=cfg.seed,
                                      num_env_runners=cfg.num_env_runners if cfg.is_train else 0,
                                      num_cpus_per_env_runner=cfg.num_cpus_per_env_runner,
                                      restart_failed_env_runners=cfg.restart_failed_env_runners)
        env = self.runners.local.env
        self.obs_dim = int(np.prod(env.observation_space.shape))
        self.num_actions = int(env.action_space.n)
        self.head = resolve_head(cfg.head, self.num_actions)
        self.model = build_model(self.obs_dim, self.num_actions, cfg.hidden_units, self.head)
        self.optimizer = keras.optimizers.Adam(cfg.learning_rate)
        self.optimizer.build(self.model.trainable_variables)
        self.train_step = make_train_step(self.model, self.optimizer, self.head, self.obs_dim)
        self.updates = 0

    def policy_weights(self) -> list[np.ndarray]:
        return self.model.get_weights()

    def set_policy_weights(self, weights: list[np.ndarray]) -> None:
        self.model.set_weights(weights)

    def step(self) -> dict[str, Any]:
        cfg = self.cfg
        learner: dict[str, float] = {}
        done = False
        for _ in range(cfg.steps_per_stats):
            episodes = self.runners.sample_episodes(self.policy_weights(), cfg.batch_episodes)
            self.env_steps += sum(len(e["rewards"]) for e in episodes)
            solved = self.record_episodes([e["return"] for e in episodes], [len(e["rewards"]) for e in episodes])
            adv = discount_and_normalize([e["rewards"] for e in episodes], cfg.discount)
            obs = np.concatenate([e["obs"].reshape(len(e["obs"]), -1) for e in episodes]).astype(np.float32)
            acts = np.concatenate([e["actions"] for e in episodes]).astype(np.int32)
            out = self.train_step(obs, acts, adv)
            learner = {k: float(v) for k, v in out.items()}
            self.updates += 1
            done = solved or self.num_episodes >= cfg.total_episodes
            if done:
                break
        return {
            **self.env_runner_results(),
            **{f"learners/default_policy/{k}": v for k, v in learner.items()},
            "learners/default_policy/num_module_steps_trained_lifetime": self.updates,
            "learners/default_policy/default_optimizer_learning_rate": cfg.learning_rate,
            "done": done,
        }

    def state_arrays(self) -> dict[str, list[np.ndarray]]:
        return {"policy": self.model.get_weights(), "optimizer": [np.asarray(v.numpy()) for v in self.optimizer.variables]}

    def set_state_arrays(self, arrays: dict[str, list[np.ndarray]]) -> None:
        self.model.set_weights(arrays["policy"])
        for v, a in zip(self.optimizer.variables, arrays.get("optimizer", [])):
            v.assign(a)

    def extra_state(self) -> dict:
        return {"updates": self.updates}

    def load_extra_state(self, state: dict) -> None:
        self.updates = int(state.get("updates", 0))


class PGConfig(AlgorithmConfig):
    """`PGConfig().environment("CartPole-v0").training(batch_episodes=5).env_runners(num_env_runners=2).build()`"""

    config_cls = Config
    algo_cls = PG
    RLLIB_REFUSED = {"train_batch_size": "REINFORCE updates on whole episodes; set batch_episodes",
                     "evaluation_interval": "PG evaluates once, at the end (evaluation_duration episodes)"}




# ------------------------------------------------------------------------------------- export
def export(weights: list[np.ndarray], cfg: Config, model_base_path: str) -> str:
    """SavedModel `pg`: observation float32 [batch, obs] -> action int64 [batch], probabilities [batch, A]."""
    import tensorflow as tf

    from tfcluster import export as export_mod
    from tfcluster.rl.envs import make_env

    env = make_env(cfg.env)
    obs_dim, num_actions = int(np.prod(env.observation_space.shape)), int(env.action_space.n)
    head = resolve_head(cfg.head, num_actions)
    model = build_model(obs_dim, num_actions, cfg.hidden_units, head)
    model.set_weights(weights)
    module = tf.Module()  # save_version tracks the variables `serve` reads, not the Keras model

    obs_key = contract.PG.inputs[0].key
    action_key, probs_key = (t.key for t in contract.PG.outputs)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name=obs_key)])
    def serve(observation):
        observation = export_mod.require_shape(
            observation, [obs_dim], f"observation must have shape [batch, {obs_dim}] ({cfg.env} state)")
        logits = model(observation, training=False)
        if head == "sigmoid":
            p1 = tf.sigmoid(logits[:, 0])
            probs = tf.stack([1.0 - p1, p1], axis=1)
        else:
            probs = tf.nn.softmax(logits)
        return {action_key: tf.argmax(probs, axis=1, output_type=tf.int64), probs_key: probs}

    module.serve = serve
    warm = [{obs_key: np.zeros((1, obs_dim), np.float32)}]
    return export_mod.save_version(module, {contract.PG.signature: serve.get_concrete_function()},
                                   model_base_path, contract.PG, warmup=warm)


def export_checkpoint(cfg: Config, which: str = "best") -> str:
    """Export the best (or last) checkpoint of `cfg.out_dir` to `cfg.model_base_path`."""
    return export(policy_weights_from(cfg.out_dir, which), cfg, cfg.model_base_path)
