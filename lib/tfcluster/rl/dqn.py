"""Deep Q-Learning (the book's chapter 20, deep-rl-tensorflow's flags) on Ray, exported for serving.

    python jobs/train_dqn.py --env CartPole-v1 --network_header_type mlp --seed 1 --out_dir runs/dqn --model_base_path models
    python jobs/train_dqn.py --env Breakout --network_header_type nips --num_env_runners 2 --out_dir runs/breakout

Env runners act epsilon-greedily (epsilon decays linearly from `--ep_start` to `--ep_end`
over `--t_ep_end` steps after `--t_learn_start`) and send their transitions to the learner,
which keeps them in a replay memory storing each frame once. Every `--t_train_freq` env
steps the learner fits Q(s, a) to r + discount * max_a' Q_target(s', a') on a batch of
`--batch_size` (with `--double_q` the online network picks a', van Hasselt et al. 2016)
and copies the online weights into the target network every `--t_target_q_update_freq`
steps. Networks: `nips` (Mnih et al. 2013), `nature` (Mnih et al. 2015), `mlp`; `--dueling`
splits the head into value and advantage streams (Wang et al. 2016).

Defaults are the book's Atari values; `lib/tfcluster/presets/dqn_cartpole.json` holds the
CartPole ones and is picked by `--env` unless `--hparams_path` names another preset.

Read top to bottom: Config -> math -> Q-network -> policy -> train step -> algorithm -> export -> main.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Literal

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

from tfcluster import contract
from tfcluster.errors import UserError
from tfcluster.rl.algorithm import Algorithm, AlgorithmConfig, RLConfig, policy_weights_from


# ------------------------------------------------------------------------------------- config
def parse_dims(text: str) -> tuple[int, int]:
    """"80,80", "84x84" or "[84, 84]" -> (84, 84)."""
    parts = [p for p in text.replace("[", "").replace("]", "").replace("x", ",").split(",") if p.strip()]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 2 or min(dims) < 8:
        raise ValueError(f"--observation_dims must be two sizes of at least 8 like 80,80 or 84,84; got {text!r}")
    return dims  # type: ignore[return-value]


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--mlp_hidden_sizes must be positive integers like 64,64; got {text!r}")
    return sizes


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(RLConfig):
    """DQN settings: deep-rl-tensorflow's flag names, the book's Atari values as defaults."""

    env: str = "Breakout"
    """Environment: an Atari game (the book: Breakout), CartPole-v0/v1 or a gymnasium id."""
    network_header_type: Literal["nips", "nature", "mlp"] = "nips"
    """Q-network: nips (2 conv + 256, Mnih 2013; the book), nature (3 conv + 512, Mnih 2015), mlp (vector observations)."""
    mlp_hidden_sizes: str = "64,64"
    """Hidden ReLU layers of the mlp network, comma separated."""
    double_q: bool = False
    """Double DQN: the online network picks the next action, the target network values it."""
    dueling: bool = False
    """Dueling head: Q = V + A - mean(A)."""
    memory_size: int = 1_000_000
    """Replay memory, in transitions (the book: 1M; 84x84 frames stored once take 7.1 GB)."""
    batch_size: int = 32
    """Transitions per gradient step (the book: 32)."""
    discount: float = 0.99
    """Discount gamma (the book: 0.99)."""
    learning_rate: float = 0.00025
    """Learning rate (the book: 0.00025 with RMSProp decay 0.99, momentum 0, epsilon 0.01)."""
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"
    """rmsprop (the book) or adam (the CartPole preset)."""
    ep_start: float = 1.0
    """Exploration epsilon at the start (the book: 1.0)."""
    ep_end: float = 0.01
    """Exploration epsilon after the decay (the book: 0.01)."""
    t_ep_end: int = 1_000_000
    """Env steps over which epsilon decays linearly, after t_learn_start (the book: 1M)."""
    t_learn_start: int = 50_000
    """Env steps of acting before learning starts (the book: 50k)."""
    t_target_q_update_freq: int = 10_000
    """Env steps between copies of the online weights into the target network (the book: 10k)."""
    t_train_freq: int = 4
    """Env steps per gradient step (the book: 4)."""
    t_train_max: int = 50_000_000
    """Env-step budget (the book: 50M)."""
    t_test: int = 10_000
    """Evaluate the policy every this many env steps (deep-rl-tensorflow: 10k); 0: only at the end."""
    ep_test: float = 0.05
    """Epsilon while evaluating (Mnih 2015: 0.05)."""
    observation_dims: str = "80,80"
    """Atari frame size after resizing, H,W (the book: 80,80; Mnih 2015: 84,84)."""
    history_length: int = 4
    """Atari frames stacked into a state (the book: 4)."""
    n_action_repeat: int = 4
    """Atari frames each action is repeated for; the last two are max-pooled (Mnih 2015: 4)."""
    min_r: float = -1.0
    """Rewards are clipped to [min_r, max_r] (the book: -1)."""
    max_r: float = 1.0
    """Upper reward clip (the book: 1)."""
    max_random_start: int = 30
    """Up to this many no-op actions start each Atari episode (the book: 30)."""
    rollout_fragment_length: int = 0
    """Env steps per runner call; 0: t_train_freq when sampling in the learner, 100 with env runners."""
    steps_per_stats: int = 10_000
    """Env steps per iteration: a metrics.jsonl record, a stats line and a checkpoint each."""

    def __post_init__(self) -> None:
        self.check_rl()
        parse_dims(self.observation_dims)
        parse_sizes(self.mlp_hidden_sizes)
        checks = [
            (self.memory_size >= self.batch_size, f"--memory_size ({self.memory_size}) must be at least --batch_size ({self.batch_size})"),
            (self.batch_size >= 1, "--batch_size must be at least 1"),
            (0.0 <= self.discount <= 1.0, "--discount must be in [0, 1]"),
            (self.learning_rate > 0, "--learning_rate must be positive"),
            (0.0 <= self.ep_end <= self.ep_start <= 1.0, "need 0 <= --ep_end <= --ep_start <= 1"),
            (self.t_ep_end >= 1, "--t_ep_end must be at least 1"),
            (self.t_learn_start >= 0, "--t_learn_start must be 0 or more"),
            (self.t_target_q_update_freq >= 1, "--t_target_q_update_freq must be at least 1"),
            (self.t_train_freq >= 1, "--t_train_freq must be at least 1"),
            (self.t_train_max >= 1, "--t_train_max must be at least 1"),
            (self.history_length >= 1, "--history_length must be at least 1"),
            (self.n_action_repeat >= 1, "--n_action_repeat must be at least 1"),
            (self.min_r <= self.max_r, "--min_r must not exceed --max_r"),
            (self.rollout_fragment_length >= 0, "--rollout_fragment_length must be 0 or more"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @property
    def max_iterations(self) -> int:
        """Training iterations (results) the env-step budget allows."""
        return -(-self.t_train_max // self.steps_per_stats)

    @property
    def env_config(self) -> dict[str, Any]:
        """Wrapper settings (used by Atari games, ignored by CartPole)."""
        return {"observation_dims": parse_dims(self.observation_dims), "history_length": self.history_length,
                "n_action_repeat": self.n_action_repeat, "min_r": self.min_r, "max_r": self.max_r,
                "max_random_start": self.max_random_start}

    @property
    def fragment_length(self) -> int:
        return self.rollout_fragment_length or (100 if self.num_env_runners else self.t_train_freq)


# --------------------------------------------------------------------------------------- math
def linearly_decaying_epsilon(step: int, ep_start: float, ep_end: float, t_ep_end: int, t_learn_start: int) -> float:
    """ep_start until t_learn_start, then linear down to ep_end over t_ep_end steps, then ep_end."""
    frac = min(max(step - t_learn_start, 0) / t_ep_end, 1.0)
    return ep_start + frac * (ep_end - ep_start)


def target_q(rewards, terminated, discount: float, next_q_target, next_q_online=None):
    """r + discount * (1 - terminated) * Q_target(s', a'); a' = argmax Q_target (DQN) or argmax Q_online (double DQN)."""
    import tensorflow as tf

    next_q_target = tf.convert_to_tensor(next_q_target, tf.float32)
    if next_q_online is None:
        next_v = tf.reduce_max(next_q_target, axis=1)
    else:
        best = tf.argmax(next_q_online, axis=1, output_type=tf.int32)
        next_v = tf.gather(next_q_target, best, axis=1, batch_dims=1)
    not_done = 1.0 - tf.cast(terminated, tf.float32)
    return tf.cast(rewards, tf.float32) + discount * not_done * next_v


