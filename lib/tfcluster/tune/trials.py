"""The kinds of sweep trial, by the kind of run a workload's contract declares.

* `LoopTrials` (NMT, DCGAN, OCR): each trial is a function trainable that calls
  `tfcluster.train.loop.run_loop` (the loop `jobs/train_<workload>.py` runs) in its own out_dir,
  on one worker or, with `--workers_per_trial N`, as a Ray Train run of N workers started from
  the trial. It reports the eval metric with a checkpoint at every eval point, so ASHA can stop
  bad trials early and PBT can exploit from another trial's checkpoint.
* `AlgorithmTrials` (DQN, PG): the algorithm (a `ray.tune.Trainable`) is the trial; each training
  iteration is one result, checkpointed every iteration.

Trials receive their workload object; nothing here looks one up by name.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from typing import Any, Callable

from tfcluster import config as config_mod
from tfcluster import runs
from tfcluster.errors import UserError
from tfcluster.tune.folders import RUN_DIR, TrialFolder, in_trial, restore_into

DRIVER_MEMORY = 512 * 1024**2  # what a multi-worker trial's own process reserves (it holds no CPU)


def _limit_threads(cpus: float) -> None:
    """One trial's TensorFlow uses the CPUs Tune gave it, not every core of the node."""
    n = max(1, int(cpus))
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:  # already initialized in this process
        pass


def trainable(config: dict, *, wl: Any, base: dict, shared_dir: str, storage: str, cpus: float,
              gpus: float = 0.0, workers: int = 1) -> None:
    """One trial: the base Config with this trial's sampled values, trained by the shared loop."""
    import ray.tune as tune
    from tfcluster.train.loop import WorkerContext, copy_checkpoint, run_loop

    if workers == 1:
        _limit_threads(cpus)
    folder = TrialFolder(tune.get_context().get_storage(), storage)
    out_dir = folder.out_dir
    settings = {**in_trial(base, shared_dir, out_dir), **config, "out_dir": out_dir, "model_base_path": ""}
    if workers > 1:
        settings.update(num_workers=workers, cpus_per_worker=cpus / workers, use_gpu=gpus > 0,
                        storage_path=runs.join(folder.uri, "ray"))
    cfg = config_mod.build(wl.config, settings, "trial config")
    os.makedirs(out_dir, exist_ok=True)
    folder.copy_prepared(shared_dir)
    cfg = wl.prepare(cfg)
    config_mod.save(cfg)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        restore_into(checkpoint, out_dir)

    def report(metrics: dict, ckpt: Any, is_best: bool = False) -> None:
        """Relay an eval point to Tune with its checkpoint: a local checkpoint prefix (one worker), or
        the Ray Train checkpoint the trial's chief reported into storage (--workers_per_trial)."""
        if ckpt is None:  # stats-only points carry no eval metric: report eval points only
            return
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        folder.sync()
        if not isinstance(ckpt, str):
            with ckpt.as_directory() as d:
                tune.report(values, checkpoint=tune.Checkpoint.from_directory(d))
            return
        with tempfile.TemporaryDirectory() as tmp:
            copy_checkpoint(ckpt, tmp)
            tune.report(values, checkpoint=tune.Checkpoint.from_directory(tmp))

    if workers > 1:
        _train_workers(wl, cfg, gpus / workers, report)
    else:
        run_loop(lambda strategy: wl.task(cfg, strategy, WorkerContext()), cfg, WorkerContext(), report)
    folder.sync()


