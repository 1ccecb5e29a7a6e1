"""Ray Tune sweeps over a workload's hyperparameters, running the train jobs' own code.

Each trial is the train jobs' own run on a sampled Config: the shared loop (NMT, DCGAN, OCR; one
worker or a Ray Train run of `--workers_per_trial`) or the RL algorithm (DQN, PG), as the workload's
contract declares (`tfcluster.tune.trials`).

Every trial's run folder (config.json, metrics.jsonl, best/) is in the experiment's storage
(`--storage_path`, local/NFS or a URI such as s3://bucket/sweeps): on a shared path the trial
works there; with a URI it works in its node's scratch folder and copies those files up at
each eval point. results.csv and best_config.json name those storage folders, and
`--export_best` and `--resume` read them from storage, so no trial depends on a disk that
goes away with its node.

The sweep adds only the search space (`tfcluster.tune.spaces`). This module holds the sweep's settings,
the scheduler and search, and the driver; the trial kinds are `tune/trials.py`, the trial folders in
storage `tune/folders.py`, the results, table and plot `tune/report.py`. It receives its workload
(`tfcluster.sweep_cli` looks it up).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
import time
from typing import Any, Literal

from tfcluster import config as config_mod
from tfcluster import runs
from tfcluster.errors import UserError
from tfcluster.tune import spaces
from tfcluster.tune.folders import SHARED_DIR, in_trial
from tfcluster.tune.report import read_json, summarize
from tfcluster.tune.trials import trials_of


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """The sweep's own settings (the workload's settings are its Config, parsed beside them)."""

    workload: str = dataclasses.field(default="", metadata={"flag": False})
    num_samples: int = 8
    """Trials to run."""
    scheduler: Literal["asha", "pbt", "fifo"] = "asha"
    """Trial scheduler: asha (stops bad trials early), pbt (population based training), fifo."""
    search: Literal["random", "optuna"] = "random"
    """Search algorithm: random sampling or Optuna's TPE."""
    max_concurrent_trials: int = 0
    """Trials running at once; 0: as many as the cluster's resources allow."""
    metric: str = ""
    """Metric to optimize (default: the workload's eval metric)."""
    mode: Literal["", "max", "min"] = ""
    """max or min (default: the workload's)."""
    time_budget_s: float = 0.0
    """Stop the sweep after this many seconds; 0: no limit."""
    grace_period: int = 1
    """ASHA: eval reports every trial gets before it can be stopped."""
    evals_per_trial: int = 4
    """Eval reports per trial when --steps_per_external_eval is not given."""
    storage_path: str = "runs/sweeps"
    """Where experiments go (a local/NFS path, or a URI such as s3://bucket/sweeps)."""
    name: str = ""
    """Experiment name (default: <workload>-<time>); --resume needs it."""
    resume: bool = False
    """Continue the interrupted experiment storage_path/name."""
    cpus_per_trial: float = 1.0
    """CPUs per trial, for its learner or workers; RL env runners add --num_cpus_per_env_runner each."""
    gpus_per_trial: float = 0.0
    """GPUs per trial, fractions allowed."""
    workers_per_trial: int = 1
    """Ray Train workers per trial (data-parallel workloads); they share --cpus_per_trial and --gpus_per_trial."""
    export_best: bool = False
    """Export the best trial to --model_base_path."""
    search_space: str = ""
    """JSON/YAML file of field -> spec overriding the workload's default space."""
    seed: int = dataclasses.field(default=0, metadata={"flag": False})


def parse(wl: Any, argv: list[str] | None = None) -> tuple[SweepConfig, Any, dict[str, Any]]:
    """(sweep settings, base workload Config, the workload flags given explicitly) for workload `wl`."""
    workload = wl.name
    parser = runs.parser(wl, prog=f"sweep_{workload}.py", description=f"Ray Tune sweep over {workload} hyperparameters", allow_abbrev=False,
                         skip=frozenset({"storage_path"}))  # the sweep's --storage_path holds its trials' runs
    config_mod.add_config_flags(parser, SweepConfig, title="sweep settings", hparams=False)
    ns = parser.parse_args(argv)
    sweep_names = {f.name for f in dataclasses.fields(SweepConfig) if f.metadata.get("flag", True)}
    sc = config_mod.build(SweepConfig, {"workload": workload, "seed": getattr(ns, "seed", 0),
                                        **{k: v for k, v in vars(ns).items() if k in sweep_names}}, "sweep flags")
    cfg, explicit = runs.resolve(wl, ns, resume=False)
    return sc, cfg, explicit


