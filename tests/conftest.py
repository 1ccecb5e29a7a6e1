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


S3_STAND_IN = os.environ.get("TFCLUSTER_S3_STAND_IN", "")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """The S3 stand-in (moto's server, its own process on 127.0.0.1) for the session: its http:// URL."""
    import socket
    import subprocess
    import time

    if not os.path.isdir(os.path.join(S3_STAND_IN, "moto")):
        pytest.skip("no S3 stand-in: run through `make test` (it installs moto into .venv/s3-stand-in)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    log = open(log_path, "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "PYTHONPATH": S3_STAND_IN}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, log_path.read_text()
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture
def s3(moto_endpoint, monkeypatch, tmp_path):
    """A fresh bucket in the S3 stand-in, reached through plain s3:// URIs and the standard AWS
    environment variables (as boto3 and the AWS CLI read them); yields `s3://<bucket>`."""
    import uuid

    import pyarrow.fs

    for k, v in {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                 "TFCLUSTER_CACHE_DIR": str(tmp_path / "node-cache")}.items():
        monkeypatch.setenv(k, v)
    bucket = f"tfc-{uuid.uuid4().hex[:10]}"
    pyarrow.fs.S3FileSystem(endpoint_override=moto_endpoint.split("://")[1], scheme="http", region="us-east-1",
                            access_key="testing", secret_key="testing", allow_bucket_creation=True).create_dir(bucket)
    yield f"s3://{bucket}"


def upload(local: str, uri: str) -> None:
    """Copy a local file or folder into object storage (test data)."""
    from tfcluster import storage

    if os.path.isdir(local):
        storage.upload_tree(local, uri, last=())
    else:
        with open(local, "rb") as f:
            storage.write_bytes(uri, f.read())


@pytest.fixture
def s3_upload():
    return upload
