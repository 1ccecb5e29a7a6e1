"""Configs: frozen dataclasses <-> command-line flags <-> JSON, each setting defined once.

A workload's `Config` is a frozen, keyword-only dataclass whose fields carry a docstring
(the string literal right under the field). From it this module generates:
  * argparse flags (`--field_name`), with `Literal[...]` types as choices and booleans
    that accept `--flag`, `--flag true` and `--flag false` (tensorflow/nmt style);
  * JSON presets (`--hparams_path preset.json`) and `out_dir/config.json`;
  * the set of flags given explicitly (sweeps keep those fixed for every trial).

Precedence, lowest first: dataclass defaults < `--hparams_path` preset <
`out_dir/config.json` of an earlier run (resume, as tensorflow/nmt's
`create_or_load_hparams`) < flags typed on the command line.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import os
import textwrap
import types
import typing
from typing import Any, Literal, TypeVar

from tfcluster.errors import UserError

C = TypeVar("C")

CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Settings every run has, data-parallel loop and RL algorithm alike (`tfcluster.runs`)."""

    out_dir: str = "runs/default"
    """Where checkpoints, metrics.jsonl, TensorBoard events and config.json go (local path or gs://, s3:// URI)."""
    model_base_path: str = ""
    """Model repository to export into at the end (`<base>/<model>/<version>/`); empty: no export."""
    use_gpu: bool = False
    """Give each worker (RL: the learner) one GPU (Ray Train ScalingConfig.use_gpu)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker (RL: for the learner) in the Ray cluster."""
    address: str = ""
    """Ray cluster to join (`auto`, `ray://host:10001`, or empty: RAY_ADDRESS or a new local Ray)."""
    wait_for_resources: float = 0.0
    """Seconds to wait for the Ray cluster to offer the CPUs/GPUs the run asks for (an autoscaler adding
    nodes); 0: wait only when the cluster has an autoscaler (up to 30 minutes), else fail at once."""
    seed: int = 0
    """Random seed; worker i uses seed + i."""
    steps_per_stats: int = 100
    """Print a stats line and append to metrics.jsonl every this many steps (tensorflow/nmt: 100)."""
    promote: str = ""
    """After the export, gate the new version into `stable` (`tfcluster release`, on the run's dev data or env):
    the models.config of a local server, or k8s:<namespace>/<release> for a tf-serving chart release; empty: no gate."""
    promote_server: str = ""
    """gRPC address of the server --promote evaluates through (default: 127.0.0.1:8500, or the release's Service)."""

    def check_run(self) -> None:
        if self.steps_per_stats < 1:
            raise ValueError(f"--steps_per_stats must be at least 1, got {self.steps_per_stats}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"--cpus_per_worker must be positive, got {self.cpus_per_worker}")
        if self.wait_for_resources < 0:
            raise ValueError(f"--wait_for_resources must be 0 or more seconds, got {self.wait_for_resources:g}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig(RunConfig):
    """Settings of the shared data-parallel loop (`tfcluster.train`): workers, restarts, evaluation, checkpoints."""

    num_workers: int = 1
    """Ray Train workers (data-parallel replicas); the global batch is split across them."""
    max_failures: int = 3
    """Times Ray Train restarts failed workers from the last checkpoint (-1: forever)."""
    steps_per_external_eval: int = 0
    """Evaluate (BLEU, SWD, returns) and checkpoint every this many steps; 0: 10 x steps_per_stats (tensorflow/nmt)."""
    keep_checkpoint_max: int = 5
    """Checkpoints kept in out_dir/ckpt and in the run's storage (tensorflow/nmt: num_keep_ckpts 5)."""
    max_train_minutes: float = 0.0
    """Stop training after this many minutes of training wall time (evaluations included, summed over
    restarts), with an evaluation and a checkpoint at that step; learning-rate decay then follows the
    fraction of this budget used when it is ahead of the fraction of --num_train_steps. 0: no limit."""
    avg_ckpts: bool = False
    """At the end, also evaluate the average of the last --keep_checkpoint_max checkpoints' model weights;
    it becomes best/ when it beats the best by the best metric (tensorflow/nmt's --avg_ckpts)."""
    storage_path: str = ""
    """Where Ray Train keeps the checkpoints the chief reports, and restarted or rerun workers restore from:
    a path every node sees (NFS, a shared volume) or a URI pyarrow understands (s3://, gs://); empty: out_dir/ray
    (enough on one machine)."""
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    """Keras dtype policy of the training step: mixed_bfloat16 (A100/H100, TPUs, recent CPUs) or mixed_float16
    (V100 and later, with a dynamic loss scale) compute in 16 bits with float32 variables; checkpoints and exports
    stay float32."""
    jit_compile: bool = False
    """XLA-compile each worker's training step (tf.function jit_compile); off by default (slower on CPU here)."""

    @property
    def eval_every(self) -> int:
        return self.steps_per_external_eval or 10 * self.steps_per_stats

    def check_run(self) -> None:
        super().check_run()
        if self.num_workers < 1:
            raise ValueError(f"--num_workers must be at least 1, got {self.num_workers}")
        if self.max_train_minutes < 0:
            raise ValueError(f"--max_train_minutes must be 0 (no limit) or more, got {self.max_train_minutes:g}")


# ---------------------------------------------------------------------------- introspection


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of `cls` and its dataclass bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp: Any) -> tuple[Any, tuple | None]:
    """(python type, choices) for a field annotation; Optional[X] -> X."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        return type(choices[0]), choices
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _base_type(args[0])
    return tp, None


def str2bool(v: str | bool) -> bool:
    if isinstance(v, bool):
        return v
    s = v.strip().lower()
    if s in ("1", "true", "t", "yes", "y", "on"):
        return True
    if s in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def coerce(cls: type, name: str, value: Any) -> Any:
    """Convert a JSON or Tune value to the field's type (e.g. 64.0 -> 64 for an int)."""
    tp, _ = _base_type(_hints(cls)[name])
    if value is None:
        return None
    if tp is bool:
        return str2bool(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, float, str):
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise UserError(f"{name}: expected {tp.__name__}, got {value!r}") from None
    return value


# ---------------------------------------------------------------------------- flags


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, title: str = "", hparams: bool = True,
                     skip: frozenset[str] = frozenset()) -> None:
    """One flag per field of `cls` (but fields with metadata flag=False); defaults are suppressed so
    explicit flags can be told apart. With `hparams`, also --hparams_path (a preset of settings)."""
    docs = field_docs(cls)
    hints = _hints(cls)
    group = parser.add_argument_group(title or f"{cls.__module__.rsplit('.', 1)[-1]} settings")
    for f in dataclasses.fields(cls):
        if not f.init or not f.metadata.get("flag", True) or f.name in skip:
            continue
        tp, choices = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = docs.get(f.name, "")
        help_ = f"{help_} (default: {default!r})" if help_ else f"default: {default!r}"
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_.replace("%", "%%"))
        if tp is bool:
            kw.update(type=str2bool, nargs="?", const=True, metavar="BOOL")
        else:
            kw.update(type=tp if tp in (int, float, str) else str)
            if choices is not None:
                kw["choices"] = choices
        group.add_argument(f"--{f.name}", **kw)
    if not hparams:
        return
    parser.add_argument(
        "--hparams_path",
        default=None,
        help="JSON file of settings, or the name of a shipped preset (e.g. nmt_iwslt15); flags override it",
    )


PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


def presets() -> list[str]:
    """Names of the presets shipped with tfcluster (`--hparams_path NAME` finds them)."""
    return sorted(f[:-5] for f in os.listdir(PRESETS_DIR) if f.endswith(".json"))


def load_json(path: str) -> dict[str, Any]:
    import tensorflow as tf  # gfile reads local paths and gs:// / s3:// alike

    if not tf.io.gfile.exists(path):
        shipped = os.path.join(PRESETS_DIR, f"{path}.json")
        if os.sep not in path and os.path.exists(shipped):
            path = shipped
        else:
            raise UserError(f"settings file not found: {path} (shipped presets: {', '.join(presets())})")
    try:
        with tf.io.gfile.GFile(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object of settings")
    return data


def build(cls: type[C], values: dict[str, Any], source: str = "settings") -> C:
    """`cls(**values)` with unknown keys and failed checks turned into one-line errors."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown setting(s) in {source}: {', '.join(unknown)}")
    try:
        return cls(**{k: coerce(cls, k, v) for k, v in values.items()})
    except ValueError as e:
        raise UserError(str(e)) from None


def config_from_args(cls: type[C], ns: argparse.Namespace, *, resume: bool = True) -> tuple[C, dict[str, Any]]:
    """Resolve a config from parsed flags; returns (config, the flags given explicitly)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    explicit = {k: v for k, v in vars(ns).items() if k in names}
    values: dict[str, Any] = {}
    preset = getattr(ns, "hparams_path", None)
    if preset:
        values.update(load_json(preset))
    out_dir = explicit.get("out_dir", values.get("out_dir"))
    if resume and out_dir:
        saved = os.path.join(out_dir, CONFIG_FILE)
        import tensorflow as tf

        if tf.io.gfile.exists(saved):
            values.update({k: v for k, v in load_json(saved).items() if k in names})
    values.update(explicit)
    return build(cls, values, preset or "flags"), explicit


# ---------------------------------------------------------------------------- paths


PATH_SUFFIXES = ("_prefix", "_dir", "_file", "_path")


def abs_path(path: str) -> str:
    """A local path made absolute (`~` expanded); URIs (gs://, s3://) as they are."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def absolute_paths(cfg: Any) -> Any:
    """`cfg` with every local path setting (`*_prefix`, `*_dir`, `*_file`, `*_path`) made absolute,
    for processes that do not share the caller's working directory (Ray workers, Tune trials)."""
    values = to_dict(cfg)
    for k, v in values.items():
        if isinstance(v, str) and v and k.endswith(PATH_SUFFIXES):
            values[k] = abs_path(v)
    return build(type(cfg), values)


# ---------------------------------------------------------------------------- JSON


def to_dict(cfg: Any) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}


def save(cfg: Any, out_dir: str | None = None) -> str:
    """Write the resolved config to `out_dir/config.json` (atomic where the file system allows)."""
    import tensorflow as tf

    out_dir = out_dir or cfg.out_dir
    tf.io.gfile.makedirs(out_dir)
    path = os.path.join(out_dir, CONFIG_FILE)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def load(cls: type[C], out_dir: str) -> C:
    return build(cls, load_json(os.path.join(out_dir, CONFIG_FILE)), os.path.join(out_dir, CONFIG_FILE))


def table(cfg: Any) -> str:
    """The hyperparameter table logged once at start."""
    d = to_dict(cfg)
    width = max(map(len, d))
    return "\n".join(f"  {k:<{width}}  {v!r}" for k, v in sorted(d.items()))