def _scheduler(sc: SweepConfig, space: dict[str, Any], max_t: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if sc.scheduler == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=max(max_t, 1),
                             grace_period=max(1, min(sc.grace_period, max_t)), reduction_factor=2)
    if sc.scheduler == "pbt":
        mutations = {k: spaces.to_tune(v) for k, v in space.items() if k in spaces.MUTABLE and isinstance(v, dict)}
        if not mutations:
            raise UserError("--scheduler pbt needs a float knob to perturb (learning_rate, dropout, beta1, discount) left unfixed")
        bounds = {k: spaces.bounds(space[k]) for k in mutations}
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=1,
                                       hyperparam_mutations=mutations,
                                       custom_explore_fn=functools.partial(_clip, bounds=bounds))
    return FIFOScheduler()


def _clip(config: dict, *, bounds: dict[str, tuple[float, float] | None]) -> dict:
    """PBT scales a value by 0.8 or 1.2 with no regard for its range: keep it inside the space."""
    for k, b in bounds.items():
        if b is not None and isinstance(config.get(k), (int, float)):
            config[k] = min(max(config[k], b[0]), b[1])
    return config


def _search_alg(sc: SweepConfig):
    if sc.search == "optuna":
        if sc.scheduler == "pbt":
            raise UserError("--scheduler pbt samples its own configs; use --search random with it")
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=sc.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=sc.seed)  # --seed fixes the sampled configs too


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _check(sc: SweepConfig, cfg: Any, wl) -> None:
    if sc.num_samples < 1:
        raise UserError(f"--num_samples must be at least 1, got {sc.num_samples}")
    if sc.workers_per_trial < 1:
        raise UserError(f"--workers_per_trial must be at least 1, got {sc.workers_per_trial}")
    trials_of(wl).check(sc)
    if sc.cpus_per_trial <= 0 or sc.gpus_per_trial < 0:
        raise UserError("--cpus_per_trial must be positive and --gpus_per_trial 0 or more")
    if sc.workers_per_trial > 1 and sc.cpus_per_trial < sc.workers_per_trial:
        raise UserError(f"--workers_per_trial {sc.workers_per_trial} needs --cpus_per_trial of at least "
                        f"{sc.workers_per_trial} (one CPU per worker), got {sc.cpus_per_trial:g}")
    if sc.export_best and not cfg.model_base_path:
        raise UserError("--export_best needs --model_base_path")
    if sc.resume and not sc.name:
        raise UserError("--resume needs --name of the experiment to continue")


