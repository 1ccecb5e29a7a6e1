"""`tfcluster submit`: a training job to a Ray dashboard address, or a KubeRay RayJob.

  tfcluster submit --address http://127.0.0.1:8265 --working_dir . -- python jobs/train_nmt.py ...
        submit through Ray's JobSubmissionClient (token auth: RAY_AUTH_MODE=token and the
        token in RAY_AUTH_TOKEN or ~/.ray/auth_token) and stream the job's logs until it ends
  tfcluster submit --workload nmt [--num_workers 4] [--image ...] [-- python jobs/train_nmt.py ...]
        create a RayJob from k8s/ray/rayjob-<workload>.yaml with the overrides applied;
        `--wait` follows its status until the job ends

The exit status is 0 when the job succeeded, 1 when it failed or was stopped.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from tfcluster.errors import UserError
from tfcluster.workloads import WORKLOADS as workload_registry

RAY_DIR = Path(__file__).resolve().parents[2] / "k8s" / "ray"
GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
WORKLOADS = tuple(workload_registry)  # each has k8s/ray/rayjob-<workload>.yaml
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# ---------------------------------------------------------------------------- Ray dashboard


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """UserError unless something accepts TCP connections at the dashboard URL's host and port."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(address)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        raise UserError(f"--address {address!r} has a bad port") from None
    if not url.hostname:
        raise UserError(f"--address {address!r} names no host")
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise _unreachable(address, e.strerror or type(e).__name__) from None


def _unreachable(address: str, reason: str) -> UserError:
    return UserError(f"cannot reach the Ray dashboard at {address}: {reason}; "
                     "start one with `tfcluster cluster up` or check the address")


def _auth_error(address: str, text: str) -> UserError:
    """The one-line error for a token problem: none found here, or one the cluster refused."""
    first = text.splitlines()[0] if text else "authentication failed"
    hint = "set RAY_AUTH_TOKEN or ~/.ray/auth_token to the cluster's token (`ray get-auth-token` on the head)"
    if "find" in first.lower() and "token" in first.lower():
        return UserError(f"no Ray auth token for the cluster at {address}: {hint}")
    return UserError(f"the Ray cluster at {address} refused the token ({first}); {hint}")


def job_client(address: str):
    """A JobSubmissionClient for `address` with Ray token auth on; one-line errors."""
    if not address.startswith(("http://", "https://")):
        raise UserError(f"--address must be the dashboard URL, e.g. http://127.0.0.1:8265 (got {address!r})")
    # Reachability first: with no token at hand, Ray's client fails on the missing token before it
    # ever connects, and a closed port must not read as a refused token.
    _check_reachable(address)
    # Ray reads RAY_AUTH_MODE once, when it is first imported.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as e:
        raise _auth_error(address, str(e)) from None
    except ConnectionError as e:
        raise _unreachable(address, str(e).splitlines()[0]) from None
    except (RuntimeError, ValueError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "401" in text or "403" in text or "auth" in text.lower() or "token" in text.lower():
            raise _auth_error(address, text) from None
        raise UserError(f"cannot use the Ray dashboard at {address}: {text}") from None


def submit_to_dashboard(address: str, entrypoint: list[str], *, working_dir: str | None, env_vars: dict[str, str],
                        submission_id: str | None, follow: bool, out=None) -> int:
    import asyncio

    client = job_client(address)  # first: it turns token auth on before Ray is imported
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus

    out = out or sys.stdout
    runtime_env: dict[str, Any] = {"env_vars": {"KERAS_BACKEND": "tensorflow", **env_vars}}
    if working_dir:
        if not os.path.isdir(working_dir):
            raise UserError(f"--working_dir {working_dir} is not a folder")
        runtime_env["working_dir"] = working_dir
        runtime_env["excludes"] = [".venv", ".git", "runs", "models", "demo", "**/__pycache__"]
    try:
        job_id = client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime_env, submission_id=submission_id)
    except AuthenticationError as e:
        raise _auth_error(address, str(e)) from None
    print(f"submitted job {job_id} to {address}", file=out, flush=True)
    if not follow:
        print(f"follow it with: ray job logs --address {address} --follow {job_id}", file=out)
        return 0

    async def stream() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(stream())
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (ray job stop --address {address} {job_id} to stop it)", file=out)
        return 130
    status = client.get_job_status(job_id)
    for _ in range(50):  # the log stream can end a moment before the status turns terminal
        if status.is_terminal():
            break
        time.sleep(0.2)
        status = client.get_job_status(job_id)
    print(f"job {job_id}: {status.value}", file=out)
    return 0 if status == JobStatus.SUCCEEDED else 1


