"""The run system every workload shares, data-parallel loop, RL algorithm and sweep trial alike.

A run folder (`--out_dir`) holds:

    config.json     the resolved settings; a rerun of the same command reads them back (resume)
    metrics.jsonl   one record per stats/eval point (`tfcluster.metrics`)
    ckpt/           the last checkpoints: what a rerun or a restarted worker resumes from
    best/           the checkpoint with the best value of the workload's metric: what export reads

This module owns those names and everything said about a run once: flag parsing (defaults <
preset < saved config.json < flags), the "new run"/"resuming" banner, what "better" means
for `best/`, the check that the Ray cluster can host the run (or the wait for an autoscaler
to grow it) and the final export. `train/driver.py` + `train/loop.py` (the data-parallel
loop), `rl/algorithm.py` (DQN, PG) and `tune/sweep.py` (trials) all call it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from typing import Any

from tfcluster import config as config_mod
from tfcluster import quiet, storage
from tfcluster.errors import UserError

CKPT_DIR = "ckpt"
BEST_DIR = "best"


def folder(out_dir: str, which: str = "last") -> str:
    """The run's `best/` or last-checkpoint (`ckpt/`) folder."""
    return os.path.join(out_dir, BEST_DIR if which == "best" else CKPT_DIR)


# ---------------------------------------------------------------------------- flags


def parser(wl: Any, *, prog: str | None = None, description: str | None = None,
           allow_abbrev: bool = True, skip: frozenset[str] = frozenset()) -> argparse.ArgumentParser:
    """An argument parser with one flag per field of the workload's Config (but `skip`) and --hparams_path."""
    p = argparse.ArgumentParser(prog=prog or f"train_{wl.name}.py", description=description or wl.description,
                                allow_abbrev=allow_abbrev)
    config_mod.add_config_flags(p, wl.config, skip=skip)
    return p


def resolve(wl: Any, ns: argparse.Namespace, *, resume: bool = True) -> tuple[Any, dict[str, Any]]:
    """(Config, the flags given explicitly) from parsed flags: the workload picks its preset when
    --hparams_path is not given (RL: by --env), then defaults < preset < saved config < flags."""
    wl.preset(ns)
    return config_mod.config_from_args(wl.config, ns, resume=resume)


def parse(wl: Any, argv: list[str] | None = None) -> Any:
    """The Config of `jobs/train_<w>.py argv`."""
    cfg, _ = resolve(wl, parser(wl).parse_args(argv))
    return cfg


# ---------------------------------------------------------------------------- a run's life


def start(name: str, cfg: Any, resumed: bool) -> None:
    """Save config.json and say what this command does: a new run or a resumed one, with its settings."""
    config_mod.save(cfg)
    print(f"# {name}: {'resuming in' if resumed else 'new run in'} {cfg.out_dir}", flush=True)
    print("# hyperparameters\n" + config_mod.table(cfg), flush=True)


COMMANDS_FILE = "commands.jsonl"  # each training command run in the folder: time, argv, CPUs, GPUs


