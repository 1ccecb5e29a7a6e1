"""The Ray Train driver: `run(workload, cfg)` trains on `cfg.num_workers` Ray workers.

Three layers, as in Ray's own examples:
  * `scaling(cfg)` / `run_config(cfg)`: typed builders;
  * `train_loop_per_worker(config: dict)`: first line `Config(**config)`, then the shared loop;
  * `run(workload, cfg) -> dict`: joins or starts Ray, fits a `TensorflowTrainer`, exports.

The same command run again resumes from `out_dir/ckpt` and says so; `--max_failures`
lets Ray Train restart failed workers, which resume from the last checkpoint.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tfcluster import config as config_mod
from tfcluster import quiet, runs, storage
from tfcluster.train.loop import FAIL_AT_STEP_ENV, WorkerContext, latest_checkpoint, run_loop


def scaling(cfg: Any):
    from ray.train import ScalingConfig

    per_worker = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        per_worker["GPU"] = 1
    return ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=per_worker)


def run_config(cfg: Any, workload: str, **kwargs: Any):
    """Ray Train's RunConfig for a run of `cfg`: checkpoints in `--storage_path` (default out_dir/ray) under
    the workload's name, so a restarted worker and a rerun of the same command both find them; retries;
    quiet logging."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig

    kwargs.setdefault("name", workload)
    kwargs.setdefault("storage_path", runs.storage_root(cfg))
    return RunConfig(
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=max(1, cfg.keep_checkpoint_max)),
        # Ray Train's INFO lines ("Reporting training result N: TrainingReport(...)" per report,
        # worker-group start-up) stay in its log files; warnings and errors still show.
        logging_config=LoggingConfig(log_level="WARNING"),
        **kwargs,
    )


CHIEF_FILE = "chief.json"  # where the chief says which node it runs on (out_dir, for people and tests)
WORKERS_FILE = "workers.jsonl"  # one line per worker start: its node, GPUs and CUDA_VISIBLE_DEVICES


def own_gpus() -> list[str]:
    """Make this worker's TensorFlow see only the GPUs Ray gave it.

    Ray Train hands every worker on a node the node's whole set of assigned GPUs in
    CUDA_VISIBLE_DEVICES (for PyTorch, which picks its device by local rank); TensorFlow would
    take every visible GPU in each worker (memory on all of them, and MultiWorkerMirroredStrategy
    replicas per GPU). Called before TensorFlow initializes its devices.
    """
    import ray

    ids = [str(i) for i in ray.get_gpu_ids()]
    if ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    return ids


