"""Replay memory: each frame stored once, states rebuilt correctly across episodes, fragments and wrap-around."""

import gymnasium as gym
import numpy as np
import pytest

from tfcluster.errors import UserError
from tfcluster.rl import replay
from tfcluster.rl.runners import EnvRunner

H = 4  # history length


class CounterEnv(gym.Env):
    """Frames carry a global frame id (1, 2, 3, ...): states can be checked against their ids."""

    history_length = H

    def __init__(self):
        self.observation_space = gym.spaces.Box(0, 255, (2, 2, H), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self.next_id, self.t, self.lengths = 1, 0, [3, 7, 5, 2, 9]
        self.episode = 0

    def _frame(self):
        f = np.full((2, 2), self.next_id % 256, np.uint8)
        self.next_id += 1
        return f

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, f = 0, self._frame()
        self.stack = np.repeat(f[..., None], H, axis=-1)
        return self.stack.copy(), {}

    def step(self, action):
        self.t += 1
        self.stack = np.concatenate([self.stack[..., 1:], self._frame()[..., None]], axis=-1)
        term = self.t >= self.lengths[self.episode % len(self.lengths)]
        if term:
            self.episode += 1
        return self.stack.copy(), float(self.t), term, False, {}


gym.register("tfcluster-test/Counter-v0", entry_point=CounterEnv, disable_env_checker=True)


class ConstPolicy:
    def set_weights(self, w):
        pass

    def act(self, obs, explore, rng):
        return np.zeros(len(obs), int)


def runner(seed=0):
    return EnvRunner("tfcluster-test/Counter-v0", {}, lambda o, a: ConstPolicy(), seed)


def check_batch(s, a, r, s2, done):
    """A state's frames are consecutive ids ending at its newest frame (the first repeated at an
    episode start); the next state is the state shifted by one new frame; rewards are step counts."""
    for i in range(len(s)):
        ids = s[i, 0, 0].astype(int)
        nxt = s2[i, 0, 0].astype(int)
        np.testing.assert_array_equal(nxt[:-1], ids[1:])
        assert nxt[-1] == ids[-1] + 1
        d = np.diff(ids)
        assert set(d) <= {0, 1} and (d == 0).sum() == (ids == ids[0]).sum() - 1  # repeats only at the start
        steps_in = int((d == 1).sum())  # the reward is the step count t + 1 of the newest frame
        assert r[i] == steps_in + 1 if steps_in < H - 1 else r[i] >= H
        if done[i]:
            assert r[i] in (3, 7, 5, 2, 9)


def test_frames_are_stored_once():
    mem = replay.ReplayMemory(1000, (84, 84), np.uint8, H)
    assert mem.frames.nbytes == 1000 * 84 * 84
    assert mem.nbytes == replay.memory_bytes(1000, (84, 84))
    gb = replay.memory_bytes(1_000_000, (84, 84)) / 1e9
    assert 7.0 < gb < 7.1  # 1M Atari transitions in about 7 GB (not 4x or 8x that)


def test_states_rebuilt_across_episodes_and_fragments():
    mem = replay.ReplayMemory(500, (2, 2), np.uint8, H, seed=0)
    r1 = runner()
    for n in (4, 1, 6, 10, 3):  # fragments cut mid-episode, across episode ends
        mem.add(r1.sample_steps(None, n, 0.0)["fragment"])
    check_batch(*mem.sample(256))


def test_interleaved_runners_do_not_mix_histories():
    mem = replay.ReplayMemory(400, (2, 2), np.uint8, H, seed=1)
    a, b = runner(0), runner(1)
    b.env.unwrapped.next_id = 200  # runner b's ids never continue runner a's
    for _ in range(8):
        mem.add(a.sample_steps(None, 3, 0.0)["fragment"])
        mem.add(b.sample_steps(None, 2, 0.0)["fragment"])
    check_batch(*mem.sample(256))


def test_wraparound_only_samples_complete_histories():
    mem = replay.ReplayMemory(40, (2, 2), np.uint8, H, seed=2)
    r1 = runner()
    for _ in range(30):
        mem.add(r1.sample_steps(None, 3, 0.0)["fragment"])
    assert mem.total > mem.capacity and len(mem) == 40
    check_batch(*mem.sample(512))
    newest = mem.frames[(mem.total - 1) % mem.capacity, 0, 0]
    s, *_ = mem.sample(512)
    assert s.max() <= newest and s.min() >= newest - 60  # nothing older than the buffer


def test_vector_observations_history_one():
    mem = replay.ReplayMemory(100, (4,), np.float32, 1)
    r1 = EnvRunner("CartPole-v1", {}, lambda o, a: ConstPolicy(), 0)
    mem.add(r1.sample_steps(None, 50, 0.0)["fragment"])
    s, a, r, s2, done = mem.sample(32)
    assert s.shape == (32, 4) and s2.shape == (32, 4) and s.dtype == np.float32
    # pushing left forever: the pole angle's velocity keeps its sign across non-terminal steps
    ok = ~done
    np.testing.assert_allclose(s2[ok, 0], s[ok, 0] + 0.02 * s[ok, 1], rtol=1e-4, atol=1e-5)


def test_memory_beyond_available_is_one_line_before_allocating():
    with pytest.raises(UserError, match=r"--memory_size 1000000 needs 7\.07 GB.*only 1\.00 GB.*lower --memory_size"):
        replay.check_fits(1_000_000, (84, 84), np.uint8, available=10**9)
    assert replay.check_fits(1000, (84, 84), np.uint8, available=10**9) == replay.memory_bytes(1000, (84, 84))