def _check_cluster(sc: SweepConfig, cfg: Any) -> int:
    """One line when no trial can ever fit (after waiting, when the cluster can grow); returns how many
    trials fit at once (CPU-wise)."""
    import ray

    need = sc.cpus_per_trial + getattr(cfg, "num_env_runners", 0) * getattr(cfg, "num_cpus_per_env_runner", 0)
    runs.require([runs.Need("CPU", need, "a trial (--cpus_per_trial, env runners)", "lower --cpus_per_trial"),
                  runs.Need("GPU", sc.gpus_per_trial, f"--gpus_per_trial {sc.gpus_per_trial:g}", "lower it or add GPU nodes")],
                 cfg.wait_for_resources)
    return max(1, int(ray.cluster_resources().get("CPU", 0) // need))


def run(wl: Any, sc: SweepConfig, cfg: Any, explicit: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) the sweep of workload `wl`; returns {"best": row, "export_path": ..., "experiment": dir}."""
    from ray import tune
    _check(sc, cfg, wl)
    metric, mode = sc.metric or wl.metric, sc.mode or wl.mode
    if not metric or not mode:
        raise UserError("--metric and --mode are required for this workload")
    name = sc.name or f"{sc.workload}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = config_mod.abs_path(sc.storage_path)
    exp = runs.join(storage, name)  # where Tune keeps the experiment: its trials' run folders too
    remote = "://" in storage
    # the driver's own files: in the experiment folder, or a local copy that is uploaded (URI storage)
    exp_dir = os.path.join(tempfile.gettempdir(), "tfcluster-sweeps", name) if remote else exp

    cfg = config_mod.absolute_paths(cfg)  # trials run in their own folders
    base = config_mod.to_dict(cfg)
    fields = set(base)
    overrides = spaces.load_overrides(sc.search_space) if sc.search_space else None
    space = spaces.search_space(wl.search_space(base), set(explicit), overrides, fields)
    sampled = sorted(space)
    shared = os.path.join(exp_dir, SHARED_DIR)
    os.makedirs(shared, exist_ok=True)
    # validate flags and build shared files once, before any trial
    prepared = wl.prepare(config_mod.build(wl.config, {**base, "out_dir": shared}))
    base.update({k: v for k, v in config_mod.to_dict(prepared).items() if k != "out_dir"})
    if remote:  # trials on other nodes copy them from storage
        runs.upload_dir(shared, *runs.storage_fs(runs.join(exp, SHARED_DIR)))
    trials = trials_of(wl)
    max_t, total_steps = trials.plan(sc, base, space, explicit, shared)
    base["model_base_path"] = ""
    base["address"] = ""
    print(f"# sweep {sc.workload}: {sc.num_samples} trials, {sc.scheduler}/{sc.search}, {metric} ({mode}) in {exp}",
          flush=True)
    print("# search space\n" + "\n".join(f"  {k}: {json.dumps(v)}" for k, v in sorted(space.items())), flush=True)

    runs.init_ray(cfg.address)
    fits = _check_cluster(sc, cfg)
    max_concurrent = sc.max_concurrent_trials or None
    fn, max_concurrent, checkpoints = trials.trainable(sc, base, metric, mode, shared, fits, max_concurrent)
    param_space = spaces.tune_space(space)
    run_cfg = tune.RunConfig(name=name, storage_path=storage, verbose=1, checkpoint_config=checkpoints)
    if sc.resume and tune.Tuner.can_restore(exp):
        print(f"# resuming {exp}", flush=True)
        tuner = tune.Tuner.restore(exp, trainable=fn, resume_unfinished=True, resume_errored=True)
    else:
        if sc.resume:
            print(f"# nothing to resume in {exp}; starting it", flush=True)
        tuner = tune.Tuner(
            fn,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, num_samples=sc.num_samples,
                scheduler=_scheduler(sc, space, max_t), search_alg=_search_alg(sc),
                max_concurrent_trials=max_concurrent,
                time_budget_s=sc.time_budget_s or None, trial_dirname_creator=_trial_dirname,
            ),
            run_config=run_cfg,
        )
    grid = tuner.fit()
    best = summarize(grid, sc, metric, mode, exp, sampled, total_steps, local_dir=exp_dir if remote else None)
    out: dict[str, Any] = {"best": best, "experiment": exp, "results": runs.join(exp, "results.csv")}
    if sc.export_best:
        if not best:
            raise UserError("no trial reported the metric; nothing to export")
        out["export_path"] = export_trial(wl, best["out_dir"], cfg.model_base_path)
    return out


def export_trial(wl, run_folder: str, model_base_path: str) -> str | None:
    """Export a trial's best checkpoint from its run folder in storage (a path or URI)."""
    if "://" not in run_folder:
        best_cfg = config_mod.load(wl.config, run_folder)
        return runs.export(wl, dataclasses.replace(best_cfg, model_base_path=model_base_path), "best")
    with tempfile.TemporaryDirectory(prefix="tfcluster-trial-") as local:
        if not runs.download_dir(*runs.storage_fs(run_folder), local):
            raise UserError(f"no trial run folder at {run_folder}")
        saved = read_json(runs.join(run_folder, config_mod.CONFIG_FILE))
        # the trial worked in its node's scratch folder: its files are here now
        values = in_trial(saved, saved["out_dir"], local)
        best_cfg = config_mod.build(wl.config, {**values, "out_dir": local, "model_base_path": model_base_path},
                                    "trial config")
        return runs.export(wl, best_cfg, "best")
