"""The custom training loop every workload shares, on one worker or many.

Keras 3 `Model.fit` fails under `MultiWorkerMirroredStrategy` (a PerReplica conversion
error), so training is a custom loop: `strategy.run` on a distributed dataset made by
`distribute_datasets_from_function` (each worker reads its own shard), the optimizer
aggregating gradients across replicas, checkpoints through `tf.train.CheckpointManager`.

A workload plugs in a `Task` (see `Task` below). The loop owns: the step counter,
checkpoint/restore (so a rerun or a restarted worker resumes), stats lines and
metrics.jsonl, periodic evaluation, the best-metric checkpoint, and reporting to Ray
(Train or Tune) through a `report` callable.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Protocol

from tfcluster import runs
from tfcluster.metrics import MetricsWriter
from tfcluster.runs import BEST_DIR, CKPT_DIR

AVG_DIR = "avg"  # --avg_ckpts: the averaged checkpoint

FAIL_AT_STEP_ENV = "TFCLUSTER_FAIL_AT_STEP"  # fault injection for the restart test


@dataclasses.dataclass(frozen=True)
class WorkerContext:
    """Who this worker is: rank and world size (from Ray Train, or 0 / 1 alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


class Task(Protocol):
    """What a workload gives the loop (built inside `strategy.scope()`).

    - `num_steps`: total training steps.
    - `trackables()`: the objects to checkpoint (models, optimizers).
    - `dataset(input_context)`: this input pipeline's shard, batched per replica, repeated.
    - `replica_step(batch)`: one step on one replica; returns a dict of scalar tensors to
      be summed across replicas and steps (loss sums, token counts, ...).
    - `stats(sums, steps, seconds)`: metrics for a stats line from the summed values.
    - `evaluate(step)`: quality metrics (chief only), e.g. {"eval/bleu": 21.3}.
    - `best_metric`: (name, "max"|"min") of the metric whose best checkpoint is kept, or None.
    - `after_restore()`: re-apply settings a checkpoint overwrote (a learning rate held in an
      optimizer variable, which a PBT trial has just changed); `TaskBase` does nothing.
    - `progress`: a float variable the loop keeps at the fraction of the run done, the larger of
      step / num_steps and trained minutes / --max_train_minutes (a schedule can decay on it); or None.
    - `averaged`: the name of the entry of `trackables()` (a dict of variables: the model's weights,
      not the optimizer's) that `--avg_ckpts` averages over the last checkpoints, or None.
    """

    num_steps: int
    best_metric: tuple[str, str] | None
    progress: Any
    averaged: str | None

    def trackables(self) -> dict[str, Any]: ...
    def dataset(self, input_context: Any) -> Any: ...
    def replica_step(self, batch: Any) -> dict[str, Any]: ...
    def stats(self, sums: dict[str, float], steps: int, seconds: float) -> dict[str, float]: ...
    def evaluate(self, step: int) -> dict[str, float]: ...
    def after_restore(self) -> None: ...


class TaskBase:
    """Defaults for a `Task`: no best metric, nothing to redo after a restore, no progress variable,
    nothing to average."""

    best_metric: tuple[str, str] | None = None
    progress: Any = None
    averaged: str | None = None

    def after_restore(self) -> None:
        """Nothing a checkpoint overwrote needs setting again."""

    @staticmethod
    def xla(fn: Callable, cfg: Any) -> Callable:
        """`fn` XLA-compiled with --jit_compile, else as it is. Tasks compile their forward and backward pass
        this way, not the whole replica step: cross-worker all-reduce and the optimizer's update (a merge_call
        under MultiWorkerMirroredStrategy) cannot be inside an XLA cluster (tensorflow/tensorflow#45940)."""
        if not getattr(cfg, "jit_compile", False):
            return fn
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=True)


