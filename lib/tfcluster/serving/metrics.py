"""Prometheus metrics in text exposition format, named as TF Serving exports them.

TF Serving's monitoring paths (`/tensorflow/serving/request_count`) become Prometheus
names by turning `/` into `:`; the same names are used here, so dashboards and alerts
written for TF Serving read the local server too.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS_US = (10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000, 10_000_000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _labels(names: tuple[str, ...], values: tuple) -> str:
    def esc(v) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return ",".join(f'{n}="{esc(v)}"' for n, v in zip(names, values))


class Counter:
    def __init__(self, name: str, help_: str, labels: tuple[str, ...]):
        self.name, self.help, self.labels = name, help_, labels
        self.values: dict[tuple, float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, *labels, by: float = 1.0) -> None:
        with self._lock:
            self.values[labels] += by

    def text(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            out += [f"{self.name}{{{_labels(self.labels, k)}}} {v:g}" for k, v in sorted(self.values.items())]
        return out


class Histogram:
    def __init__(self, name: str, help_: str, labels: tuple[str, ...], buckets: tuple[float, ...]):
        self.name, self.help, self.labels, self.buckets = name, help_, labels, buckets
        self.counts: dict[tuple, list[int]] = {}
        self.sums: dict[tuple, float] = defaultdict(float)
        self._lock = threading.Lock()

    def observe(self, value: float, *labels) -> None:
        with self._lock:
            c = self.counts.setdefault(labels, [0] * (len(self.buckets) + 1))
            c[bisect.bisect_left(self.buckets, value)] += 1
            self.sums[labels] += value

    def text(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for k, c in sorted(self.counts.items()):
                lab = _labels(self.labels, k)
                total = 0
                for le, n in zip([*self.buckets, "+Inf"], c):
                    total += n
                    out.append(f'{self.name}_bucket{{{lab},le="{le}"}} {total}')
                out.append(f"{self.name}_sum{{{lab}}} {self.sums[k]:g}")
                out.append(f"{self.name}_count{{{lab}}} {total}")
        return out


class Metrics:
    def __init__(self):
        self.request_count = Counter(
            ":tensorflow:serving:request_count", "The total number of requests.", ("model_name", "status")
        )
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"),
            LATENCY_BUCKETS_US,
        )
        self.batch_size = Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Tracks the batch size distribution on processing.",
            ("model_name",),
            BATCH_BUCKETS,
        )
        self.load_attempts = Counter(
            ":tensorflow:cc:saved_model:load_attempt_count",
            "The number of times a SavedModel was successfully loaded.",
            ("model_path", "status"),
        )

    def text(self) -> str:
        lines: list[str] = []
        for m in (self.request_count, self.request_latency, self.batch_size, self.load_attempts):
            lines += m.text()
        return "\n".join(lines) + "\n"
