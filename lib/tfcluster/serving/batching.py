"""Server-side batching (`--enable_batching`, `--batching_parameters_file`).

Like TF Serving's shared batch scheduler: requests for the same model version and
signature wait in a queue; a batch thread takes the oldest queue that is full
(`max_batch_size` rows) or whose oldest request has waited `batch_timeout_micros`,
concatenates the inputs along dimension 0, runs the signature once and hands each
request its rows. `num_batch_threads` threads run batches; a queue holds at most
`max_enqueued_batches` batches (more: UNAVAILABLE, which clients retry). A request with
more rows than `max_batch_size` is refused with INVALID_ARGUMENT. With
`allowed_batch_sizes`, a batch is padded (repeating its first row) to the next allowed size.
Requests whose non-batch dimensions differ are run in separate batches.

With `run_when_idle` (the server's default, not TF Serving's), when no batch runs, a queue runs
as soon as it holds as many requests as its last batch did: a lone client's request (its last
batch was one request) runs at once, and clients answered together by one batch, who come back
together, are gathered into one batch again, for at most `batch_timeout_micros` from the moment
the server went idle. While batches run, requests gather as in TF Serving (a full batch, or
`batch_timeout_micros` after the oldest arrived). Without that count, under a closed loop of 16
clients the first request back after a batch found the server idle and ran alone, and the other
15 ran after it: on the NMT preset export 4-5 rows per batch on average and 52-88% of the
in-process batch-16 rate; with it, 12 rows on average and 80-96% (bench/serving.py).

At most `num_batch_threads` batches run at once. When a batch is ready at submit time (a full
queue, or `batch_timeout_micros` 0) and fewer than that many run, the submitting thread runs it
itself instead of waking a batch thread: a request on an idle server pays no hand-off between
threads (about 1.3 ms of p50 on a 2-core machine, `bench/serving_profile.py`). The batch threads
run what queues up while every slot is busy, so batches still form under load.

A model whose export runs on intra-op threads of its own (`assets.extra/session_config.pbtxt`:
the NMT decoder's one thread) has as many slots as its runs fit on the cores (cores / its threads,
at least `num_batch_threads`), so its batches run side by side instead of leaving cores idle;
another model's batch starts only while fewer than `num_batch_threads` batches run.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Mapping

import grpc
import numpy as np

from tfcluster.serving.tensors import Failure, invalid


@dataclass(frozen=True)
class BatchOptions:
    """Resolved BatchingParameters, with TF Serving's defaults for unset fields."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    # Not in TF Serving: when no batch runs at all, a queue runs once it holds as many requests as its
    # last batch (a lone client's request at once) instead of waiting out batch_timeout_micros
    # (`tfcluster serve --batching_run_when_idle`, default true). See the module's docstring.
    run_when_idle: bool = False

    @classmethod
    def from_proto(cls, p) -> "BatchOptions":
        d = cls()

        def get(field: str, default):
            return getattr(p, field).value if p.HasField(field) else default

        o = cls(
            max_batch_size=get("max_batch_size", d.max_batch_size),
            batch_timeout_micros=get("batch_timeout_micros", d.batch_timeout_micros),
            max_enqueued_batches=get("max_enqueued_batches", d.max_enqueued_batches),
            num_batch_threads=get("num_batch_threads", d.num_batch_threads),
            allowed_batch_sizes=tuple(p.allowed_batch_sizes),
            pad_variable_length_inputs=p.pad_variable_length_inputs,
        )
        o.validate()
        return o

    def validate(self) -> None:
        from tfcluster.errors import UserError

        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1:
            raise UserError("batching parameters: max_batch_size, num_batch_threads and max_enqueued_batches must be >= 1")
        if self.batch_timeout_micros < 0:
            raise UserError("batching parameters: batch_timeout_micros must be >= 0")
        a = self.allowed_batch_sizes
        if a and (list(a) != sorted(set(a)) or a[-1] != self.max_batch_size):
            raise UserError(
                f"batching parameters: allowed_batch_sizes {list(a)} must increase and end with max_batch_size {self.max_batch_size}"
            )


@dataclass
class _Task:
    inputs: Mapping[str, np.ndarray]
    size: int
    group: tuple
    future: Future
    enqueued: float


def _group(inputs: Mapping[str, np.ndarray]) -> tuple:
    return tuple(sorted((k, str(a.dtype), a.shape[1:]) for k, a in inputs.items()))


class _Queue:
    def __init__(self, run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]], on_batch, slots: int):
        self.run, self.on_batch = run, on_batch
        self.slots = slots  # this queue's batch runs while fewer than this many batches run
        self.tasks: collections.deque[_Task] = collections.deque()
        self.rows = 0
        self.last_tasks = 1  # requests in the last batch taken from this queue