# ---------------------------------------------------------------------------------- Q-network
def build_q_network(obs_shape: tuple[int, ...], obs_dtype: str, num_actions: int, header: str,
                    hidden_sizes: tuple[int, ...] = (64, 64), dueling: bool = False, keras_module: Any = None):
    """Q(s, .) [B, A]. Conv headers scale uint8 frames [H, W, history] to [0, 1] first. `keras_module`:
    another Keras to build it with (RLlib's TF policies use `tf.keras`, Keras 2); default Keras 3."""
    if keras_module is None:
        import keras
    else:
        keras = keras_module

    x = keras.Input(obs_shape, dtype=obs_dtype, name="observation")
    h = x
    if header in ("nips", "nature"):
        if len(obs_shape) != 3:
            raise UserError(f"--network_header_type {header} needs image observations, the env gives {obs_shape}; "
                            "use --network_header_type mlp")
        h = keras.layers.Rescaling(1.0 / 255.0, name="scale")(h)
        convs = [(16, 8, 4), (32, 4, 2)] if header == "nips" else [(32, 8, 4), (64, 4, 2), (64, 3, 1)]
        for i, (filters, kernel, stride) in enumerate(convs):
            h = keras.layers.Conv2D(filters, kernel, stride, activation="relu", name=f"conv_{i}")(h)
        h = keras.layers.Flatten(name="flatten")(h)
        hidden_sizes = (256,) if header == "nips" else (512,)
    elif len(obs_shape) > 1:
        h = keras.layers.Flatten(name="flatten")(keras.layers.Rescaling(1.0 / 255.0, name="scale")(h))
    for i, units in enumerate(hidden_sizes):
        h = keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")(h)
    if dueling:
        v = keras.layers.Dense(1, name="value")(h)
        a = keras.layers.Dense(num_actions, name="advantage")(h)
        if hasattr(keras, "ops"):
            mean = keras.ops.mean(a, axis=1, keepdims=True)
        else:  # Keras 2: a TF op on its symbolic tensors
            import tensorflow as tf

            mean = tf.reduce_mean(a, axis=1, keepdims=True)
        q = v + a - mean
    else:
        q = keras.layers.Dense(num_actions, name="q")(h)
    return keras.Model(x, q, name=f"dqn_{header}")


