"""Shared test set-up: quiet TensorFlow, the TF backend for Keras, a local Ray when asked."""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))

import pytest  # noqa: E402


def start_local_ray():
    """The session's local Ray (2 CPUs); a test that needs another cluster restarts it when done."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"PYTHONPATH": os.path.join(ROOT, "lib"), "KERAS_BACKEND": "tensorflow"}})
    return ray


@pytest.fixture(scope="session")
def local_ray_starter():
    """`start_local_ray`, for a test that replaces the session's Ray and gives it back when done
    (a fixture, since `import conftest` from a test could find another folder's conftest)."""
    return start_local_ray


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance for the session (2 CPUs), shut down at the end."""
    ray = start_local_ray()
    yield ray
    ray.shutdown()


@pytest.fixture
def tf_serving_run():
    """Run a signature of an exported SavedModel the way TensorFlow Serving does: a session over its
    MetaGraphDef, restored by its saver (not tf.saved_model.load's object graph)."""
    import numpy as np

    from tfcluster.serving.models import Servable

    def run(path, inputs, signature="serving_default"):
        servable = Servable("check", 1, path, {"serve"})
        return servable.signatures[signature].run({k: np.asarray(v) for k, v in inputs.items()})

    return run