class Batcher:
    """A shared scheduler over one queue per (servable, signature)."""

    def __init__(self, opts: BatchOptions, on_batch: Callable[[str, int], None] | None = None, cores: int | None = None):
        self.opts = opts
        self.cores = cores or os.cpu_count() or 1
        self.on_batch = on_batch
        self._cond = threading.Condition()
        self._queues: dict[object, _Queue] = {}
        self._closed = False
        self._running = 0  # batches running now, on batch threads and submitting threads
        self._idle_since = time.monotonic()  # when _running last became 0
        self._threads: list[threading.Thread] = []
        self._grow(opts.num_batch_threads)

    def _grow(self, n: int) -> None:
        while len(self._threads) < n:
            t = threading.Thread(target=self._work, name=f"batch-{len(self._threads)}", daemon=True)
            self._threads.append(t)
            t.start()

    def slots(self, intra_op_threads: int = 0) -> int:
        """How many batches may run at once while one of a model's runs: num_batch_threads, or for a model that
        runs on `intra_op_threads` threads of its own (its session_config.pbtxt), as many as fit on the cores."""
        if not intra_op_threads:
            return self.opts.num_batch_threads
        return max(self.opts.num_batch_threads, self.cores // intra_op_threads)

    def submit(self, key: object, label: str, run, inputs: Mapping[str, np.ndarray], intra_op_threads: int = 0) -> Future:
        sizes = {a.shape[0] if a.ndim else None for a in inputs.values()}
        if None in sizes or len(sizes) != 1:
            raise invalid(
                "with batching on, every input needs the same batch size in dimension 0; got "
                + ", ".join(f"{k}: {list(a.shape)}" for k, a in inputs.items())
            )
        (size,) = sizes
        if size > self.opts.max_batch_size:
            raise invalid(
                f"{label}: batch of {size} rows is larger than max_batch_size {self.opts.max_batch_size} "
                "(--batching_parameters_file); send at most that many rows per request"
            )
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise Failure(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            q = self._queues.get(key)
            if q is None:
                q = self._queues[key] = _Queue(run, label, self.slots(intra_op_threads))
                self._grow(q.slots)
            if q.rows + size > self.opts.max_enqueued_batches * self.opts.max_batch_size:
                raise Failure(
                    grpc.StatusCode.UNAVAILABLE,
                    f"{label}: the batch scheduling queue to which this task was submitted is full "
                    f"(max_enqueued_batches {self.opts.max_enqueued_batches})",
                )
            q.tasks.append(_Task(inputs, size, _group(inputs), fut, time.monotonic()))
            q.rows += size
            taken, _ = self._take()
            if taken is None and self._running < q.slots:
                self._cond.notify()  # a free batch thread waits out the queue's timeout
        if taken is not None:  # run it here: no hand-off to a batch thread on an idle server
            try:
                self._run(*taken)
            finally:
                self._finished()
        return fut

    def _finished(self) -> None:
        with self._cond:
            self._running -= 1
            if self._running == 0:
                self._idle_since = time.monotonic()
            self._cond.notify()  # a slot is free: a batch thread takes what queued meanwhile

    def forget(self, key: object) -> None:
        with self._cond:
            q = self._queues.get(key)
            if q is not None and not q.tasks:
                del self._queues[key]

    def close(self) -> None:
        """Run what is queued, then stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=30)

    # ---- batch threads -------------------------------------------------------------------
    def _take(self) -> tuple[tuple[_Queue, list[_Task]] | None, float | None]:
        """Under the lock: the next ready batch, its slot claimed (the caller runs it, then `_finished`); else None
        and how long to wait for a queue's timeout (None: until notified, e.g. when every slot is busy)."""
        if self._running >= len(self._threads):
            return None, None
        timeout = self.opts.batch_timeout_micros / 1e6
        now = time.monotonic()
        idle = self.opts.run_when_idle and self._running == 0
        best, wait = None, None
        for q in self._queues.values():
            if not q.tasks or self._running >= q.slots:
                continue
            age = now - q.tasks[0].enqueued
            as_many = False
            if idle:  # as many requests as the last batch had, or the timeout since the server went idle
                as_many = len(q.tasks) >= q.last_tasks
                age = min(age, now - self._idle_since)
            if q.rows >= self.opts.max_batch_size or age >= timeout or self._closed or as_many:
                if best is None or q.tasks[0].enqueued < best.tasks[0].enqueued:
                    best = q
            else:
                left = timeout - age
                wait = left if wait is None else min(wait, left)
        if best is None:
            return None, wait
        group, batch, rows = best.tasks[0].group, [], 0
        rest = collections.deque()
        while best.tasks:
            t = best.tasks.popleft()
            if t.group == group and rows + t.size <= self.opts.max_batch_size:
                batch.append(t)
                rows += t.size
            else:
                rest.append(t)
        best.tasks = rest
        best.rows -= rows
        best.last_tasks = len(batch)
        self._running += 1
        return (best, batch), None

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    taken, wait = self._take()
                    if taken is not None:
                        break
                    if self._closed and not any(q.tasks for q in self._queues.values()):
                        return
                    self._cond.wait(wait)
            try:
                self._run(*taken)
            finally:
                self._finished()

    def _run(self, q: _Queue, batch: list[_Task]) -> None:
        rows = sum(t.size for t in batch)
        keys = list(batch[0].inputs)
        merged = {k: np.concatenate([t.inputs[k] for t in batch]) if len(batch) > 1 else batch[0].inputs[k] for k in keys}
        padded = rows
        for allowed in self.opts.allowed_batch_sizes:
            if allowed >= rows:
                padded = allowed
                break
        if padded > rows:
            merged = {k: np.concatenate([a, np.repeat(a[:1], padded - rows, axis=0)]) for k, a in merged.items()}
        if self.on_batch:
            self.on_batch(q.on_batch, padded)
        try:
            out = q.run(merged)
            for k, a in out.items():
                if a.ndim == 0 or a.shape[0] != padded:
                    raise Failure(
                        grpc.StatusCode.INTERNAL,
                        f"{q.on_batch}: batched output '{k}' has shape {list(a.shape)}, expected {padded} rows in "
                        "dimension 0; a model served with --enable_batching must be batch-major",
                    )
        except Exception as e:  # noqa: BLE001 - every task of the batch gets the error
            for t in batch:
                t.future.set_exception(e)
            return
        start = 0
        for t in batch:
            t.future.set_result({k: a[start : start + t.size] for k, a in out.items()})
            start += t.size
