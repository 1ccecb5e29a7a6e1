"""Containers for real: the training image is built and a Ray cluster of its containers trains and exports.

The image is built from docker/train.Dockerfile on a Debian bookworm base bootstrapped on this machine
(`localhost/debian:bookworm`, the stand-in for the public base image, which cannot be pulled here).
Then: a Ray head and two Ray worker containers on the host network (token auth; each with a scratch
volume of its own, one shared storage volume and one shared models volume, as KubeRay pods have),
`tfcluster submit` of a short NMT job on 2 workers with the data mounted read-only, one worker
container killed mid-run and a replacement started (what KubeRay does with a lost pod), the job
finishing from its storage checkpoint with the export in the models volume, and `tfcluster serve`
on the host translating with it.

Slow (an image build, a cluster of containers): marked `slow`; skipped with one line when this
machine has no container engine.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time

import pytest

from tfcluster import containers
from tfcluster.data import toy

pytestmark = pytest.mark.slow

TAG = f"localhost/tfcluster/train:{containers.version()}-test"
TEST_ONLY = {"pytest", "pytest-timeout", "helm-python-sdk", "kubernetes-validate"}


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def image(engine, debian_base):
    return containers.build(TAG, base_image=debian_base, eng=engine)


def _out(engine, *args) -> str:
    return engine.run(*args).stdout.decode()


def test_the_image_runs_tfcluster_as_a_non_root_user_without_test_tools(engine, image):
    assert "usage: tfcluster" in _out(engine, "run", "--rm", image, "--help")
    assert _out(engine, "run", "--rm", "--entrypoint", "id", image, "-u").strip() == "1000"
    names = json.loads(_out(engine, "run", "--rm", "--entrypoint", "/opt/venv/bin/python", image, "-c",
                            "import json, importlib.metadata as m; print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"))
    installed = {n.lower().replace("_", "-") for n in names}
    assert {"tensorflow", "ray", "tfcluster"} <= installed
    assert not TEST_ONLY & installed, TEST_ONLY & installed


class Cluster:
    """A Ray head and workers, each a container of the image on the host network."""

    def __init__(self, engine: containers.Engine, image: str, root, token: str):
        self.engine, self.image, self.root, self.token = engine, image, root, token
        self.gcs, self.dashboard = _free_ports(2)
        self.names: list[str] = []
        self.shared = {"storage": root / "storage", "models": root / "models", "data": root / "data"}
        for d in self.shared.values():
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o777)  # the containers' user (uid 1000) writes there

    def _start(self, name: str, ray_args: list[str]) -> None:
        scratch = self.root / f"scratch-{name}"
        scratch.mkdir()
        os.chmod(scratch, 0o777)
        agent, grpc, metrics, runtime_env, node_manager, object_manager = _free_ports(6)
        self.engine.run("run", "-d", "--name", name, "--network=host", "--shm-size=1g",
             "-e", "RAY_AUTH_MODE=token", "-e", f"RAY_AUTH_TOKEN={self.token}",
             "-v", f"{scratch}:/tmp/ray", "-v", f"{self.shared['storage']}:/mnt/storage",
             "-v", f"{self.shared['models']}:/mnt/models", "-v", f"{self.shared['data']}:/data:ro",
             "--entrypoint", "ray", self.image, "start", "--block", "--disable-usage-stats",
             f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={grpc}",
             f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
             f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}", *ray_args)
        self.names.append(name)

    def head(self) -> None:
        self._start(f"tfc-head-{self.gcs}", ["--head", f"--port={self.gcs}", "--dashboard-host=127.0.0.1",
                                             f"--dashboard-port={self.dashboard}", "--num-cpus=0"])

    def worker(self, i: int) -> str:
        name = f"tfc-worker{i}-{self.gcs}"
        self._start(name, [f"--address=127.0.0.1:{self.gcs}", "--num-cpus=1"])
        return name

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n" + self.engine.run("logs", "--tail", "30", n, check=False).stdout.decode(errors="replace")
                         for n in self.names)

    def remove(self) -> None:
        for n in self.names:
            self.engine.run("rm", "-f", n, check=False)


def test_a_ray_cluster_of_containers_trains_survives_a_lost_worker_and_exports(engine, image, tmp_path):
    token = secrets.token_hex(16)
    cluster = Cluster(engine, image, tmp_path, token)
    p = toy.write_corpus(str(cluster.shared["data"]), sizes={"train": 1000, "dev": 10})
    assert all(x.startswith(str(cluster.shared["data"])) for x in p.values())
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    try:
        cluster.head()
        workers = [cluster.worker(1), cluster.worker(2)]
        address = f"http://127.0.0.1:{cluster.dashboard}"
        job = [sys.executable, "-m", "tfcluster.cli", "submit", "--address", address, "--no_wait", "--",
               "python", "jobs/train_nmt.py", "--src", "src", "--tgt", "tgt", "--train_prefix", "/data/train",
               "--dev_prefix", "/data/dev", "--vocab_prefix", "/data/vocab", "--num_units", "16", "--batch_size", "16",
               "--num_train_steps", "120", "--steps_per_stats", "10", "--steps_per_external_eval", "20",
               "--num_workers", "2", "--max_failures", "3", "--wait_for_resources", "300",
               "--out_dir", "/mnt/storage/run", "--storage_path", "/mnt/storage/ray", "--model_base_path", "/mnt/models"]
        deadline = time.time() + 180
        while True:  # the dashboard answers some seconds after the head container starts
            sub = subprocess.run(job, env=env, capture_output=True, text=True, timeout=120)
            if sub.returncode == 0 or time.time() > deadline:
                break
            time.sleep(3)
        assert sub.returncode == 0, (sub.stdout[-2000:], sub.stderr[-2000:], cluster.logs())
        job_id = next(w for w in (sub.stdout + sub.stderr).split() if w.startswith("raysubmit_"))

        from tfcluster.submit import job_client

        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        client = job_client(address)
        metrics = cluster.shared["storage"] / "run" / "metrics.jsonl"
        deadline = time.time() + 600
        while time.time() < deadline:
            steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()] if metrics.exists() else []
            if steps and max(steps) >= 50:
                break
            assert str(client.get_job_status(job_id)) not in ("FAILED", "STOPPED"), client.get_job_logs(job_id)
            time.sleep(1)
        else:
            pytest.fail("the job made no progress:\n" + client.get_job_logs(job_id) + cluster.logs())
        engine.run("kill", workers[0])
        print(f"# killed worker container {workers[0]} at step {max(steps)}; starting a replacement", flush=True)
        cluster.worker(3)  # KubeRay replaces a lost worker pod

        deadline = time.time() + 900
        while str(client.get_job_status(job_id)).split(".")[-1] not in ("SUCCEEDED", "FAILED", "STOPPED"):
            assert time.time() < deadline, client.get_job_logs(job_id)
            time.sleep(2)
        logs = client.get_job_logs(job_id)
        assert str(client.get_job_status(job_id)).endswith("SUCCEEDED"), logs[-4000:]
        resumed = [line for line in logs.splitlines() if "resuming from step" in line]
        print("# job log: " + (resumed[-1] if resumed else "(no resume line)"), flush=True)
        assert resumed and int(resumed[-1].split("resuming from step")[1].split()[0]) >= 20, logs[-4000:]
        export = cluster.shared["models"] / "nmt" / "1"
        assert (export / "saved_model.pb").exists(), logs[-4000:]
    finally:
        cluster.remove()

    from tfcluster.serving.client import Client
    from tfcluster.serving.local import LocalServer

    with LocalServer(model_name="nmt", model_base_path=str(cluster.shared["models"] / "nmt"), rest_api_port=0) as srv:
        srv.wait_until_available("nmt", timeout_s=120)
        out = Client(srv.target, timeout_s=60).predict("nmt", {"source": ["A MAN WALKS ."]})
        assert out["translation"].shape == (1,) and out["translation"][0]
