"""`tfcluster cluster up|down|status`: a local Ray head for `ray job submit`.

The head listens on 127.0.0.1 only, with Ray's token authentication on (the token lives
in ~/.ray/auth_token and is created when missing) and the dashboard, which is also the
job-submission endpoint, at http://127.0.0.1:8265. Ray's CLI authenticates only when
RAY_AUTH_MODE=token is set in its environment; `.venv/bin/activate` exports it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tfcluster.errors import UserError

DASHBOARD_PORT = 8265
GCS_PORT = 6379
HOST = "127.0.0.1"
DASHBOARD_URL = f"http://{HOST}:{DASHBOARD_PORT}"


def token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))


def auth_env() -> dict[str, str]:
    """The environment for Ray processes and clients: token auth on, and this Python's bin
    directory first on PATH, so `python` in a job entrypoint is the one tfcluster runs in."""
    bin_dir = os.path.dirname(sys.executable)
    path = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    return {**os.environ, "RAY_AUTH_MODE": "token", "PATH": path}


def ray_cli() -> str:
    exe = Path(sys.executable).with_name("ray")
    if exe.exists():
        return str(exe)
    found = shutil.which("ray")
    if not found:
        raise UserError("the `ray` command is not installed; run `make venv` first")
    return found


def ensure_token() -> Path:
    path = token_path()
    if not path.exists() and not os.environ.get("RAY_AUTH_TOKEN"):
        subprocess.run([ray_cli(), "get-auth-token", "--generate"], env=auth_env(), check=True, capture_output=True)
        print(f"created a Ray auth token in {path}")
    return path


def dashboard_up(url: str = DASHBOARD_URL, timeout_s: float = 2.0) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=timeout_s)
        return True
    except urllib.error.HTTPError:
        return True  # answering (401 without a token still means it is up)
    except OSError:
        return False


def up(num_cpus: int | None = None, num_gpus: int | None = None, wait_s: float = 60.0) -> None:
    if dashboard_up():
        print(f"a Ray cluster is already up; dashboard and job API at {DASHBOARD_URL}")
        return
    ensure_token()
    cmd = [
        ray_cli(), "start", "--head",
        "--node-ip-address", HOST,
        "--port", str(GCS_PORT),
        "--dashboard-host", HOST,
        "--dashboard-port", str(DASHBOARD_PORT),
        "--include-dashboard", "true",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        cmd += ["--num-gpus", str(num_gpus)]
    print("starting Ray:", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, env=auth_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"ray start failed: {tail[0]}")
    deadline = time.monotonic() + wait_s
    while not dashboard_up():
        if time.monotonic() > deadline:
            raise UserError(f"Ray started but the dashboard did not answer at {DASHBOARD_URL} within {wait_s:.0f}s")
        time.sleep(0.5)
    print(f"Ray is up: dashboard and job API at {DASHBOARD_URL} (token auth on)")
    print("submit with:  export RAY_AUTH_MODE=token   # set already inside .venv/bin/activate")
    print(f"              ray job submit --address {DASHBOARD_URL} --working-dir . -- python jobs/train_nmt.py ...")


def down() -> None:
    subprocess.run([ray_cli(), "stop", "--force"], env=auth_env(), capture_output=True)
    print("Ray stopped")


def status() -> int:
    if not dashboard_up():
        print(f"no Ray cluster answers at {DASHBOARD_URL}")
        return 1
    return subprocess.run([ray_cli(), "status", "--address", f"{HOST}:{GCS_PORT}"], env=auth_env()).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfcluster cluster", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--num_cpus", type=int, default=None, help="CPUs the head offers (default: all)")
    p.add_argument("--num_gpus", type=int, default=None, help="GPUs the head offers (default: detected)")
    a = p.parse_args(argv)
    if a.action == "up":
        up(a.num_cpus, a.num_gpus)
    elif a.action == "down":
        down()
    else:
        return status()
    return 0