# ---------------------------------------------------------------------------- KubeRay RayJob


def load_template(workload: str, template: str | None = None) -> dict[str, Any]:
    import yaml

    if workload not in WORKLOADS:
        raise UserError(f"unknown workload {workload!r}; one of: {', '.join(WORKLOADS)}")
    path = Path(template) if template else RAY_DIR / f"rayjob-{workload}.yaml"
    try:
        obj = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read the RayJob template {path}: {e.strerror}") from None
    if not isinstance(obj, dict) or obj.get("kind") != "RayJob":
        raise UserError(f"{path} is not a RayJob manifest")
    return obj


def build_rayjob(template: dict[str, Any], *, name: str | None = None, namespace: str | None = None,
                 entrypoint: list[str] | None = None, extra_args: list[str] | None = None, image: str | None = None,
                 num_workers: int | None = None, suffix: str | None = None) -> dict[str, Any]:
    """The template with the overrides applied; the name gets a suffix so reruns do not collide."""
    job = copy.deepcopy(template)
    meta = job.setdefault("metadata", {})
    base = name or meta.get("name", "train")
    if suffix is None:
        suffix = time.strftime("%m%d-%H%M%S")
    meta["name"] = f"{base}-{suffix}" if suffix and not name else base
    if len(meta["name"]) > 47 or not _NAME.match(meta["name"]):
        # KubeRay derives cluster and pod names from it; keep room for their suffixes.
        raise UserError(f"bad RayJob name {meta['name']!r}: lower-case letters, digits and '-', at most 47 characters")
    if namespace:
        meta["namespace"] = namespace
    spec = job["spec"]
    if entrypoint:
        spec["entrypoint"] = shlex.join(entrypoint)
    if extra_args:
        spec["entrypoint"] = f"{spec['entrypoint']} {shlex.join(extra_args)}"
    cluster = spec.get("rayClusterSpec", {})
    groups = cluster.get("workerGroupSpecs", [])
    if num_workers is not None:
        if num_workers < 1:
            raise UserError(f"--num_workers must be at least 1, got {num_workers}")
        if not groups:
            raise UserError("the RayJob template has no worker group to resize")
        g = groups[0]
        g["replicas"] = g["minReplicas"] = g["maxReplicas"] = num_workers
        spec["entrypoint"] = re.sub(r"--num_workers[ =]\d+", f"--num_workers {num_workers}", spec["entrypoint"])
    if image:
        pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in groups]
        for pod in pods:
            for c in pod["spec"]["containers"]:
                c["image"] = image
    return job


def _kube(kubeconfig: str | None, context: str | None):
    from tfcluster import deploy

    return deploy.api_client(kubeconfig, context)


def create_rayjob(api, job: dict[str, Any], namespace: str) -> dict[str, Any]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from tfcluster import deploy

    custom = client.CustomObjectsApi(api)
    try:
        return deploy._call(api, custom.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, job,
                            field_manager=deploy.FIELD_MANAGER)
    except ApiException:  # 404: the CRD is not installed
        raise UserError(f"the cluster at {api.configuration.host} does not serve {GROUP}/{VERSION} RayJob; "
                        "install the KubeRay operator first (helm install kuberay-operator kuberay/kuberay-operator)") from None
    except UserError as e:
        if " 409 " in f" {e} ":
            raise UserError(f"a RayJob named {job['metadata']['name']} already exists in {namespace}; pass another --name") from None
        raise