def mlp_q_values(weights: list[np.ndarray], obs: np.ndarray, dueling: bool) -> np.ndarray:
    """The mlp Q-network in NumPy (hidden ReLU layers, then q or value+advantage), for acting."""
    n_head = 4 if dueling else 2
    h = obs.reshape(len(obs), -1)
    body = weights[:-n_head]
    for w, b in zip(body[0::2], body[1::2]):
        h = np.maximum(h @ w + b, 0.0)
    if not dueling:
        return h @ weights[-2] + weights[-1]
    v = h @ weights[-4] + weights[-3]
    a = h @ weights[-2] + weights[-1]
    return v + a - a.mean(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------- policy
@dataclasses.dataclass(frozen=True)
class NetSpec:
    header: str
    hidden_sizes: tuple[int, ...]
    dueling: bool


class QPolicy:
    """Epsilon-greedy on Q(s, .): NumPy for the mlp network on vectors, a tf.function otherwise."""

    def __init__(self, spec: NetSpec, observation_space: Any, action_space: Any):
        self.spec = spec
        self.num_actions = int(action_space.n)
        self.weights: list[np.ndarray] | None = None
        self.model = None
        if spec.header != "mlp" or len(observation_space.shape) != 1:
            import tensorflow as tf

            self.model = build_q_network(observation_space.shape, observation_space.dtype.name, self.num_actions,
                                         spec.header, spec.hidden_sizes, spec.dueling)
            self._q = tf.function(lambda o: self.model(o, training=False), reduce_retracing=True)

    def set_weights(self, weights: list[np.ndarray]) -> None:
        if self.model is not None:
            self.model.set_weights(weights)
        else:
            self.weights = [np.asarray(w) for w in weights]

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        if self.model is not None:
            return self._q(obs).numpy()
        return mlp_q_values(self.weights, np.asarray(obs, np.float32), self.spec.dueling)

    def act(self, obs: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
        explore = rng.random(len(obs)) < epsilon
        if explore.all():
            return rng.integers(self.num_actions, size=len(obs))
        greedy = self.q_values(obs).argmax(axis=1)
        return np.where(explore, rng.integers(self.num_actions, size=len(obs)), greedy)


def net_spec(cfg: Config) -> NetSpec:
    return NetSpec(cfg.network_header_type, parse_sizes(cfg.mlp_hidden_sizes), cfg.dueling)


# --------------------------------------------------------------------------------- train step
def make_optimizer(cfg: Config):
    import keras

    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(cfg.learning_rate)
    return keras.optimizers.RMSprop(cfg.learning_rate, rho=0.99, momentum=0.0, epsilon=0.01)


def make_train_step(online, target, optimizer, cfg: Config, obs_spec):
    """One gradient step on a replay batch: Huber loss (the book's TD-error clipping to [-1, 1])."""
    import tensorflow as tf

    sig = [obs_spec, tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.float32), obs_spec,
           tf.TensorSpec([None], tf.bool)]

    @tf.function(input_signature=sig)
    def train_step(obs, actions, rewards, next_obs, terminated):
        next_q_online = online(next_obs, training=False) if cfg.double_q else None
        y = tf.stop_gradient(target_q(rewards, terminated, cfg.discount, target(next_obs, training=False), next_q_online))
        with tf.GradientTape() as tape:
            q = online(obs, training=True)
            q_a = tf.gather(q, actions, axis=1, batch_dims=1)
            err = tf.abs(y - q_a)
            loss = tf.reduce_mean(tf.where(err < 1.0, 0.5 * tf.square(err), err - 0.5))
        grads = tape.gradient(loss, online.trainable_variables)
        optimizer.apply(grads, online.trainable_variables)
        return {"qf_loss": loss, "qf_mean": tf.reduce_mean(q_a), "td_error_mean": tf.reduce_mean(err)}

    return train_step


# ---------------------------------------------------------------------------------- algorithm
class DQN(Algorithm):
    """DQN as an RLlib-shaped, Ray Tune-trainable algorithm."""

    config_cls = Config

    def build_learner(self) -> None:
        import tensorflow as tf

        from tfcluster.rl import replay
        from tfcluster.rl.envs import make_env
        from tfcluster.rl.runners import EnvRunnerGroup

        cfg = self.cfg
        self.eval_explore = cfg.ep_test
        spec = net_spec(cfg)
        env = make_env(cfg.env, **cfg.env_config)
        obs_space, self.num_actions = env.observation_space, int(env.action_space.n)
        history = getattr(env, "history_length", 1)
        env.close()
        frame_shape = obs_space.shape[:-1] if history > 1 else obs_space.shape
        self.memory = None
        if cfg.is_train:  # say so before allocating (or starting runners) when it cannot fit
            replay.check_fits(cfg.memory_size, frame_shape, obs_space.dtype)
        self.online = build_q_network(obs_space.shape, obs_space.dtype.name, self.num_actions, spec.header,
                                      spec.hidden_sizes, spec.dueling)
        self.target = build_q_network(obs_space.shape, obs_space.dtype.name, self.num_actions, spec.header,
                                      spec.hidden_sizes, spec.dueling)
        self.target.set_weights(self.online.get_weights())
        self.optimizer = make_optimizer(cfg)
        self.optimizer.build(self.online.trainable_variables)
        obs_spec = tf.TensorSpec([None, *obs_space.shape], tf.as_dtype(obs_space.dtype))
        self.train_step = make_train_step(self.online, self.target, self.optimizer, cfg, obs_spec)
        self.runners = EnvRunnerGroup(cfg.env, cfg.env_config, functools.partial(QPolicy, spec), seed=cfg.seed,
                                      num_env_runners=cfg.num_env_runners if cfg.is_train else 0,
                                      num_cpus_per_env_runner=cfg.num_cpus_per_env_runner,
                                      restart_failed_env_runners=cfg.restart_failed_env_runners)
        if cfg.is_train:
            self.memory = replay.ReplayMemory(cfg.memory_size, frame_shape, obs_space.dtype, history, seed=cfg.seed)
        self.updates = 0
        self.target_syncs = 0
        self.pending_updates = 0.0
        self.last_eval = 0
        self._weights = self.online.get_weights()

    def policy_weights(self) -> list[np.ndarray]:
        return self.online.get_weights()

    def set_policy_weights(self, weights: list[np.ndarray]) -> None:
        self.online.set_weights(weights)
        self.target.set_weights(weights)

    def epsilon(self) -> float:
        c = self.cfg
        return linearly_decaying_epsilon(self.env_steps, c.ep_start, c.ep_end, c.t_ep_end, c.t_learn_start)

    def _sync_target(self) -> None:
        for t, o in zip(self.target.weights, self.online.weights):
            t.assign(o)

    def step(self) -> dict[str, Any]:
        cfg = self.cfg
        start, learner, done, evaluation = self.env_steps, {}, False, {}
        while self.env_steps - start < cfg.steps_per_stats and not done:
            for out in self.runners.next_fragments(self._weights, cfg.fragment_length, self.epsilon()):
                self.memory.add(out["fragment"])
                self.env_steps += out["num_steps"]
                solved = self.record_episodes(out["episode_returns"], out["episode_lens"])
                if self.env_steps > cfg.t_learn_start:
                    self.pending_updates += out["num_steps"] / cfg.t_train_freq
                while self.pending_updates >= 1.0:
                    learner = self.train_step(*self.memory.sample(cfg.batch_size))
                    self.pending_updates -= 1.0
                    self.updates += 1
                if self.env_steps // cfg.t_target_q_update_freq > self.target_syncs:
                    self.target_syncs = self.env_steps // cfg.t_target_q_update_freq
                    self._sync_target()
                done = done or solved or self.env_steps >= cfg.t_train_max
            self._weights = self.online.get_weights()
            if cfg.t_test and self.env_steps - self.last_eval >= cfg.t_test:
                self.last_eval = self.env_steps
                evaluation = self.evaluate_policy(cfg.test_episodes)
                done = self.record_evaluation(evaluation) or done
        return {
            **self.env_runner_results(),
            **evaluation,
            **{f"learners/default_policy/{k}": float(v) for k, v in learner.items()},
            "learners/default_policy/curr_epsilon": self.epsilon(),
            "learners/default_policy/num_module_steps_trained_lifetime": self.updates,
            "learners/default_policy/num_target_updates": self.target_syncs,
            "learners/default_policy/default_optimizer_learning_rate": cfg.learning_rate,
            "done": done,
        }

    def state_arrays(self) -> dict[str, list[np.ndarray]]:
        return {"policy": self.online.get_weights(), "target": self.target.get_weights(),
                "optimizer": [np.asarray(v.numpy()) for v in self.optimizer.variables]}

    def set_state_arrays(self, arrays: dict[str, list[np.ndarray]]) -> None:
        self.online.set_weights(arrays["policy"])
        self.target.set_weights(arrays.get("target", arrays["policy"]))
        for v, a in zip(self.optimizer.variables, arrays.get("optimizer", [])):
            v.assign(a)
        self._weights = self.online.get_weights()

    def extra_state(self) -> dict:
        return {"updates": self.updates, "target_syncs": self.target_syncs}

    def load_extra_state(self, state: dict) -> None:
        self.updates, self.target_syncs = int(state.get("updates", 0)), int(state.get("target_syncs", 0))


class DQNConfig(AlgorithmConfig):
    """`DQNConfig().environment("CartPole-v1").training(double_q=True).env_runners(num_env_runners=2).build()`

    RLlib's names work too: `.training(lr=1e-3, gamma=0.99, train_batch_size=64,
    target_network_update_freq=500, num_steps_sampled_before_learning_starts=1000,
    epsilon=[(0, 1.0), (10000, 0.02)], replay_buffer_config={"capacity": 50000})`.
    """

    config_cls = Config
    algo_cls = DQN
    RLLIB_NAMES = {**AlgorithmConfig.RLLIB_NAMES, "train_batch_size": "batch_size",
                   "target_network_update_freq": "t_target_q_update_freq",
                   "num_steps_sampled_before_learning_starts": "t_learn_start"}
    RLLIB_DEFERRED = AlgorithmConfig.RLLIB_DEFERRED | {"epsilon", "exploration_config", "evaluation_interval",
                                                       "replay_buffer_config"}

    def resolve_rllib(self, values: dict[str, Any]) -> dict[str, Any]:
        out = super().resolve_rllib(values)
        r = self._rllib
        learn_start = int(values["t_learn_start"])
        if "epsilon" in r:  # RLlib: [(env_step, epsilon), ...], linear in between; or one number
            schedule = r["epsilon"]
            if isinstance(schedule, (int, float)):
                out.update(ep_start=float(schedule), ep_end=float(schedule))
            else:
                (t0, e0), (t1, e1) = schedule[0], schedule[-1]
                out.update(ep_start=float(e0), ep_end=float(e1), t_ep_end=max(1, int(t1) - max(int(t0), learn_start)))
        ex = r.get("exploration_config") or {}
        for key, field in (("initial_epsilon", "ep_start"), ("final_epsilon", "ep_end"),
                           ("epsilon_timesteps", "t_ep_end")):
            if key in ex:
                out[field] = ex[key]
        if "evaluation_interval" in r:  # RLlib: training iterations between evaluations
            out["t_test"] = int(r["evaluation_interval"] or 0) * int(values["steps_per_stats"])
        capacity = (r.get("replay_buffer_config") or {}).get("capacity")
        if capacity:
            out["memory_size"] = int(capacity)
        return out




# ------------------------------------------------------------------------------------- export
def export(weights: list[np.ndarray], cfg: Config, model_base_path: str) -> str:
    """SavedModel `dqn`: observation float32 [batch, *obs] -> action int64 [batch], q_values float32 [batch, A].

    Atari frames are sent as float32 pixel values 0..255 (the contract's dtype); the
    network casts them back to uint8 before its own scaling, as in training."""
    import tensorflow as tf

    from tfcluster import export as export_mod
    from tfcluster.rl.envs import make_env

    env = make_env(cfg.env, **cfg.env_config)
    obs_space, num_actions = env.observation_space, int(env.action_space.n)
    env.close()
    spec = net_spec(cfg)
    model = build_q_network(obs_space.shape, obs_space.dtype.name, num_actions, spec.header, spec.hidden_sizes, spec.dueling)
    model.set_weights(weights)
    module = tf.Module()  # save_version tracks the variables `serve` reads, not the Keras model
    shape = list(obs_space.shape)
    in_dtype = tf.as_dtype(obs_space.dtype)

    obs_key = contract.DQN.inputs[0].key
    action_key, q_key = (t.key for t in contract.DQN.outputs)

    @tf.function(input_signature=[tf.TensorSpec([None] * (1 + len(shape)), tf.float32, name=obs_key)])
    def serve(observation):
        observation = export_mod.require_shape(
            observation, shape, f"observation must have shape [batch, {', '.join(map(str, shape))}] for {cfg.env}")
        x = observation if in_dtype == tf.float32 else tf.cast(tf.clip_by_value(tf.round(observation), 0, 255), in_dtype)
        q = model(x, training=False)
        return {action_key: tf.argmax(q, axis=1, output_type=tf.int64), q_key: tf.cast(q, tf.float32)}

    module.serve = serve
    warm = [{obs_key: np.zeros((1, *shape), np.float32)}]
    return export_mod.save_version(module, {contract.DQN.signature: serve.get_concrete_function()},
                                   model_base_path, contract.DQN, warmup=warm)


def export_checkpoint(cfg: Config, which: str = "best") -> str:
    """Export the best (or last) checkpoint of `cfg.out_dir` to `cfg.model_base_path`."""
    return export(policy_weights_from(cfg.out_dir, which), cfg, cfg.model_base_path)
