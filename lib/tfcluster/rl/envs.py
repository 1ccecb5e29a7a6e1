"""Environments: CartPole and Atari (the book's preprocessing), gymnasium API, registered with RLlib.

    env = make_env("CartPole-v1")
    env = make_env("Breakout", observation_dims=(84, 84), history_length=4, n_action_repeat=4)
    tfcluster.rl.register_envs()   # RLlib: AlgorithmConfig().environment("tfcluster/Breakout")

Atari preprocessing (deep-rl-tensorflow / the Nature DQN): each agent step repeats the
action `n_action_repeat` times, takes the pixel-wise max of the last two grayscale
screens (Atari sprites flicker), resizes it to `observation_dims`, and stacks the last
`history_length` of those frames (channels last, uint8). Rewards are clipped to
[`min_r`, `max_r`]; each episode starts with 0..`max_random_start` no-op actions.
At reset the stack holds the first frame repeated (deep-rl-tensorflow's History).
"""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
import numpy as np

from tfcluster.errors import UserError

CARTPOLE = ("CartPole-v0", "CartPole-v1")
PREFIX = "tfcluster/"


def _snake(name: str) -> str:
    """"SpaceInvaders" -> "space_invaders" (ALE's ROM ids); "ALE/Breakout-v5" -> "breakout"."""
    name = name.split("/")[-1]
    name = re.sub(r"(NoFrameskip)?-v\d+$", "", name)
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def atari_games() -> list[str]:
    """ROM ids shipped with ale-py (breakout, pong, ...)."""
    from ale_py import roms

    return list(roms.get_all_rom_ids())


def kind(name: str) -> str:
    """"cartpole", "atari" or "gym" for an environment name; a one-line error when unknown."""
    name = name.removeprefix(PREFIX)
    if name in CARTPOLE:
        return "cartpole"
    if _snake(name) in atari_games():
        return "atari"
    if name in gym.registry:
        return "gym"
    raise UserError(
        f"unknown environment {name!r}; use CartPole-v0, CartPole-v1, an Atari game name "
        f"(Breakout, Pong, SpaceInvaders, ...) or a gymnasium id with discrete actions"
    )


class AtariEnv(gym.Env):
    """An ALE game with the book's preprocessing; observations uint8 [H, W, history_length]."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        game: str = "Breakout",
        *,
        observation_dims: tuple[int, int] = (80, 80),
        history_length: int = 4,
        n_action_repeat: int = 4,
        min_r: float = -1.0,
        max_r: float = 1.0,
        max_random_start: int = 30,
        render_mode: str | None = "rgb_array",
    ):
        import ale_py

        gym.register_envs(ale_py)
        self.game = _snake(game)
        self.observation_dims = tuple(int(d) for d in observation_dims)
        self.history_length = int(history_length)
        self.n_action_repeat = int(n_action_repeat)
        self.min_r, self.max_r = float(min_r), float(max_r)
        self.max_random_start = int(max_random_start)
        self.render_mode = render_mode
        self.ale_env = ale_py.AtariEnv(
            game=self.game, obs_type="grayscale", frameskip=1, repeat_action_probability=0.0,
            render_mode="rgb_array",
        )
        self.action_space = self.ale_env.action_space
        h, w = self.observation_dims
        self.observation_space = gym.spaces.Box(0, 255, (h, w, self.history_length), np.uint8)
        self._stack = np.zeros((h, w, self.history_length), np.uint8)

    def _frame(self, a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        from PIL import Image

        screen = a if b is None else np.maximum(a, b)
        h, w = self.observation_dims
        return np.asarray(Image.fromarray(screen).resize((w, h), Image.BILINEAR), np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        screen, info = self.ale_env.reset(seed=None if seed is None else int(seed))
        prev = None
        for _ in range(int(self.np_random.integers(0, self.max_random_start + 1))):
            prev = screen
            screen, _, term, trunc, info = self.ale_env.step(0)
            if term or trunc:
                screen, info = self.ale_env.reset()
                prev = None
        self._stack[:] = self._frame(screen, prev)[..., None]
        return self._stack.copy(), info

    def step(self, action):
        total, term, trunc, info = 0.0, False, False, {}
        screens = []
        for _ in range(self.n_action_repeat):
            screen, r, term, trunc, info = self.ale_env.step(int(action))
            total += float(r)
            screens = [*screens[-1:], screen]
            if term or trunc:
                break
        frame = self._frame(screens[-1], screens[-2] if len(screens) > 1 else None)
        self._stack = np.concatenate([self._stack[..., 1:], frame[..., None]], axis=-1)
        info = {**info, "raw_reward": total}
        return self._stack.copy(), float(np.clip(total, self.min_r, self.max_r)), bool(term), bool(trunc), info

    def render(self):
        return self.ale_env.render()

    def close(self):
        self.ale_env.close()


def cartpole_frame(state: np.ndarray, size: tuple[int, int] = (300, 200)) -> np.ndarray:
    """An RGB picture of a CartPole state (x, x_dot, theta, theta_dot), drawn with Pillow (no pygame)."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    scale = w / 4.8  # the track is x in [-2.4, 2.4]
    cx, cy = w / 2 + float(state[0]) * scale, h * 0.75
    d.line([(0, cy + 10), (w, cy + 10)], fill=(0, 0, 0))
    d.rectangle([cx - 25, cy - 10, cx + 25, cy + 10], fill=(40, 40, 40))
    length = 1.0 * scale
    tip = (cx + length * np.sin(float(state[2])), cy - length * np.cos(float(state[2])))
    d.line([(cx, cy), tip], fill=(200, 120, 60), width=8)
    return np.asarray(img)