def follow_rayjob(api, name: str, namespace: str, *, timeout: float, interval: float, out=None) -> int:
    from kubernetes import client

    from tfcluster import deploy

    out = out or sys.stdout
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        obj = deploy._call(api, custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
        st = obj.get("status") or {}
        now = (st.get("jobDeploymentStatus") or "New", st.get("jobStatus") or "PENDING")
        if now != last:
            print(f"rayjob {name}: deployment {now[0]}, job {now[1]}", file=out, flush=True)
            last = now
        if now[1] in _TERMINAL or now[0] in ("Complete", "Failed"):
            if st.get("message"):
                print(st["message"], file=out)
            return 0 if now[1] == "SUCCEEDED" else 1
        if time.monotonic() > deadline:
            raise UserError(f"timed out after {timeout:g}s waiting for rayjob {name} (deployment {now[0]}, job {now[1]})")
        time.sleep(interval)


# ---------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfcluster submit", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="tfcluster submit (--address URL | --workload W) [flags] [-- command ...]")
    p.add_argument("--address", default=None,
                   help="Ray dashboard URL, e.g. http://127.0.0.1:8265 (submit through JobSubmissionClient)")
    p.add_argument("--working_dir", "--working-dir", default=None, help="folder uploaded as the job's working_dir (with --address)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable for the job (with --address)")
    p.add_argument("--submission_id", default=None, help="job id to use (with --address)")
    p.add_argument("--no_wait", "--no-wait", action="store_true", help="return after submitting instead of following")
    p.add_argument("--workload", choices=WORKLOADS, help="create the RayJob k8s/ray/rayjob-<workload>.yaml on Kubernetes")
    p.add_argument("--template", default=None, help="another RayJob manifest to start from")
    p.add_argument("--name", default=None, help="RayJob name (default: the template's, with a time suffix)")
    p.add_argument("--namespace", "-n", default="default", help="namespace (default: default)")
    p.add_argument("--image", default=None, help="image for the head and workers, e.g. registry/tfcluster/train:0.1.0-gpu")
    p.add_argument("--num_workers", type=int, default=None, help="worker replicas (also passed to the job's --num_workers)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="print the RayJob instead of creating it")
    p.add_argument("--wait", action="store_true", help="follow the RayJob until it ends")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="seconds --wait follows the RayJob (default: 1 day)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between RayJob status checks (default: 5)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1:]
    a = build_parser().parse_args(argv)
    if a.address and a.workload:
        raise UserError("pass either --address (a Ray cluster's dashboard) or --workload (a RayJob on Kubernetes), not both")
    if a.address:
        if not cmd:
            raise UserError("nothing to run: add the command after `--`, e.g. -- python jobs/train_nmt.py --num_workers 2")
        env = {}
        for kv in a.env:
            k, sep, v = kv.partition("=")
            if not sep or not k:
                raise UserError(f"bad --env {kv!r}: use KEY=VALUE")
            env[k] = v
        return submit_to_dashboard(a.address, cmd, working_dir=a.working_dir, env_vars=env,
                                   submission_id=a.submission_id, follow=not a.no_wait)
    if not a.workload:
        raise UserError("pass --address http://<head>:8265 to submit to a Ray cluster, or --workload nmt|dcgan|dqn|pg for a RayJob")
    # A command after `--` replaces the template's entrypoint when it starts with a program,
    # and is appended as extra flags when it starts with a flag.
    entry, extra = (None, cmd) if cmd and cmd[0].startswith("-") else (cmd or None, None)
    job = build_rayjob(load_template(a.workload, a.template), name=a.name, namespace=a.namespace, entrypoint=entry,
                       extra_args=extra, image=a.image, num_workers=a.num_workers)
    if a.dry_run:
        import yaml

        sys.stdout.write(yaml.safe_dump(job, sort_keys=False))
        return 0
    api = _kube(a.kubeconfig, a.context)
    create_rayjob(api, job, a.namespace)
    name = job["metadata"]["name"]
    print(f"rayjob {name} created in namespace {a.namespace}: {job['spec']['entrypoint']}")
    if not a.wait:
        print(f"follow it with: kubectl -n {a.namespace} get rayjob {name} -w   (logs: kubectl -n {a.namespace} logs -f job/{name})")
        return 0
    return follow_rayjob(api, name, a.namespace, timeout=a.timeout, interval=a.interval)


if __name__ == "__main__":
    from tfcluster.errors import main_guard

    sys.exit(main_guard(main)())
