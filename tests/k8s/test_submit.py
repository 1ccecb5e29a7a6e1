"""`tfcluster submit`: RayJobs against a FAKE Kubernetes API server on loopback (127.0.0.1), and jobs to a
real local Ray head (its own ports and temp dir, token auth on) through JobSubmissionClient."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

from kube_support import free_port, run_cli
from tfcluster import submit
from tfcluster.errors import UserError


# ---------------------------------------------------------------------------- RayJob


def _submit_dcgan(fake_kube, capsys):
    state, kubeconfig = fake_kube
    code, out, err = run_cli(["submit", "--workload", "dcgan", "--kubeconfig", kubeconfig, "-n", "training",
                              "--num_workers", "4", "--image", "registry.example/tfcluster/train:0.1.0-gpu",
                              "--", "--seed", "7"], capsys)
    assert code == 0, err
    posts = [r for r in state.requests if r["method"] == "POST"]
    assert len(posts) == 1
    assert posts[0]["path"] == "/apis/ray.io/v1/namespaces/training/rayjobs"
    assert posts[0]["query"]["fieldManager"] == "tfcluster"
    job = posts[0]["body"]
    assert job["kind"] == "RayJob" and job["metadata"]["name"].startswith("train-dcgan-")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/train_dcgan.py"]
    assert argv[argv.index("--num_workers") + 1] == "4" and argv[-2:] == ["--seed", "7"]
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 4
    images = {c["image"] for t in [job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"], workers["template"]]
              for c in t["spec"]["containers"]}
    assert images == {"registry.example/tfcluster/train:0.1.0-gpu"}
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert f"rayjob {job['metadata']['name']} created in namespace training" in out
    return job


def test_rayjob_is_created_from_the_template_with_overrides(fake_kube, capsys):
    job = _submit_dcgan(fake_kube, capsys)
    assert job["spec"]["rayClusterSpec"]["authOptions"]["secretName"] == "tfcluster-ray-auth"


def test_the_submitted_rayjob_is_valid_against_the_crd(fake_kube, capsys, crd_schema):
    job = _submit_dcgan(fake_kube, capsys)
    assert not list(jsonschema.Draft7Validator(crd_schema("RayJob")).iter_errors(job))


def test_rayjob_entrypoint_can_be_replaced(fake_kube, capsys):
    state, kubeconfig = fake_kube
    code, _, err = run_cli(["submit", "--workload", "nmt", "--kubeconfig", kubeconfig, "--name", "nmt-big",
                            "--", "python", "jobs/sweep_nmt.py", "--num_samples", "16"], capsys)
    assert code == 0, err
    job = state.objects["/apis/ray.io/v1/namespaces/default/rayjobs/nmt-big"]
    assert job["spec"]["entrypoint"] == "python jobs/sweep_nmt.py --num_samples 16"


def test_rayjob_wait_follows_the_status(fake_kube, capsys):
    state, kubeconfig = fake_kube
    state.rayjob_status = [
        {"jobDeploymentStatus": "Initializing", "jobStatus": ""},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"},
    ]
    code, out, err = run_cli(["submit", "--workload", "pg", "--kubeconfig", kubeconfig, "--name", "pg-1",
                              "--wait", "--interval", "0.01"], capsys)
    assert code == 0, err
    assert "rayjob pg-1: deployment Running, job RUNNING" in out
    assert out.rstrip().endswith("rayjob pg-1: deployment Complete, job SUCCEEDED")
    state.rayjob_status = [{"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "message": "job failed: exit 1"}]
    code, out, _ = run_cli(["submit", "--workload", "pg", "--kubeconfig", kubeconfig, "--name", "pg-2",
                            "--wait", "--interval", "0.01"], capsys)
    assert code == 1 and "job failed: exit 1" in out


def test_rayjob_name_clash_is_one_line(fake_kube, capsys):
    _, kubeconfig = fake_kube
    assert run_cli(["submit", "--workload", "pg", "--kubeconfig", kubeconfig, "--name", "pg-x"], capsys)[0] == 0
    code, _, err = run_cli(["submit", "--workload", "pg", "--kubeconfig", kubeconfig, "--name", "pg-x"], capsys)
    assert code == 2 and "a RayJob named pg-x already exists" in err and err.count("\n") == 1


def test_dry_run_prints_the_rayjob_without_a_cluster(capsys, no_kube_env):
    code, out, _ = run_cli(["submit", "--workload", "dqn", "--dry-run", "--name", "dqn-try"], capsys)
    assert code == 0
    job = yaml.safe_load(out)
    assert job["metadata"]["name"] == "dqn-try" and "jobs/train_dqn.py" in job["spec"]["entrypoint"]


@pytest.mark.parametrize("argv, message", [
    (["--workload", "bert"], "invalid choice: 'bert'"),
    ([], "pass --address http://<head>:8265"),
    (["--address", "127.0.0.1:8265", "--", "python", "x.py"], "--address must be the dashboard URL"),
    (["--address", "http://127.0.0.1:1"], "nothing to run"),
    (["--workload", "nmt", "--name", "Bad_Name", "--dry-run"], "bad RayJob name 'Bad_Name'"),
    (["--workload", "nmt", "--num_workers", "0", "--dry-run"], "--num_workers must be at least 1"),
])
def test_submit_errors(capsys, argv, message):
    code, _, err = run_cli(["submit"] + argv, capsys)
    assert code == 2 and message in err


def test_build_rayjob_keeps_the_template_intact():
    tpl = submit.load_template("nmt")
    before = yaml.safe_dump(tpl)
    job = submit.build_rayjob(tpl, num_workers=3, suffix="x")
    assert job["metadata"]["name"] == "train-nmt-x"
    assert "--num_workers 3" in job["spec"]["entrypoint"]
    assert yaml.safe_dump(tpl) == before
    with pytest.raises(UserError, match="unknown workload"):
        submit.load_template("bert")


# ---------------------------------------------------------------------------- Ray dashboard


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head with token auth on its own free ports and temp dir (never 6379/8265), stopped by its pid."""
    ray_exe = str(Path(sys.executable).with_name("ray"))
    token = secrets.token_hex(16)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    ports = [free_port() for _ in range(8)]
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    dash = ports[1]
    cmd = [ray_exe, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(ports[0]), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--include-dashboard", "true", "--ray-client-server-port", str(ports[2]),
           "--node-manager-port", str(ports[3]), "--object-manager-port", str(ports[4]),
           "--dashboard-agent-listen-port", str(ports[5]), "--dashboard-agent-grpc-port", str(ports[6]),
           "--metrics-export-port", str(ports[7]), "--runtime-env-agent-port", str(free_port()),
           "--min-worker-port", "20000", "--max-worker-port", "20999",
           "--num-cpus", "1", "--temp-dir", tmp, "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start failed: {proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # answering (401 without a token)
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the Ray dashboard did not come up within 120s")
                time.sleep(1)
        yield url, token
    finally:
        # Only the processes of this head: its own process group (start_new_session), by id.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_cli_process(argv, token):
    """`tfcluster` in its own process: Ray caches its auth token once per process, and this
    head's token must not leak into later tests that start a local Ray in the pytest process."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PYTHONPATH": str(Path(submit.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "tfcluster.cli", *argv], env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.slow
def test_submit_to_a_ray_dashboard_streams_logs(ray_head, tmp_path):
    url, token = ray_head
    (tmp_path / "hello.py").write_text("import os, sys\nprint('hello from', os.environ['GREETING'], sys.argv[1])\n")
    code, out, err = run_cli_process(["submit", "--address", url, "--working_dir", str(tmp_path), "--env", "GREETING=ray",
                                      "--", "python", "hello.py", "tfcluster"], token)
    assert code == 0, err + out
    assert "hello from ray tfcluster" in out
    assert out.rstrip().endswith("SUCCEEDED")


@pytest.mark.slow
def test_a_training_job_log_reads_clean(ray_head, tmp_path):
    """The log of `train_nmt.py` through the job API: each stats line once, no TensorFlow start-up noise,
    no Ray Train report dumps; Ray's own job-status lines stay."""
    from tfcluster.data import toy

    url, token = ray_head
    root = str(Path(submit.__file__).parents[2])
    p = toy.write_corpus(str(tmp_path / "data"), sizes={"train": 300, "dev": 10, "test": 10})
    cmd = [sys.executable, "jobs/train_nmt.py", "--src", "src", "--tgt", "tgt", "--vocab_prefix", p["vocab"],
           "--train_prefix", p["train"], "--dev_prefix", p["dev"], "--test_prefix", p["test"], "--num_units", "8",
           "--num_layers", "1", "--batch_size", "16", "--num_train_steps", "20", "--steps_per_stats", "5",
           "--steps_per_external_eval", "10", "--num_workers", "1", "--out_dir", str(tmp_path / "run"),
           "--model_base_path", str(tmp_path / "models")]
    code, out, err = run_cli_process(["submit", "--address", url, "--working_dir", root, "--", *cmd], token)
    assert code == 0, (err + out)[-3000:]
    stats = [ln for ln in out.splitlines() if re.search(r"\bstep +\d+ train/loss", ln)]
    assert len(stats) == 4, out[-3000:]
    body = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("submitted job")]
    repeated = {ln for ln in body if body.count(ln) > 1 and "ref:" not in ln and "nmt:" not in ln}
    assert not repeated, repeated
    for noise in ("TrainingReport(", "absl::InitializeLog", "oneDNN custom operations", "cuInit", "cuda drivers",
                  "Sharding callback", "repeated 2x across cluster"):
        assert noise not in out + err, noise
    assert "# exported " in out and out.rstrip().endswith("SUCCEEDED")


