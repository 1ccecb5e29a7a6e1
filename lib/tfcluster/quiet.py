"""Readable logs: TensorFlow's native start-up noise out, every other line kept.

Importing TensorFlow prints, from C++ and before any setting can stop it, lines such as
`WARNING: All log messages before absl::InitializeLog() ...`, `oneDNN custom operations
are on` and `Could not find cuda drivers` (once per shared library, in every process:
the job driver, Ray Train's controller and each worker). `install()` puts a one-shot
import hook in front of `import tensorflow` that sends file descriptor 2 to a temporary
file for the length of that import and then writes back every line that is not one of
those, so warnings and errors raised while importing still reach the log. TensorFlow's
own log level (`TF_CPP_MIN_LOG_LEVEL`, default 3 here: its native INFO/WARNING/ERROR
lines, such as `failed call to cuInit` on a machine without a GPU, are not shown) and
its Python logger (WARNING) are set when the user has not set them.

In Ray processes the hook is installed by `worker_setup`, Ray's
`worker_process_setup_hook`, which runs before any task or actor of the job; it also
guards the runs against Ray Train's placement-group cleaner (`guard_placement_group_cleaner`).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|cudart_stub\.cc.*Could not find cuda drivers"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
)


def is_noise(line: str) -> bool:
    return bool(NOISE.search(line))


@contextlib.contextmanager
def filtered_stderr():
    """Native writes to fd 2 inside the block go to a file; non-noise lines are written back after."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (e.g. a closed stderr): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for raw in tmp.read().splitlines(keepends=True):
                if not is_noise(raw.decode("utf-8", "replace")):
                    os.write(2, raw)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        with filtered_stderr():
            self.inner.exec_module(module)
        tf_logger = logging.getLogger("tensorflow")
        if tf_logger.level == logging.NOTSET:
            tf_logger.setLevel(logging.WARNING)  # e.g. "Sharding callback duration" INFO lines per checkpoint


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the first `import tensorflow`, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Quiet the next `import tensorflow` in this process (no-op once TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())


def warn_if_no_gpu(asked: bool, where: str) -> bool:
    """One clear line when a GPU was asked for and TensorFlow sees none (the native lines are hidden)."""
    if not asked:
        return False
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return False
    print(f"warning: --use_gpu was given but TensorFlow finds no GPU on {where} (no CUDA driver or device "
          "visible to this process); it runs on the CPU", file=sys.stderr, flush=True)
    return True


# Environment for every Ray worker of a tfcluster job (see runs.init_ray).
RAY_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    # Ray Train copies each print() of a worker into its logger as well, so every line
    # would appear twice in the job log; prints stay prints.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
SETUP_HOOK = "tfcluster.quiet.worker_setup"


def quiet_train_worker() -> None:
    """In a Ray Train worker: Ray Train's per-report INFO line and TensorFlow's INFO lines out.

    Ray Train 2.60 logs `Reporting training result N: TrainingReport(...)` through a logger
    named after its source file, outside `ray.train`, so `LoggingConfig` does not reach it.
    """
    for name in ("tensorflow", "absl"):  # absl: TensorFlow's "Sharding callback duration" per checkpoint
        logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.suppress(Exception):
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def guard_placement_group_cleaner() -> bool:
    """Ray Train 2.60's PlacementGroupCleaner reads a State API miss (no answer for the
    controller actor) as "the controller is dead" and removes the run's placement group,
    which kills a healthy run's workers (ray-project/ray PR 65447, "Live PGs cleaned after
    false death"). Here an unknown state counts as alive; only a controller the State API
    reports DEAD is cleaned up. Its once-a-second "Failed to query ... Continuing to
    monitor" warning (the State API is off on a local Ray without a dashboard) is dropped;
    the line it logs when it does clean up stays."""
    try:
        from ray.train.v2._internal.execution.controller import placement_group_cleaner as pgc
        from ray.train.v2._internal.state import util as state_util
    except ImportError:  # another Ray: nothing to guard
        return False

    def is_actor_alive(actor_id: str, timeout: int) -> bool:
        # Ask the GCS this actor is connected to (the State API guesses the cluster, and with two Ray
        # instances on a machine it logs "Found multiple active Ray instances" at every call).
        try:
            from ray._private import state as gcs_state

            info = gcs_state.actors(actor_id=actor_id)
            if info:
                return info.get("State") != "DEAD"
        except Exception:  # noqa: BLE001 - an unknown answer is "alive"; fall back to the State API
            pass
        state = state_util.get_actor(actor_id, timeout=timeout)
        return state is None or state.state != "DEAD"

    pgc.is_actor_alive = is_actor_alive
    logging.getLogger(pgc.__name__).addFilter(_DropMessage("Failed to query Ray Train Controller actor state"))
    return True


def worker_setup() -> None:
    """Ray's worker_process_setup_hook: runs in each worker before its first task or actor."""
    install()
    guard_placement_group_cleaner()
