"""Metrics: one format for every workload.

`out_dir/metrics.jsonl` holds one JSON object per report: `step`, `time` (seconds since
the epoch) and metrics with fixed prefixes (`train/`, `eval/`, `perf/`, `env_runners/`,
`learners/`). The same values go to TensorBoard event files in `out_dir/tb` and to a
console line, so a person watching and a program reading see the same numbers.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Iterable

METRICS_FILE = "metrics.jsonl"


def read_metrics(out_dir: str) -> list[dict[str, Any]]:
    """All records of `out_dir/metrics.jsonl` (empty list when there is none)."""
    import tensorflow as tf

    path = os.path.join(out_dir, METRICS_FILE)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if abs(v) >= 1000:
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


def console_line(step: int, metrics: dict[str, Any]) -> str:
    return f"  step {step:>7d} " + " ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())


class MetricsWriter:
    """Appends to metrics.jsonl, writes TensorBoard scalars and prints a line; chief only.

    Non-chief workers get a writer with `enabled=False`, whose calls do nothing, so
    training code never branches on the worker rank.
    """

    def __init__(self, out_dir: str, *, enabled: bool = True, tensorboard: bool = True, stream=None):
        self.out_dir = out_dir
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self._tb = None
        if not enabled:
            return
        import tensorflow as tf

        tf.io.gfile.makedirs(out_dir)
        self._path = os.path.join(out_dir, METRICS_FILE)
        if tensorboard:
            self._tb = tf.summary.create_file_writer(os.path.join(out_dir, "tb"))

    def write(self, step: int, metrics: dict[str, Any], *, echo: bool = True) -> None:
        if not self.enabled:
            return
        import tensorflow as tf

        clean = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, bool)) else v) for k, v in metrics.items()}
        record = {"step": int(step), "time": round(time.time(), 3), **clean}
        with tf.io.gfile.GFile(self._path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            with self._tb.as_default(step=int(step)):
                for k, v in clean.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        tf.summary.scalar(k, v)
            self._tb.flush()
        if echo:
            print(console_line(step, clean), file=self.stream, flush=True)

    def image(self, tag: str, step: int, images: Any) -> None:
        """Log a batch of uint8 images [N, H, W, C] to TensorBoard."""
        if not self.enabled or self._tb is None:
            return
        import tensorflow as tf

        with self._tb.as_default(step=int(step)):
            tf.summary.image(tag, images, max_outputs=len(images))
        self._tb.flush()

    def text(self, tag: str, step: int, lines: Iterable[str]) -> None:
        if not self.enabled or self._tb is None:
            return
        import tensorflow as tf

        with self._tb.as_default(step=int(step)):
            tf.summary.text(tag, "\n\n".join(lines))
        self._tb.flush()

    def log(self, msg: str) -> None:
        if self.enabled:
            print(msg, file=self.stream, flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
