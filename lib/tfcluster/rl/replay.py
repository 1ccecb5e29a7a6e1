"""Replay memory that stores each frame once (deep-rl-tensorflow / dopamine's circular buffer).

An Atari state is the last `history_length` (4) frames. Storing (state, next_state) per
transition would keep every frame 8 times; this memory keeps each frame once and
rebuilds states from neighbouring entries when it samples. 1M transitions of 84x84
frames take 7.06 GB (80x80: 6.4 GB) plus 11 bytes per entry for the rest.

Entries arrive in *fragments* from env runners (see `runners.py`). A fragment is a run of
consecutive frames of one runner's stream, each with:
  * `frames`     the newest frame of the observation (uint8 [H, W], or the whole vector
                 for history_length 1),
  * `actions`, `rewards`, `terminated`: the step taken from that observation,
  * `valid`      True when the entry has an action and the next entry is its next
                 observation (false for the last frame of an episode or fragment and for
                 context frames),
  * `hist`       how many earlier frames of the same episode precede it contiguously
                 (capped at history_length - 1); at an episode start the stack repeats the
                 first frame, as the env wrapper does.
A fragment that continues an episode starts with up to history_length - 1 context frames,
so states never reach across fragments of different runners written in between.
"""

from __future__ import annotations

import os

import numpy as np

from tfcluster.errors import UserError

ENTRY_OVERHEAD = 4 + 4 + 1 + 1 + 1  # action int32, reward float32, terminated, valid, hist


def memory_bytes(capacity: int, frame_shape: tuple[int, ...], dtype=np.uint8) -> int:
    """Bytes a memory of `capacity` entries takes (frames once each, plus per-entry fields)."""
    return int(capacity) * (int(np.prod(frame_shape)) * np.dtype(dtype).itemsize + ENTRY_OVERHEAD)


def available_memory() -> int:
    """Bytes this process may still allocate: MemAvailable, capped by a cgroup limit if any."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                raw = f.read().strip()
            if raw != "max" and int(raw) < (1 << 60):
                used_path = os.path.join(os.path.dirname(path), "memory.current" if path.endswith(".max") else "memory.usage_in_bytes")
                with open(used_path) as f:
                    left = int(raw) - int(f.read().strip())
                avail = left if avail is None else min(avail, left)
        except (OSError, ValueError):
            continue
    return avail if avail is not None else (1 << 62)


def check_fits(capacity: int, frame_shape: tuple[int, ...], dtype=np.uint8, available: int | None = None) -> int:
    """Raise a one-line UserError, before allocating, when the memory would not fit in RAM."""
    need = memory_bytes(capacity, frame_shape, dtype)
    have = available_memory() if available is None else available
    if need > have:
        shape = "x".join(map(str, frame_shape))
        raise UserError(
            f"--memory_size {capacity} needs {need / 1e9:.2f} GB of replay memory ({shape} {np.dtype(dtype).name} frames), "
            f"only {have / 1e9:.2f} GB are available; lower --memory_size"
        )
    return need


class ReplayMemory:
    """Circular buffer of frames; `sample` returns (states, actions, rewards, next_states, terminated)."""

    def __init__(self, capacity: int, frame_shape: tuple[int, ...], dtype=np.uint8, history_length: int = 4, seed: int = 0):
        if capacity < 2:
            raise ValueError(f"--memory_size must be at least 2, got {capacity}")
        self.capacity = int(capacity)
        self.frame_shape = tuple(frame_shape)
        self.history_length = int(history_length)
        self.frames = np.zeros((capacity, *frame_shape), dtype)
        self.actions = np.zeros(capacity, np.int32)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, bool)
        self.valid = np.zeros(capacity, bool)
        self.hist = np.zeros(capacity, np.uint8)
        self.total = 0  # entries ever added; the newest is at (total - 1) % capacity
        self._ready = False  # a complete transition has been stored (sample() checks once)
        self.rng = np.random.default_rng(seed)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.frames, self.actions, self.rewards, self.terminated, self.valid, self.hist))

    def __len__(self) -> int:
        return min(self.total, self.capacity)

    def add(self, fragment: dict[str, np.ndarray]) -> None:
        """Append a fragment (see the module docstring); it is written as one block."""
        n = len(fragment["frames"])
        if n > self.capacity:
            raise ValueError(f"a fragment of {n} entries does not fit a memory of {self.capacity}")
        idx = (self.total + np.arange(n)) % self.capacity
        self.frames[idx] = fragment["frames"]
        self.actions[idx] = fragment["actions"]
        self.rewards[idx] = fragment["rewards"]
        self.terminated[idx] = fragment["terminated"]
        self.valid[idx] = fragment["valid"]
        self.hist[idx] = np.minimum(fragment["hist"], self.history_length - 1)
        self.total += n

    def _sampleable(self, logical: np.ndarray) -> np.ndarray:
        """Entries whose action is known, whose next frame follows, and whose history is still stored."""
        phys = logical % self.capacity
        oldest = self.total - len(self)
        return self.valid[phys] & (logical - self.hist[phys] >= oldest) & (logical + 1 < self.total)

    def num_sampleable(self) -> int:
        logical = np.arange(self.total - len(self), self.total)
        return int(self._sampleable(logical).sum())

    def _states(self, logical: np.ndarray) -> np.ndarray:
        h = self.history_length
        phys = logical % self.capacity
        if h == 1:
            return self.frames[phys]
        back = np.arange(h - 1, -1, -1)  # oldest frame first
        offs = np.minimum(back[None, :], self.hist[phys][:, None].astype(np.int64))
        stack = self.frames[(logical[:, None] - offs) % self.capacity]  # [B, h, H, W]
        return np.moveaxis(stack, 1, -1)  # [B, H, W, h], channels last like the env

    def sample(self, batch_size: int) -> tuple[np.ndarray, ...]:
        """A uniform batch of valid transitions."""
        # Once one complete transition is stored there always is one (the memory only adds and
        # overwrites whole fragments); scanning the whole memory at every step cost O(capacity).
        if not self._ready:
            if self.num_sampleable() == 0:
                raise ValueError("the replay memory holds no complete transition yet")
            self._ready = True
        chosen: list[np.ndarray] = []
        need = batch_size
        while need > 0:
            cand = self.rng.integers(self.total - len(self), self.total, size=2 * need + 8)
            ok = cand[self._sampleable(cand)][:need]
            chosen.append(ok)
            need -= len(ok)
        logical = np.concatenate(chosen)
        phys = logical % self.capacity
        return (
            self._states(logical),
            self.actions[phys].copy(),
            self.rewards[phys].copy(),
            self._states(logical + 1),
            self.terminated[phys].copy(),
        )
