"""Ray Tune sweeps over a workload's hyperparameters, running the train jobs' own code.

NMT and DCGAN: each trial is a function trainable that calls `tfcluster.train.loop.run_loop`
(the loop `jobs/train_<workload>.py` runs) in its own out_dir, `<trial folder>/run`, on
one worker or, with `--workers_per_trial N`, as a Ray Train run of N workers started from
the trial. It reports the eval metric with a checkpoint at every eval point, so ASHA can
stop bad trials early and PBT can exploit from another trial's checkpoint.

DQN and policy gradient: the algorithm (`tfcluster.rl.Algorithm`, a `ray.tune.Trainable`)
is the trial; each training iteration is one result, checkpointed every iteration.

Every trial's run folder (config.json, metrics.jsonl, best/) is in the experiment's storage
(`--storage_path`, local/NFS or a URI such as s3://bucket/sweeps): on a shared path the trial
works there; with a URI it works in its node's scratch folder and copies those files up at
each eval point. results.csv and best_config.json name those storage folders, and
`--export_best` and `--resume` read them from storage, so no trial depends on a disk that
goes away with its node.

The sweep adds only the search space (`tfcluster.tune.spaces`).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Callable, Literal

from tfcluster import config as config_mod
from tfcluster import runs
from tfcluster.errors import UserError
from tfcluster.tune import spaces

SHARED_DIR = "prepared"  # driver-side prepare() output (e.g. vocabularies), copied into each trial
RUN_DIR = "run"  # the trial's out_dir inside its Tune trial folder
DRIVER_MEMORY = 512 * 1024**2  # what a multi-worker trial's own process reserves (it holds no CPU)


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


def parse(workload: str, argv: list[str] | None = None) -> tuple[SweepConfig, Any, dict[str, Any]]:
    """(sweep settings, base workload Config, the workload flags given explicitly)."""
    from tfcluster import runs, workloads

    wl = workloads.get(workload)
    parser = runs.parser(wl, prog=f"sweep_{workload}.py", description=f"Ray Tune sweep over {workload} hyperparameters", allow_abbrev=False,
                         skip=frozenset({"storage_path"}))  # the sweep's --storage_path holds its trials' runs
    config_mod.add_config_flags(parser, SweepConfig, title="sweep settings", hparams=False)
    ns = parser.parse_args(argv)
    sweep_names = {f.name for f in dataclasses.fields(SweepConfig) if f.metadata.get("flag", True)}
    sc = config_mod.build(SweepConfig, {"workload": workload, "seed": getattr(ns, "seed", 0),
                                        **{k: v for k, v in vars(ns).items() if k in sweep_names}}, "sweep flags")
    cfg, explicit = runs.resolve(wl, ns, resume=False)
    return sc, cfg, explicit


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


# ---------------------------------------------------------------------------- the trial


def _restore_into(checkpoint, out_dir: str) -> None:
    """Make a Tune checkpoint (resume, or PBT's exploit) the trial's out_dir/ckpt."""
    from tfcluster import runs

    dest = runs.folder(out_dir, "last")
    with checkpoint.as_directory() as src:
        if os.path.exists(dest):
            shutil.rmtree(dest)
        shutil.copytree(src, dest)


class TrialFolder:
    """A trial's run folder in the experiment's storage.

    Local or NFS storage: out_dir is that folder. A URI (s3://, gs://): out_dir is the trial's
    working folder on its node, and `sync` copies the run's files (config.json, metrics.jsonl,
    vocabularies, best/; not ckpt/, which Tune keeps in storage itself) to the storage folder.
    """

    def __init__(self, storage, storage_uri: str) -> None:  # Ray's StorageContext, and the sweep's --storage_path
        import pyarrow.fs

        self.fs = storage.storage_filesystem
        self.path = "/".join([storage.trial_fs_path, RUN_DIR])
        self.remote = not isinstance(self.fs, pyarrow.fs.LocalFileSystem)
        self.out_dir = os.path.join(storage.trial_working_directory, RUN_DIR) if self.remote else self.path
        self.uri = runs.join(storage_uri, storage.experiment_dir_name, storage.trial_dir_name)
        self.experiment = storage.experiment_fs_path

    def sync(self) -> None:
        if not self.remote:
            return
        import pyarrow.fs

        self.fs.create_dir(self.path, recursive=True)
        for name in os.listdir(self.out_dir):
            src = os.path.join(self.out_dir, name)
            if os.path.isfile(src) and not name.startswith("."):
                pyarrow.fs.copy_files(src, f"{self.path}/{name}", source_filesystem=pyarrow.fs.LocalFileSystem(),
                                      destination_filesystem=self.fs)
        best = runs.folder(self.out_dir, "best")
        if os.path.isdir(best):
            runs.upload_dir(best, self.fs, f"{self.path}/{runs.BEST_DIR}")

    def copy_prepared(self, shared_dir: str) -> None:
        """The driver's prepared files (vocabularies, image index) into out_dir, from storage."""
        src = shared_dir
        if self.remote:
            src = os.path.join(os.path.dirname(self.out_dir), SHARED_DIR)
            if not os.path.isdir(src):
                runs.download_dir(self.fs, f"{self.experiment}/{SHARED_DIR}", src)
        for name in os.listdir(src):
            s, d = os.path.join(src, name), os.path.join(self.out_dir, name)
            if os.path.isfile(s) and not os.path.exists(d) and name != config_mod.CONFIG_FILE:
                shutil.copy(s, d)


def _in_trial(values: dict[str, Any], shared_dir: str, out_dir: str) -> dict[str, Any]:
    """Settings that name a prepared file point at the trial's own copy."""
    prefix = shared_dir.rstrip("/") + "/"
    return {k: out_dir + "/" + v[len(prefix):] if isinstance(v, str) and v.startswith(prefix) else v
            for k, v in values.items()}


def trainable(config: dict, *, workload: str, base: dict, shared_dir: str, storage: str, cpus: float,
              gpus: float = 0.0, workers: int = 1) -> None:
    """One trial: the base Config with this trial's sampled values, trained by the shared loop."""
    import ray.tune as tune
    from tfcluster import workloads
    from tfcluster.train.loop import WorkerContext, copy_checkpoint, run_loop

    if workers == 1:
        _limit_threads(cpus)
    wl = workloads.get(workload)
    folder = TrialFolder(tune.get_context().get_storage(), storage)
    out_dir = folder.out_dir
    settings = {**_in_trial(base, shared_dir, out_dir), **config, "out_dir": out_dir, "model_base_path": ""}
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
        _restore_into(checkpoint, out_dir)

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
        _train_workers(workload, cfg, gpus / workers, report)
    else:
        run_loop(lambda strategy: wl.task(cfg, strategy, WorkerContext()), cfg, WorkerContext(), report)
    folder.sync()


def _train_workers(workload: str, cfg: Any, gpus_per_worker: float, report) -> None:
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
        train_loop_config={"workload": workload, "config": config_mod.to_dict(cfg)},
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


# ---------------------------------------------------------------------------- the driver


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


def _total_steps(wl, base: dict[str, Any], shared_dir: str) -> int:
    """Training steps a trial plans at these settings (the workload says how: steps, or epochs of its data)."""
    try:
        return int(wl.planned_steps(config_mod.build(wl.config, {**base, "out_dir": shared_dir})))
    except Exception:  # noqa: BLE001 - only sets the eval frequency; fall back to the workload's
        return 0


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _metric_series(result, metric: str) -> tuple[list[int], list[float]]:
    df = result.metrics_dataframe
    if df is None or metric not in getattr(df, "columns", []):
        return [], []
    df = df.dropna(subset=[metric])
    return [int(x) for x in df["training_iteration"]], [float(x) for x in df[metric]]


def _read_json(uri_or_path: str) -> dict[str, Any]:
    fs, path = runs.storage_fs(uri_or_path)
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def summarize(grid, sc: SweepConfig, metric: str, mode: str, exp: str, sampled: list[str],
              total_steps=None, local_dir: str | None = None) -> dict[str, Any]:
    """Write results.csv, best_config.json and the plot into the experiment `exp` (a path or URI; the
    files are written in `local_dir` first when it is a URI); print the table; return the best trial's
    row, whose out_dir is the trial's run folder in storage."""
    exp_dir = local_dir or exp
    os.makedirs(exp_dir, exist_ok=True)
    rows: list[dict[str, Any]] = []
    series: dict[str, tuple[list[int], list[float]]] = {}
    for result in grid:
        cfg = result.config or {}
        its, vals = _metric_series(result, metric)
        trial_dir = result.path
        trial_id = os.path.basename(trial_dir).replace("trial_", "") if trial_dir else "?"
        best = (max(vals) if mode == "max" else min(vals)) if vals else float("nan")
        last_step = int((result.metrics or {}).get("step", 0))
        planned = total_steps(cfg) if total_steps else 0
        finished = bool((result.metrics or {}).get(FINISHED)) or (planned > 0 and last_step >= planned)
        status = "ERROR" if result.error else ("DONE" if finished else "STOPPED")
        rows.append({"trial": trial_id, "status": status, "iterations": len(its),
                     "step": last_step, metric: best,
                     f"last_{metric}": vals[-1] if vals else float("nan"),
                     **{k: cfg.get(k) for k in sampled},
                     "out_dir": runs.join(exp, os.path.basename(trial_dir.rstrip("/")), RUN_DIR)})
        series[trial_id] = (its, vals)
    rows.sort(key=lambda r: r["trial"])
    cols = list(rows[0]) if rows else ["trial"]
    with open(os.path.join(exp_dir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    scored = [r for r in rows if r[metric] == r[metric]]
    best_row = (max if mode == "max" else min)(scored, key=lambda r: r[metric]) if scored else None
    plot_path = plot(series, metric, os.path.join(exp_dir, f"{metric.replace('/', '_')}.png"))
    print_table(rows, metric, sampled)
    if best_row is not None:
        full = _read_json(runs.join(best_row["out_dir"], config_mod.CONFIG_FILE))
        best = {"trial": best_row["trial"], "metric": metric, "mode": mode, "value": best_row[metric],
                "config": {k: best_row[k] for k in sampled}, "full_config": full, "out_dir": best_row["out_dir"]}
        with open(os.path.join(exp_dir, "best_config.json"), "w") as f:
            json.dump(best, f, indent=2, sort_keys=True)
            f.write("\n")
        print(f"# best trial {best_row['trial']}: {metric} {best_row[metric]:.4g} with "
              + ", ".join(f"{k}={best_row[k]!r}" for k in sampled), flush=True)
    if exp_dir != exp:
        import pyarrow.fs

        fs, path = runs.storage_fs(exp)
        for name in os.listdir(exp_dir):
            if os.path.isfile(os.path.join(exp_dir, name)):
                pyarrow.fs.copy_files(os.path.join(exp_dir, name), f"{path}/{name}", destination_filesystem=fs)
    print(f"# results {runs.join(exp, 'results.csv')}, plot {runs.join(exp, os.path.basename(plot_path))}",
          flush=True)
    return best_row or {}


def plot(series: dict[str, tuple[list[int], list[float]]], metric: str, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for trial, (its, vals) in sorted(series.items()):
        if its:
            ax.plot(its, vals, marker="o", label=trial)
    ax.set_xlabel("training iteration (eval reports)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial")
    if any(its for its, _ in series.values()):
        ax.legend(fontsize="small", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4g}"
    return ("''" if v == "" else v) if isinstance(v, str) else str(v)


def print_table(rows: list[dict[str, Any]], metric: str, sampled: list[str]) -> None:
    cols = ["trial", "status", "iterations", "step", metric, *sampled]
    table = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)), flush=True)
    for t in table:
        print("  ".join(x.ljust(w) for x, w in zip(t, widths)), flush=True)


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

    from tfcluster import runs

    need = sc.cpus_per_trial + getattr(cfg, "num_env_runners", 0) * getattr(cfg, "num_cpus_per_env_runner", 0)
    runs.require([runs.Need("CPU", need, "a trial (--cpus_per_trial, env runners)", "lower --cpus_per_trial"),
                  runs.Need("GPU", sc.gpus_per_trial, f"--gpus_per_trial {sc.gpus_per_trial:g}", "lower it or add GPU nodes")],
                 cfg.wait_for_resources)
    return max(1, int(ray.cluster_resources().get("CPU", 0) // need))


def run(sc: SweepConfig, cfg: Any, explicit: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) the sweep; returns {"best": row, "export_path": ..., "experiment": dir}."""
    from ray import tune
    from tfcluster import runs, workloads

    wl = workloads.get(sc.workload)
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
        saved = _read_json(runs.join(run_folder, config_mod.CONFIG_FILE))
        # the trial worked in its node's scratch folder: its files are here now
        values = _in_trial(saved, saved["out_dir"], local)
        best_cfg = config_mod.build(wl.config, {**values, "out_dir": local, "model_base_path": model_base_path},
                                    "trial config")
        return runs.export(wl, best_cfg, "best")


class LoopTrials:
    """Trials of a data-parallel workload (NMT, DCGAN, OCR): the shared loop on one worker, or a
    Ray Train run of --workers_per_trial; one report and checkpoint per evaluation."""

    def __init__(self, wl):
        self.wl = wl

    def check(self, sc: SweepConfig) -> None:
        """Any --workers_per_trial is fine."""

    def plan(self, sc: SweepConfig, base: dict[str, Any], space: dict[str, Any], explicit: dict[str, Any],
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

    def trainable(self, sc: SweepConfig, base: dict[str, Any], metric: str, mode: str, shared: str, fits: int,
                  max_concurrent: int | None):
        """(the Tune trainable with its resources, trials at once, the checkpoint policy)."""
        from ray import tune

        workers = sc.workers_per_trial
        fn = tune.with_parameters(trainable, workload=self.wl.name, base=base, shared_dir=shared,
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

    def check(self, sc: SweepConfig) -> None:
        if sc.workers_per_trial > 1:
            raise UserError(f"--workers_per_trial is for data-parallel workloads; {self.wl.name} trials scale "
                            "with --num_env_runners")

    def plan(self, sc: SweepConfig, base: dict[str, Any], space: dict[str, Any], explicit: dict[str, Any],
             shared: str) -> tuple[int, None]:
        return _rl_max_iterations(self.wl, base, space), None  # trials end by their own `done`

    def trainable(self, sc: SweepConfig, base: dict[str, Any], metric: str, mode: str, shared: str, fits: int,
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


def main(workload: str, argv: list[str] | None = None) -> int:
    """What `jobs/sweep_<workload>.py` and `tfcluster sweep <workload>` run."""
    from tfcluster.errors import main_guard

    @main_guard
    def _main() -> int:
        sc, cfg, explicit = parse(workload, argv)
        run(sc, cfg, explicit)
        return 0

    return _main()