@pytest.mark.slow
def test_a_failing_job_exits_1(ray_head):
    url, token = ray_head
    code, out, _ = run_cli_process(["submit", "--address", url, "--", "python", "-c", "import sys; print('boom'); sys.exit(3)"], token)
    assert code == 1
    assert "boom" in out and out.rstrip().endswith("FAILED")


@pytest.mark.slow
def test_a_wrong_token_is_one_line(ray_head):
    """In a fresh process: Ray loads its token once per process."""
    url, _ = ray_head
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32, "PYTHONPATH": str(Path(submit.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "tfcluster.cli", "submit", "--address", url, "--", "python", "-c", "print(1)"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: the Ray cluster at {url} refused the token") and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_no_token_at_all_is_one_line(ray_head, tmp_path):
    """A new machine: no RAY_AUTH_TOKEN and an empty home folder (no ~/.ray/auth_token)."""
    url, _ = ray_head
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    env.update(HOME=str(tmp_path), RAY_AUTH_MODE="token", PYTHONPATH=str(Path(submit.__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-m", "tfcluster.cli", "submit", "--address", url, "--", "python", "-c", "print(1)"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: no Ray auth token for the cluster at {url}") and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("with_token", [False, True])
def test_an_unreachable_dashboard_is_one_line(tmp_path, with_token):
    """A closed port is "cannot reach", whatever the home folder holds (no token, or a token)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    env.update(HOME=str(tmp_path), RAY_AUTH_MODE="token", PYTHONPATH=str(Path(submit.__file__).parents[1]))
    if with_token:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text(secrets.token_hex(16))
    proc = subprocess.run([sys.executable, "-m", "tfcluster.cli", "submit", "--address", f"http://127.0.0.1:{port}",
                           "--", "python", "-c", "print(1)"], env=env, capture_output=True, text=True, timeout=120)
    err = proc.stderr
    assert proc.returncode == 2 and f"cannot reach the Ray dashboard at http://127.0.0.1:{port}" in err, err[-2000:]
    assert err.count("\n") == 1
