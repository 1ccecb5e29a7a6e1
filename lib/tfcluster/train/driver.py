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
from tfcluster import quiet, runs
from tfcluster.train.loop import FAIL_AT_STEP_ENV, WorkerContext, latest_checkpoint, run_loop


def scaling(cfg: Any):
    from ray.train import ScalingConfig

    per_worker = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        per_worker["GPU"] = 1
    return ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=per_worker)


def run_config(cfg: Any, workload: str, **kwargs: Any):
    """Ray Train's RunConfig for a run of `cfg`: storage under out_dir, retries, quiet logging."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig

    kwargs.setdefault("name", f"{workload}-{time.strftime('%Y%m%d-%H%M%S')}")
    kwargs.setdefault("storage_path", config_mod.abs_path(os.path.join(cfg.out_dir, "ray")))
    return RunConfig(
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        # Ray Train's INFO lines ("Reporting training result N: TrainingReport(...)" per report,
        # worker-group start-up) stay in its log files; warnings and errors still show.
        logging_config=LoggingConfig(log_level="WARNING"),
        **kwargs,
    )


CHECKPOINT_KEY = "checkpoint_prefix"  # the chief's checkpoint path in a report, when asked for


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    from tfcluster import workloads

    if config.get("fail_at_step"):
        os.environ[FAIL_AT_STEP_ENV] = str(config["fail_at_step"])
    wl = workloads.get(config["workload"])
    cfg = wl.config(**config["config"])
    tctx = ray.train.get_context()
    ctx = WorkerContext(rank=tctx.get_world_rank(), world_size=tctx.get_world_size())
    quiet.quiet_train_worker()
    quiet.warn_if_no_gpu(cfg.use_gpu, f"worker {ctx.rank} ({os.uname().nodename})")

    forward_ckpt = bool(config.get("report_checkpoint"))  # a sweep trial copies eval checkpoints into Tune

    def report(metrics: dict, ckpt: str | None) -> None:
        values = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if forward_ckpt and ckpt and ctx.is_chief:
            values[CHECKPOINT_KEY] = ckpt
        ray.train.report(values)

    run_loop(lambda strategy: wl.task(cfg, strategy, ctx), cfg, ctx, report)


def needs(cfg: Any) -> list[runs.Need]:
    """What `--num_workers` workers ask of the Ray cluster."""
    n = cfg.num_workers
    return [
        runs.Need("CPU", n * cfg.cpus_per_worker, f"--num_workers {n} x --cpus_per_worker {cfg.cpus_per_worker:g}",
                  "lower --num_workers or --cpus_per_worker"),
        runs.Need("GPU", n if cfg.use_gpu else 0, f"--use_gpu with --num_workers {n}", "drop --use_gpu or add GPU nodes"),
    ]


def run(wl: Any, cfg: Any) -> dict[str, Any]:
    """Train workload `wl` (its contract object, or its name) with `cfg` on Ray; export at the end."""
    from ray.train.tensorflow import TensorflowTrainer
    from tfcluster import workloads

    wl = workloads.get(wl) if isinstance(wl, str) else wl
    cfg = config_mod.absolute_paths(cfg)  # workers do not share the driver's working directory
    resumed = latest_checkpoint(cfg.out_dir) is not None
    cfg = wl.prepare(cfg)  # e.g. build vocabularies into out_dir, once, before workers start
    runs.start(wl.name, cfg, resumed)
    runs.init_ray(cfg.address)
    runs.require(needs(cfg), cfg.wait_for_resources)
    trainer = TensorflowTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config={
            "workload": wl.name,
            "config": config_mod.to_dict(cfg),
            "fail_at_step": os.environ.get(FAIL_AT_STEP_ENV),  # fault injection for the restart test
        },
        scaling_config=scaling(cfg),
        run_config=run_config(cfg, wl.name),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}")
    metrics = dict(result.metrics or {})
    path = runs.export(wl, cfg, "best")
    if path:
        metrics["export_path"] = path
    return metrics