def _say_where(out_dir: str, ctx: WorkerContext, gpus: list[str]) -> None:
    import json
    import socket

    import ray

    where = {"rank": ctx.rank, "world_size": ctx.world_size, "host": socket.gethostname(), "pid": os.getpid(),
             "node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": gpus,
             "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "time": time.time()}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, WORKERS_FILE), "a") as f:
        f.write(json.dumps(where) + "\n")
    if ctx.is_chief:
        with open(os.path.join(out_dir, CHIEF_FILE), "w") as f:
            json.dump(where, f)


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker.

    The chief reports each eval-point checkpoint to Ray Train, which copies it into the run's
    storage, and uploads `best/` there too; a (re)started worker restores from
    `ray.train.get_checkpoint()`, so nothing depends on the disk of the node a worker ran on.
    """
    import tempfile

    import ray.train
    from tfcluster.train.loop import copy_checkpoint

    # The driver's bucket settings (AWS_*, GOOGLE_APPLICATION_CREDENTIALS), also when this cluster was
    # started without them: data and exports in s3:// / gs:// read the same buckets on every node.
    os.environ.update(config.get("storage_env") or {})
    if config.get("fail_at_step"):
        os.environ[FAIL_AT_STEP_ENV] = str(config["fail_at_step"])
    wl = config["workload"]  # the contract object itself, handed over by the driver (or a sweep trial)
    cfg = wl.config(**config["config"])
    tctx = ray.train.get_context()
    ctx = WorkerContext(rank=tctx.get_world_rank(), world_size=tctx.get_world_size())
    quiet.quiet_train_worker()
    gpus = own_gpus() if cfg.use_gpu else []
    quiet.warn_if_no_gpu(cfg.use_gpu, f"worker {ctx.rank} ({os.uname().nodename})")
    _say_where(cfg.out_dir, ctx, gpus)
    stored_run = tctx.get_storage()
    best_path = os.path.join(stored_run.experiment_fs_path, runs.BEST_DIR)

    def report(metrics: dict, ckpt: str | None, is_best: bool = False) -> None:
        values = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if is_best and ctx.is_chief:
            runs.upload_dir(os.path.join(cfg.out_dir, runs.BEST_DIR), stored_run.storage_filesystem, best_path)
            if not ckpt:  # the chief alone, after the loop (--avg_ckpts): storage's best/ is all that changes
                return
        if not (ckpt and ctx.is_chief):
            ray.train.report(values)
            return
        with tempfile.TemporaryDirectory(prefix="tfcluster-report-") as tmp:
            copy_checkpoint(ckpt, tmp)
            ray.train.report(values, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    # The newest checkpoint in storage (what Ray Train's get_checkpoint() names, or a newer one it
    # had not registered when a node went away), downloaded to this node.
    stored = runs.latest_stored_checkpoint(stored_run.storage_filesystem, stored_run.experiment_fs_path)
    with tempfile.TemporaryDirectory(prefix="tfcluster-restore-") as restore_dir:
        if stored is None:
            checkpoint = ray.train.get_checkpoint()
            if checkpoint is not None:
                checkpoint.to_directory(restore_dir)
        else:
            runs.download_dir(stored_run.storage_filesystem, stored, restore_dir)
        run_loop(lambda strategy: wl.task(cfg, strategy, ctx), cfg, ctx, report, restore_dir=restore_dir)


def needs(cfg: Any) -> list[runs.Need]:
    """What `--num_workers` workers ask of the Ray cluster."""
    n = cfg.num_workers
    return [
        runs.Need("CPU", n * cfg.cpus_per_worker, f"--num_workers {n} x --cpus_per_worker {cfg.cpus_per_worker:g}",
                  "lower --num_workers or --cpus_per_worker"),
        runs.Need("GPU", n if cfg.use_gpu else 0, f"--use_gpu with --num_workers {n}", "drop --use_gpu or add GPU nodes"),
    ]


def fetch_best(cfg: Any, fs: Any, experiment: str, last: Any) -> None:
    """Make the run's `best/` in out_dir (what export reads) the one in storage, or the last checkpoint
    when no evaluation chose one: the chief may have written its copy on another node."""
    best = os.path.join(cfg.out_dir, runs.BEST_DIR)
    if runs.download_dir(fs, os.path.join(experiment, runs.BEST_DIR), best) or last is None:
        return
    import shutil

    shutil.rmtree(best, ignore_errors=True)
    last.to_directory(best)


def run(wl: Any, cfg: Any) -> dict[str, Any]:
    """Train workload `wl` (its contract object, which the entry point looked up) with `cfg` on Ray;
    export at the end."""
    from ray.train.tensorflow import TensorflowTrainer

    cfg = config_mod.absolute_paths(cfg)  # workers do not share the driver's working directory
    fs, experiment = runs.storage_fs(runs.join(runs.storage_root(cfg), wl.name))
    resumed = latest_checkpoint(cfg.out_dir) is not None or runs.exists(fs, experiment)
    cfg = wl.prepare(cfg)  # e.g. build vocabularies into out_dir, once, before workers start
    runs.start(wl.name, cfg, resumed)
    runs.init_ray(cfg.address)
    runs.require(needs(cfg), cfg.wait_for_resources)
    trainer = TensorflowTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config={
            "workload": wl,
            "config": config_mod.to_dict(cfg),
            "fail_at_step": os.environ.get(FAIL_AT_STEP_ENV),  # fault injection for the restart test
            "storage_env": storage.worker_env(),
        },
        scaling_config=scaling(cfg),
        run_config=run_config(cfg, wl.name),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}")
    metrics = dict(result.metrics or {})
    fetch_best(cfg, fs, experiment, result.checkpoint)
    path = runs.export(wl, cfg, "best")
    if path:
        metrics["export_path"] = path
    return metrics