def single_host_loopback() -> None:
    """When every worker in TF_CONFIG is on this one host, talk over 127.0.0.1 instead of its LAN address."""
    import json
    import socket

    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return
    tf_config = json.loads(raw)
    workers = tf_config.get("cluster", {}).get("worker", [])
    hosts = {w.rsplit(":", 1)[0] for w in workers}
    if len(hosts) != 1:
        return
    host = hosts.pop().strip("[]")
    try:  # a host address this machine can bind to is one of its own
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, 0))
    except OSError:
        return
    tf_config["cluster"]["worker"] = ["127.0.0.1:" + w.rsplit(":", 1)[1] for w in workers]
    os.environ["TF_CONFIG"] = json.dumps(tf_config)


def make_strategy(world_size: int):
    """MultiWorkerMirroredStrategy across Ray Train workers (TF_CONFIG set by Ray), else the default."""
    import tensorflow as tf

    if world_size > 1:
        single_host_loopback()
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def checkpoint_dir(out_dir: str, ctx: WorkerContext) -> str:
    """The chief writes to out_dir/ckpt; other workers write throw-away copies (MWMS needs all to save)
    into a scratch folder of their own, which `run_loop` removes when it ends."""
    if ctx.is_chief:
        return os.path.join(out_dir, CKPT_DIR)
    return tempfile.mkdtemp(prefix=f"tfcluster-worker{ctx.rank}-")


def latest_checkpoint(out_dir: str, which: str = "last") -> str | None:
    """Path prefix of the last (or best) checkpoint in `out_dir`, or None."""
    import tensorflow as tf

    path = tf.train.latest_checkpoint(runs.folder(out_dir, which))
    if path is None and which == "best":
        return latest_checkpoint(out_dir, "last")
    return path


def restore_run(out_dir: str, which: str = "best", **trackables: Any) -> str:
    """Restore `trackables` (e.g. model=...) from the run's best (or last) checkpoint; returns its path.
    Every object given must be in the checkpoint; a run without one is a one-line error."""
    import tensorflow as tf

    from tfcluster.errors import UserError

    path = latest_checkpoint(out_dir, which)
    if path is None:
        raise UserError(f"no checkpoint in {out_dir}; train first")
    tf.train.Checkpoint(**trackables).restore(path).expect_partial().assert_existing_objects_matched()
    return path


def copy_checkpoint(prefix: str, dest_dir: str) -> None:
    """Copy the files of checkpoint `prefix` into dest_dir as its only checkpoint."""
    import tensorflow as tf

    if tf.io.gfile.exists(dest_dir):
        tf.io.gfile.rmtree(dest_dir)
    tf.io.gfile.makedirs(dest_dir)
    base = os.path.basename(prefix)
    for f in tf.io.gfile.glob(prefix + ".*"):
        tf.io.gfile.copy(f, os.path.join(dest_dir, os.path.basename(f)), overwrite=True)
    with tf.io.gfile.GFile(os.path.join(dest_dir, "checkpoint"), "w") as fh:
        fh.write(f'model_checkpoint_path: "{base}"\nall_model_checkpoint_paths: "{base}"\n')


class Budget:
    """--max_train_minutes: the training wall time (kept in checkpoints, so restarts add up), the
    stop decision (the chief's clock, summed over workers so every worker stops at the same step),
    and the run's progress fraction for schedules."""

    def __init__(self, minutes: float, seconds_before: float, num_steps: int, strategy: Any, ctx: WorkerContext):
        self.limit_s = 60.0 * minutes
        self.clock0 = time.perf_counter() - seconds_before
        self.num_steps, self.strategy, self.ctx = num_steps, strategy, ctx
        self._agree = None

    def seconds(self) -> float:
        return time.perf_counter() - self.clock0

    def minutes(self) -> float:
        return self.seconds() / 60.0

    def spent(self) -> bool:
        return bool(self.limit_s) and self.seconds() >= self.limit_s

    def _chief_seconds(self) -> float:
        if self.ctx.world_size == 1:
            return self.seconds()
        import tensorflow as tf

        if self._agree is None:
            strategy = self.strategy

            @tf.function
            def agree(x):
                per_replica = strategy.run(tf.identity, args=(x,))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

            self._agree = agree
        mine = self.seconds() if self.ctx.is_chief else 0.0
        return float(self._agree(tf.constant(mine, tf.float64)))

    def update(self, task: Any, step: int) -> bool:
        """Set task.progress for `step`; True when the time budget is used up (the same on every worker)."""
        seconds = self._chief_seconds() if self.limit_s else 0.0
        if task.progress is not None:
            fraction = step / max(1, self.num_steps)
            if self.limit_s:
                fraction = max(fraction, seconds / self.limit_s)
            task.progress.assign(min(1.0, fraction))
        return bool(self.limit_s) and seconds >= self.limit_s