def record_command(out_dir: str, argv: list[str] | None = None) -> None:
    """Append the command line that trains in `out_dir` (argv, default sys.argv) to its commands.jsonl, with the
    machine's CPU and visible GPU counts: how each figure of the run was made."""
    import json
    import sys

    import tensorflow as tf

    args = [os.path.relpath(sys.argv[0]) if os.path.isabs(sys.argv[0]) else sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    record = {"time": round(time.time(), 3), "argv": ["python", *args], "cpus": os.cpu_count(),
              "gpus": len(tf.config.list_physical_devices("GPU"))}
    tf.io.gfile.makedirs(out_dir)
    path = os.path.join(out_dir, COMMANDS_FILE)
    old = tf.io.gfile.GFile(path).read() if tf.io.gfile.exists(path) else ""
    with tf.io.gfile.GFile(path, "w") as f:  # gfile has no append mode for every filesystem
        f.write(old + json.dumps(record) + "\n")


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Whether `value` beats `best` (None or NaN: nothing yet) for mode "max" or "min"; NaN never does."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return value > best if mode == "max" else value < best


def export(wl: Any, cfg: Any, which: str = "best") -> str | None:
    """Export the run's best (or last) checkpoint when --model_base_path is set; returns the version path."""
    if not cfg.model_base_path:
        return None
    path = wl.export(cfg, which)
    print(f"# exported {path}", flush=True)
    return path


# ---------------------------------------------------------------------------- storage


def storage_root(cfg: Any) -> str:
    """Where Ray Train keeps this run's checkpoints: --storage_path, else out_dir/ray."""
    return getattr(cfg, "storage_path", "") or config_mod.abs_path(os.path.join(cfg.out_dir, "ray"))


# Local paths and URIs alike (tfcluster.storage): the AWS environment variables reach plain s3:// URIs.
join = storage.join
storage_fs = storage.filesystem


def exists(fs: Any, path: str) -> bool:
    import pyarrow.fs

    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def upload_dir(local_dir: str, fs: Any, path: str) -> None:
    """Replace folder `path` on `fs` with the files of `local_dir`."""
    import pyarrow.fs

    if exists(fs, path):
        fs.delete_dir(path)
    fs.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(local_dir, path, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs,
                          use_threads=False)


def download_dir(fs: Any, path: str, local_dir: str) -> bool:
    """Replace `local_dir` with the files of folder `path` on `fs`; False when there is no such folder."""
    import shutil

    import pyarrow.fs

    if not exists(fs, path):
        return False
    shutil.rmtree(local_dir, ignore_errors=True)
    os.makedirs(local_dir, exist_ok=True)
    pyarrow.fs.copy_files(path, local_dir, source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    return True


def checkpoint_step(prefix: str) -> int:
    """The step of a CheckpointManager prefix (`.../ckpt-120` -> 120), or -1."""
    tail = os.path.basename(prefix).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _complete_step(fs: Any, folder_path: str) -> int:
    """The step of the TensorFlow checkpoint in `folder_path` (`ckpt-N.index` and every data shard
    present), or -1: a folder half-written when its node went away is not a checkpoint."""
    import pyarrow.fs

    names = {os.path.basename(i.path) for i in fs.get_file_info(pyarrow.fs.FileSelector(folder_path))}
    best = -1
    for name in names:
        if not name.endswith(".index"):
            continue
        prefix = name[: -len(".index")]
        shards = [n for n in names if n.startswith(prefix + ".data-")]
        total = shards[0].rsplit("-of-", 1)[-1] if shards else ""
        if total.isdigit() and len(shards) == int(total):
            best = max(best, checkpoint_step(prefix))
    return best


def latest_stored_checkpoint(fs: Any, experiment_path: str) -> str | None:
    """The folder of the newest complete checkpoint a run's chief reported into storage.

    Ray Train's `get_checkpoint()` names the newest checkpoint its controller has registered;
    one reported just before a node was lost can be in storage and not yet registered, so the
    folders themselves are read (newest step wins).
    """
    import pyarrow.fs

    if not exists(fs, experiment_path):
        return None
    found = [(i.path, _complete_step(fs, i.path)) for i in fs.get_file_info(pyarrow.fs.FileSelector(experiment_path))
             if i.type == pyarrow.fs.FileType.Directory and os.path.basename(i.path).startswith("checkpoint_")]
    found = [f for f in found if f[1] >= 0]
    return max(found, key=lambda f: f[1])[0] if found else None


# ---------------------------------------------------------------------------- the Ray cluster


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
        # Bucket endpoint and credentials (AWS_*, GOOGLE_APPLICATION_CREDENTIALS) reach workers on every node.
        "env_vars": {"PYTHONPATH": pythonpath, "KERAS_BACKEND": "tensorflow", **quiet.RAY_ENV, **storage.worker_env()},
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



# ---------------------------------------------------------------------------- resources


@dataclasses.dataclass(frozen=True)
class Need:
    """`amount` of a Ray resource ("CPU", "GPU") that `because` (the flags) asks for; `fix` says how to ask less."""

    resource: str
    amount: float
    because: str
    fix: str

    def message(self, have: float) -> str:
        unit = f"{self.resource}s" if self.amount != 1 else self.resource
        return f"{self.because} needs {self.amount:g} {unit}, the Ray cluster has {have:g}; {self.fix}"


AUTOSCALER_WAIT_S = 1800.0  # how long a run waits for an autoscaler when --wait_for_resources is not given
WAIT_POLL_S = 2.0
WAIT_REPORT_S = 30.0


def _missing(needs: list[Need]) -> list[tuple[Need, float]]:
    import ray

    res = ray.cluster_resources()
    return [(n, res.get(n.resource, 0.0)) for n in needs if n.amount > 0 and res.get(n.resource, 0.0) < n.amount]


def autoscaler_configured() -> bool:
    """Whether the cluster can grow: a Ray autoscaler with node types it may launch (KubeRay's
    `enableInTreeAutoscaling`, `ray up`); a plain `ray start` cluster's read-only monitor does not count."""
    import json

    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

        if not _internal_kv_initialized():
            return False
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        if not raw:
            return False
        report = json.loads(raw).get("autoscaler_report") or {}
    except Exception:  # noqa: BLE001 - no answer: treat as a fixed-size cluster
        return False
    # A read-only monitor reports only the nodes that exist; an autoscaler reports launches
    # and, when idle, the node types it may add.
    return bool(report.get("pending_launches") or report.get("pending_nodes")
                or any(not str(t).startswith("node_") for t in (report.get("active_nodes") or {})))


def require(needs: list[Need], wait_s: float = 0.0) -> None:
    """Check that the Ray cluster can host `needs`; one line naming the flags when it cannot.

    With `wait_s` > 0 (`--wait_for_resources`), or an autoscaler on the cluster, wait for
    the cluster to grow (a progress line every 30 s) before giving that line.
    """
    missing = _missing(needs)
    if not missing:
        return
    if wait_s <= 0 and autoscaler_configured():
        wait_s = AUTOSCALER_WAIT_S
    if wait_s > 0:
        t0 = last = time.monotonic()
        first = "; ".join(f"{n.amount:g} {n.resource} (have {have:g})" for n, have in missing)
        print(f"# waiting up to {wait_s:g} s for the Ray cluster to offer {first}", flush=True)
        while missing and time.monotonic() - t0 < wait_s:
            time.sleep(WAIT_POLL_S)
            missing = _missing(needs)
            if missing and time.monotonic() - last >= WAIT_REPORT_S:
                last = time.monotonic()
                now = "; ".join(f"{n.resource} {have:g}/{n.amount:g}" for n, have in missing)
                print(f"# still waiting for resources ({now}) after {last - t0:.0f} s", flush=True)
        if not missing:
            print(f"# resources available after {time.monotonic() - t0:.0f} s", flush=True)
            return
        need, have = missing[0]
        raise UserError(need.message(have) + f" (waited {wait_s:g} s)")
    need, have = missing[0]
    raise UserError(need.message(have))