class CartPoleEnv(gym.Env):
    """Gymnasium's CartPole (v0: 200 steps, solved at 195; v1: 500 steps, 475), rendered with Pillow."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, version: str = "CartPole-v1", render_mode: str | None = "rgb_array"):
        self.inner = gym.make(version)
        self.observation_space = self.inner.observation_space
        self.action_space = self.inner.action_space
        self.render_mode = render_mode
        self.history_length = 1
        self._state = np.zeros(4, np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, info = self.inner.reset(seed=seed, options=options)
        self._state = obs
        return obs, info

    def step(self, action):
        obs, r, term, trunc, info = self.inner.step(action)
        self._state = obs
        return obs, float(r), bool(term), bool(trunc), info

    def render(self):
        return cartpole_frame(self._state)

    def close(self):
        self.inner.close()


def make_env(name: str, **config: Any) -> gym.Env:
    """The environment `name` (CartPole-v0/v1, an Atari game, or a gymnasium id) with `config`."""
    k = kind(name)
    name = name.removeprefix(PREFIX)
    if k == "cartpole":
        return CartPoleEnv(name)
    if k == "atari":
        allowed = ("observation_dims", "history_length", "n_action_repeat", "min_r", "max_r", "max_random_start")
        return AtariEnv(name, **{key: v for key, v in config.items() if key in allowed})
    env = gym.make(name)
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise UserError(f"{name} has {env.action_space}; DQN and policy gradient need discrete actions")
    if not hasattr(env.unwrapped, "history_length"):
        env.unwrapped.history_length = 1  # type: ignore[attr-defined]
    return env


def history_length(env: gym.Env) -> int:
    return int(getattr(env, "history_length", getattr(env.unwrapped, "history_length", 1)))


def env_names() -> list[str]:
    """tfcluster/CartPole-v0, tfcluster/CartPole-v1 and tfcluster/<Game> for every ALE game: the names
    `tfcluster.rl.register_envs()` registers with RLlib (`tfcluster.rl.rllib.register`)."""
    names = [f"{PREFIX}{v}" for v in CARTPOLE]
    for rom in atari_games():
        names.append(PREFIX + "".join(p.capitalize() for p in rom.split("_")))
    return names