def average_checkpoints(task: Any, paths: list[str], out_dir: str, writer: MetricsWriter):
    """--avg_ckpts: the mean of the task's `averaged` weights over checkpoints `paths`, read from the files,
    set on the model, saved as `out_dir/avg/ckpt-<last step>` (those weights alone) and evaluated; returns
    (metrics, checkpoint prefix), or None with fewer than two checkpoints."""
    import numpy as np
    import tensorflow as tf

    variables = task.trackables().get(task.averaged, {}) if task.averaged else {}
    if len(paths) < 2 or not variables:
        writer.log(f"# --avg_ckpts: nothing to average ({len(paths)} checkpoint(s), {len(variables)} variable(s))")
        return None
    readers = [tf.train.load_checkpoint(p) for p in paths]
    means = {}
    for name, v in variables.items():
        escaped = name.replace(".", "..").replace("/", ".S")  # how checkpoint keys spell a name
        key = f"{task.averaged}/{escaped}/.ATTRIBUTES/VARIABLE_VALUE"
        means[name] = np.mean([r.get_tensor(key) for r in readers], axis=0).astype(v.numpy().dtype)
        v.assign(means[name])
    step = runs.checkpoint_step(paths[-1])
    with tf.device("CPU:0"):
        copy = {name: tf.Variable(value, trainable=False) for name, value in means.items()}
    prefix = tf.train.Checkpoint(**{task.averaged: copy}).write(os.path.join(out_dir, AVG_DIR, f"ckpt-{step}"))
    with tf.io.gfile.GFile(os.path.join(out_dir, AVG_DIR, "checkpoint"), "w") as fh:
        fh.write(f'model_checkpoint_path: "{os.path.basename(prefix)}"\n')
    ev = task.evaluate(step)
    ev["eval/avg_ckpts"] = float(len(paths))
    return ev, prefix


def _maybe_fail(step: int, out_dir: str) -> None:
    """Exit the process once at step N when TFCLUSTER_FAIL_AT_STEP=N (fault-injection hook)."""
    at = os.environ.get(FAIL_AT_STEP_ENV)
    if not at or step != int(at):
        return
    marker = os.path.join(out_dir, f".failed_at_{at}")
    if os.path.exists(marker):
        return
    open(marker, "w").close()
    print(f"fault injection: worker exits at step {step}", flush=True)
    os._exit(1)


def run_loop(
    make_task: Callable[[Any], Task],
    cfg: Any,
    ctx: WorkerContext = WorkerContext(),
    report: Callable[[dict[str, Any], str | None, bool], None] | None = None,
    restore_dir: str | None = None,
) -> dict[str, float]:
    """Train `make_task(strategy)` to `task.num_steps`, resuming; returns the last metrics.

    It resumes from the newer of `restore_dir` (a checkpoint Ray Train handed back: storage
    survives the loss of any node) and `cfg.out_dir/ckpt`. `report(metrics, checkpoint_prefix_or_None,
    is_best)` is called on every worker at each stats and eval point (Ray Train's or Ray Tune's
    report); the checkpoint is given at eval points, after the chief saved, and `is_best` says
    it is the new `best/`. With --avg_ckpts the chief alone calls it once more after the loop,
    without a checkpoint and with is_best, when the checkpoint average became `best/`.

    The phases, each a method of `Loop`: set-up and restore, the step loop (stats windows), the
    evaluation with best-keeping, the budget stop, and the checkpoint average.
    """
    loop = Loop(make_task, cfg, ctx, report)
    try:
        if not loop.restore(restore_dir):
            return {}
        last = loop.train()
        loop.average()
        loop.writer.close()
        return last
    finally:
        if not ctx.is_chief:  # a non-chief's scratch copies are never read again
            shutil.rmtree(loop.ckpt_dir, ignore_errors=True)


