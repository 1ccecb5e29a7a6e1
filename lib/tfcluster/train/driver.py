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
import sys
import time
from typing import Any

from tfcluster import config as config_mod
from tfcluster import quiet
from tfcluster.errors import UserError
from tfcluster.train.loop import FAIL_AT_STEP_ENV, WorkerContext, latest_checkpoint, run_loop


def _without_job_settings(runtime_env: dict) -> dict:
    """`runtime_env` less what the submitted job's own runtime env already sets.

    Inside a job (`ray job submit`, `tfcluster submit --env K=V`), Ray refuses a driver
    runtime env that names a field or an environment variable the job's names too; the
    job's values win, since its workers get them anyway.
    """
    import json

    from ray.job_config import JobConfig

    injected = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # what ray.init merges with (ray/_private/worker.py)
    if not injected:
        return runtime_env
    job_env = dict(JobConfig.from_json(json.loads(injected)).runtime_env or {})
    taken = set(job_env.get("env_vars") or {})
    out = {k: v for k, v in runtime_env.items() if k == "env_vars" or k not in job_env}
    out["env_vars"] = {k: v for k, v in runtime_env["env_vars"].items() if k not in taken}
    return out


def init_ray(address: str = "") -> None:
    """Join `address` (or RAY_ADDRESS, e.g. inside `ray job submit`), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    # The local driver and its workers must import tfcluster from this checkout.
    lib = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    pythonpath = os.pathsep.join(p for p in (lib, os.environ.get("PYTHONPATH", "")) if p)
    runtime_env = _without_job_settings({
        "env_vars": {"PYTHONPATH": pythonpath, "KERAS_BACKEND": "tensorflow", **quiet.RAY_ENV},
        "worker_process_setup_hook": quiet.SETUP_HOOK,
    })
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, logging_level="ERROR")
        else:
            # "local": a new Ray for this run, never a `ray start` cluster found on the machine.
            ray.init(address="local", runtime_env=runtime_env, include_dashboard=False, logging_level="ERROR")
    except ConnectionError as e:
        raise UserError(f"cannot reach the Ray cluster at {address!r}: {e}") from None


def check_resources(cfg: Any) -> None:
    """Fail fast (one line) when the cluster cannot host the workers, instead of waiting forever."""
    import ray

    res = ray.cluster_resources()
    need_cpu = cfg.num_workers * cfg.cpus_per_worker
    if res.get("CPU", 0) < need_cpu:
        raise UserError(
            f"--num_workers {cfg.num_workers} x --cpus_per_worker {cfg.cpus_per_worker:g} needs {need_cpu:g} CPUs, "
            f"the Ray cluster has {res.get('CPU', 0):g}; lower --num_workers or --cpus_per_worker"
        )
    if cfg.use_gpu and res.get("GPU", 0) < cfg.num_workers:
        raise UserError(
            f"--use_gpu with --num_workers {cfg.num_workers} needs {cfg.num_workers} GPUs, "
            f"the Ray cluster has {res.get('GPU', 0):g}; drop --use_gpu or add GPU nodes"
        )


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


def resolve(workload: str, argv: list[str] | None = None, *, description: str | None = None):
    """Parse the flags of `workload` into its Config (preset < saved config < flags)."""
    import argparse

    from tfcluster import workloads

    wl = workloads.get(workload)
    parser = argparse.ArgumentParser(prog=f"train_{workload}.py", description=description or wl.description)
    config_mod.add_config_flags(parser, wl.config)
    cfg, _ = config_mod.config_from_args(wl.config, parser.parse_args(argv))
    return cfg


def run(workload: str, cfg: Any) -> dict[str, Any]:
    """Train `workload` with `cfg` on Ray; export to `cfg.model_base_path` at the end."""
    from ray.train.tensorflow import TensorflowTrainer
    from tfcluster import workloads

    wl = workloads.get(workload)
    cfg = config_mod.absolute_paths(cfg)  # workers do not share the driver's working directory
    resumed = latest_checkpoint(cfg.out_dir) is not None
    cfg = wl.prepare(cfg)  # e.g. build vocabularies into out_dir, once, before workers start
    config_mod.save(cfg)
    print(f"# {workload}: {'resuming in' if resumed else 'new run in'} {cfg.out_dir}", flush=True)
    print("# hyperparameters\n" + config_mod.table(cfg), flush=True)
    init_ray(cfg.address)
    check_resources(cfg)
    trainer = TensorflowTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config={
            "workload": workload,
            "config": config_mod.to_dict(cfg),
            "fail_at_step": os.environ.get(FAIL_AT_STEP_ENV),  # fault injection for the restart test
        },
        scaling_config=scaling(cfg),
        run_config=run_config(cfg, workload),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}")
    metrics = dict(result.metrics or {})
    if cfg.model_base_path:
        path = wl.export(cfg, "best")
        print(f"# exported {path}", flush=True)
        metrics["export_path"] = path
    return metrics


def main(workload: str, argv: list[str] | None = None) -> int:
    """Train a data-parallel workload (or run its offline mode: inference, visualize)."""
    from tfcluster import workloads

    cfg = resolve(workload, argv)
    if workloads.get(workload).offline(cfg):
        return 0
    run(workload, cfg)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from tfcluster import workloads

    sys.exit(workloads.main(sys.argv[1], sys.argv[2:]))