def _train_workers(wl: Any, cfg: Any, gpus_per_worker: float, report) -> None:
    """Train the trial as a Ray Train run (the train jobs' driver code) and relay each of the
    chief's eval reports, with its checkpoint, to Tune from this trial's process.

    Ray Train's own TuneReportCallback relays metrics only; the checkpoint is what lets PBT
    exploit and `--resume` continue a multi-worker trial. A trial stopped by the scheduler
    ends its actor, and the Train run it owns ends with it.
    """
    from ray.train import ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer
    from ray.train.v2.api.callback import UserCallback
    from ray.util.queue import Empty, Queue
    from tfcluster.train import driver

    queue: Queue = Queue(actor_options={"num_cpus": 0})

    class Relay(UserCallback):  # runs in the Train controller
        def __init__(self, q):
            self.q = q

        def after_report(self, run_context, metrics, checkpoint):
            self.q.put((dict(metrics[0]), checkpoint))  # the checkpoint as persisted in the run's storage

    per_worker = {"CPU": cfg.cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    trainer = TensorflowTrainer(
        train_loop_per_worker=driver.train_loop_per_worker,
        train_loop_config={"workload": wl, "config": config_mod.to_dict(cfg)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=per_worker),
        run_config=driver.run_config(cfg, "train", callbacks=[Relay(queue)]),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - re-raised in the trial's thread
            outcome["error"] = e

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while True:
        try:
            item = queue.get(timeout=1.0)
        except Empty:
            if not thread.is_alive():
                break
            continue
        metrics, ckpt = item
        report(metrics, ckpt)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    result = outcome.get("result")
    if result is not None and result.error is not None:
        raise RuntimeError(f"trial training failed: {result.error}")
    # the chief kept best/ in the Train run's storage: make it the trial's (it may have run on another node)
    driver.fetch_best(cfg, *runs.storage_fs(runs.join(runs.storage_root(cfg), "train")),
                      result.checkpoint if result is not None else None)


FINISHED = "finished"  # an RL result's flag: the trial reached its budget or solved the env


def rl_trainable(algo_cls: type, base: dict[str, Any], metric: str, mode: str, cpus: float, storage: str) -> type:
    """The workload's Algorithm as a trial: the base settings with the sampled ones, its out_dir
    in the trial's storage folder with config.json and the best checkpoint by the sweep's
    metric in out_dir/best (what --export_best exports)."""

    class Trial(algo_cls):
        def setup(self, config: dict) -> None:
            _limit_threads(cpus)
            self.folder = TrialFolder(self._storage, storage) if self._storage else None
            out_dir = self.folder.out_dir if self.folder else os.path.join(self.logdir, RUN_DIR)
            super().setup({**base, **config, "out_dir": out_dir, "model_base_path": ""})
            os.makedirs(out_dir, exist_ok=True)
            config_mod.save(self.cfg)
            self.sweep_best: float | None = None

        def step(self) -> dict[str, Any]:
            result = super().step()
            result["step"] = self.env_steps
            result[FINISHED] = bool(result.get("done"))
            value = result.get(metric)
            improved = isinstance(value, (int, float)) and runs.is_better(float(value), self.sweep_best, mode)
            if improved:
                self.sweep_best = float(value)
                best_dir = runs.folder(self.cfg.out_dir, "best")
                os.makedirs(best_dir, exist_ok=True)
                self.save_checkpoint(best_dir)
            if self.folder is not None and (improved or result[FINISHED] or self.iteration % 10 == 0):
                self.folder.sync()
            return result

        def extra_state(self) -> dict:
            return {**super().extra_state(), "sweep_best": self.sweep_best}

        def load_extra_state(self, state: dict) -> None:
            super().load_extra_state(state)
            self.sweep_best = state.get("sweep_best")

    Trial.__name__ = Trial.__qualname__ = algo_cls.__name__
    return Trial


def _total_steps(wl, base: dict[str, Any], shared_dir: str) -> int:
    """Training steps a trial plans at these settings (the workload says how: steps, or epochs of its data)."""
    try:
        return int(wl.planned_steps(config_mod.build(wl.config, {**base, "out_dir": shared_dir})))
    except Exception:  # noqa: BLE001 - only sets the eval frequency; fall back to the workload's
        return 0


class LoopTrials:
    """Trials of a data-parallel workload (NMT, DCGAN, OCR): the shared loop on one worker, or a
    Ray Train run of --workers_per_trial; one report and checkpoint per evaluation."""

    def __init__(self, wl):
        self.wl = wl

    def check(self, sc: Any) -> None:
        """Any --workers_per_trial is fine."""

    def plan(self, sc: Any, base: dict[str, Any], space: dict[str, Any], explicit: dict[str, Any],
             shared: str) -> tuple[int, Callable[[dict], int] | None]:
        """(ASHA's max_t in eval reports, the steps a sampled config plans); spreads --evals_per_trial
        reports over the planned steps unless the eval frequency was given."""
        wl = self.wl
        steps = _total_steps(wl, base, shared)
        if steps and "steps_per_external_eval" not in explicit and "steps_per_external_eval" in base:
            base["steps_per_external_eval"] = max(1, math.ceil(steps / max(1, sc.evals_per_trial)))
            if "steps_per_stats" not in explicit:
                base["steps_per_stats"] = min(base["steps_per_stats"], base["steps_per_external_eval"])
        eval_every = base.get("steps_per_external_eval") or 10 * base.get("steps_per_stats", 100)
        max_t = math.ceil(steps / eval_every) if steps else 1000
        batches = (space.get("batch_size") or {}).get("choice") if isinstance(space.get("batch_size"), dict) else None
        if steps and batches:  # a plan in epochs makes more steps with smaller batches
            most = max(_total_steps(wl, {**base, "batch_size": b}, shared) for b in batches)
            max_t = max(max_t, math.ceil(most / eval_every))
        return max_t, lambda config: _total_steps(wl, {**base, **config}, shared)

    def trainable(self, sc: Any, base: dict[str, Any], metric: str, mode: str, shared: str, fits: int,
                  max_concurrent: int | None):
        """(the Tune trainable with its resources, trials at once, the checkpoint policy)."""
        from ray import tune

        workers = sc.workers_per_trial
        fn = tune.with_parameters(trainable, wl=self.wl, base=base, shared_dir=shared,
                                  storage=config_mod.abs_path(sc.storage_path), cpus=sc.cpus_per_trial, gpus=sc.gpus_per_trial, workers=workers)
        if workers > 1:  # the trial only drives its Ray Train run: a little memory, no CPU (the workers hold those)
            fn = tune.with_resources(fn, {"cpu": 0, "memory": DRIVER_MEMORY})
            max_concurrent = max_concurrent or fits
        else:
            fn = tune.with_resources(fn, {"cpu": sc.cpus_per_trial, "gpu": sc.gpus_per_trial})
        return fn, max_concurrent, tune.CheckpointConfig(num_to_keep=4 if sc.scheduler == "pbt" else 2)


class AlgorithmTrials:
    """Trials of an RL workload (DQN, PG): the algorithm is the Tune trainable; each training iteration
    is one result and one checkpoint; a trial ends when it solves the env or spends its budget."""

    def __init__(self, wl):
        self.wl = wl

    def check(self, sc: Any) -> None:
        if sc.workers_per_trial > 1:
            raise UserError(f"--workers_per_trial is for data-parallel workloads; {self.wl.name} trials scale "
                            "with --num_env_runners")

    def plan(self, sc: Any, base: dict[str, Any], space: dict[str, Any], explicit: dict[str, Any],
             shared: str) -> tuple[int, None]:
        return _rl_max_iterations(self.wl, base, space), None  # trials end by their own `done`

    def trainable(self, sc: Any, base: dict[str, Any], metric: str, mode: str, shared: str, fits: int,
                  max_concurrent: int | None):
        from ray import tune
        from ray.tune import PlacementGroupFactory

        learner = {"CPU": sc.cpus_per_trial, **({"GPU": sc.gpus_per_trial} if sc.gpus_per_trial else {})}
        runners = [{"CPU": base["num_cpus_per_env_runner"]}] * int(base.get("num_env_runners", 0))
        if sc.gpus_per_trial:
            base["use_gpu"] = True
        fn = tune.with_resources(rl_trainable(self.wl.algorithm, base, metric, mode, sc.cpus_per_trial,
                                              config_mod.abs_path(sc.storage_path)),
                                 PlacementGroupFactory([learner, *runners], strategy="SPREAD"))
        checkpoints = tune.CheckpointConfig(num_to_keep=4 if sc.scheduler == "pbt" else 2, checkpoint_frequency=1,
                                            checkpoint_at_end=True)
        return fn, max_concurrent, checkpoints


TRIAL_KINDS = {"loop": LoopTrials, "algorithm": AlgorithmTrials}


def trials_of(wl) -> LoopTrials | AlgorithmTrials:
    """How the sweep runs this workload's trials, by the kind its contract declares."""
    return TRIAL_KINDS[wl.kind](wl)


def _rl_max_iterations(wl, base: dict[str, Any], space: dict[str, Any]) -> int:
    """ASHA's max_t for RL trials: the iterations of the longest budget the space can sample
    (PG: the fewest episodes per update make the most iterations)."""
    values = dict(base)
    spec = space.get("batch_episodes")
    if isinstance(spec, dict) and "choice" in spec:
        values["batch_episodes"] = min(spec["choice"])
    return max(1, config_mod.build(wl.config, values, "sweep config").max_iterations)