class Loop:
    """One worker's training run of a Task: what `run_loop` does, phase by phase."""

    def __init__(self, make_task: Callable[[Any], Task], cfg: Any, ctx: WorkerContext,
                 report: Callable[[dict[str, Any], str | None, bool], None] | None):
        """Set-up: threads, seed, strategy, the Task, the checkpointed counters and the checkpoint manager."""
        import keras
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
        if ctx.world_size > 1 and cfg.cpus_per_worker >= 1:
            n = int(cfg.cpus_per_worker)
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, n))
        keras.utils.set_random_seed(cfg.seed + ctx.rank)
        self.cfg, self.ctx, self.report = cfg, ctx, report
        self.strategy = make_strategy(ctx.world_size)
        self.writer = MetricsWriter(cfg.out_dir, enabled=ctx.is_chief)
        from tfcluster.train import precision

        with self.strategy.scope():
            with precision.policy(getattr(cfg, "precision", "float32")):  # the Task's layers take the policy
                self.task = make_task(self.strategy)
            self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.best_var = tf.Variable(float("nan"), dtype=tf.float64, trainable=False, name="best_metric")
            self.seconds_var = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_seconds")
            self.ckpt = tf.train.Checkpoint(step=self.step_var, best=self.best_var, train_seconds=self.seconds_var,
                                            **self.task.trackables())
        self.ckpt_dir = checkpoint_dir(cfg.out_dir, ctx)
        self.manager = tf.train.CheckpointManager(self.ckpt, self.ckpt_dir, max_to_keep=cfg.keep_checkpoint_max)
        self.step = 0

    # ---- set-up and restore ----------------------------------------------------------------
    def restore(self, restore_dir: str | None) -> bool:
        """Restore the newest checkpoint; False when there is nothing left to train (steps or budget)."""
        import tensorflow as tf

        cfg, task = self.cfg, self.task
        candidates = [p for p in (tf.train.latest_checkpoint(restore_dir) if restore_dir else None,
                                  tf.train.latest_checkpoint(os.path.join(cfg.out_dir, CKPT_DIR))) if p]
        restore_from = max(candidates, key=runs.checkpoint_step) if candidates else None
        if restore_from:
            self.ckpt.restore(restore_from).expect_partial()
            self.writer.log(f"# resuming from step {int(self.step_var.numpy())} ({restore_from})")
            task.after_restore()
        self.start = self.step = int(self.step_var.numpy())
        self.budget = Budget(cfg.max_train_minutes, float(self.seconds_var.numpy()), task.num_steps, self.strategy, self.ctx)
        if self.start >= task.num_steps:
            self.writer.log(f"# already trained to step {self.start} >= num_train_steps {task.num_steps}; nothing to do")
            return False
        if self.budget.spent():
            self.writer.log(f"# already trained {self.budget.minutes():.1f} minutes >= --max_train_minutes "
                            f"{cfg.max_train_minutes:g}; nothing to do")
            return False
        self.budget.update(task, self.start)
        return True

    def save(self, step: int) -> str:
        self.step_var.assign(step)
        self.seconds_var.assign(self.budget.seconds())
        return self.manager.save(checkpoint_number=step)

    # ---- the step loop ---------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        """Steps to `num_steps` (or the budget), a stats line every --steps_per_stats, an evaluation and a
        checkpoint every --steps_per_external_eval; returns the last metrics."""
        import tensorflow as tf

        cfg, task, strategy = self.cfg, self.task, self.strategy
        iterator = iter(strategy.distribute_datasets_from_function(task.dataset))

        @tf.function
        def train_step(it):
            per_replica = strategy.run(task.replica_step, args=(next(it),))
            return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

        last: dict[str, float] = {}
        sums: dict[str, Any] = {}
        n_steps, t0 = 0, time.perf_counter()
        step = self.start
        self.writer.log(f"# training from step {self.start} to {task.num_steps}")
        while step < task.num_steps:
            out = train_step(iterator)
            step += 1
            n_steps += 1
            for k, v in out.items():
                sums[k] = sums[k] + v if k in sums else v
            _maybe_fail(step, cfg.out_dir)
            is_stats = step % cfg.steps_per_stats == 0 or step == task.num_steps
            is_eval = step % cfg.eval_every == 0 or step == task.num_steps
            out_of_time = is_stats and self.budget.update(task, step)
            is_eval = is_eval or out_of_time
            if step == self.start + 1 and not is_stats:
                # The first step traces and compiles the graph: leave it out of the timed window
                # (and of that window's sums) so perf/ metrics measure steady-state steps.
                for v in out.values():
                    v.numpy()
                sums, n_steps, t0 = {}, 0, time.perf_counter()
            if not (is_stats or is_eval):
                continue
            if is_stats:
                host = {k: float(v.numpy()) for k, v in sums.items()}
                last = task.stats(host, n_steps, time.perf_counter() - t0)
                sums, n_steps = {}, 0
            ckpt_path, improved = None, False
            if is_eval:
                ckpt_path, improved = self.evaluate(step, last)
            self.writer.write(step, last)
            if self.report is not None:
                self.report(dict(last, step=step), ckpt_path, improved)
            if out_of_time:
                self.writer.log(f"# stopped at step {step}: --max_train_minutes {cfg.max_train_minutes:g} reached")
                break
            t0 = time.perf_counter()
        self.step = step
        return last

    # ---- evaluation and best-keeping -------------------------------------------------------
    def evaluate(self, step: int, last: dict[str, float]) -> tuple[str, bool]:
        """Checkpoint at `step`; the chief evaluates (into `last`) and keeps `best/`. Returns (checkpoint, improved)."""
        path = self.save(step)
        if not self.ctx.is_chief:
            return path, False
        ev = self.task.evaluate(step)
        last.update(ev)
        return path, self.keep_if_best(ev, path, last)

    def keep_if_best(self, ev: dict[str, float], path: str, into: dict[str, float]) -> bool:
        """Make checkpoint `path` the run's `best/` when `ev` beats the best so far by the Task's metric;
        records best/<metric> in `into`. Returns whether it did."""
        if not (self.task.best_metric and self.task.best_metric[0] in ev):
            return False
        name, mode = self.task.best_metric
        improved = runs.is_better(ev[name], float(self.best_var.numpy()), mode)
        if improved:
            self.best_var.assign(ev[name])
            copy_checkpoint(path, os.path.join(self.cfg.out_dir, BEST_DIR))
        into[f"best/{name}"] = float(self.best_var.numpy())
        return improved

    # ---- the checkpoint average ------------------------------------------------------------
    def average(self) -> None:
        """--avg_ckpts (the chief): evaluate the mean of the kept checkpoints' weights; `best/` when better."""
        if not (self.cfg.avg_ckpts and self.ctx.is_chief):
            return
        averaged = average_checkpoints(self.task, self.manager.checkpoints, self.cfg.out_dir, self.writer)
        if averaged is None:
            return
        ev, path = averaged
        if self.task.best_metric and self.task.best_metric[0] in ev:
            name = self.task.best_metric[0]
            improved = self.keep_if_best(ev, path, ev)
            self.writer.log(f"# the average of the last {ev['eval/avg_ckpts']:g} checkpoints "
                            f"{'is' if improved else 'is not'} the new best/ ({name} {ev[name]:.4g})")
            if improved and self.report is not None:
                self.report(dict(ev, step=self.step), None, True)
        self.writer.write(self.step, ev)
