"""Run `tfcluster serve` as a subprocess and wait until its models are AVAILABLE.

    from tfcluster.serving import LocalServer
    with LocalServer(model_name="nmt", model_base_path="models/nmt") as srv:   # free ports
        srv.wait_until_available("nmt", timeout_s=120)
        print(srv.client().predict("nmt", "a man rides a bike .")["translation"])
    # leaving the block sends SIGTERM: in-flight requests finish, the server exits

Any `tfcluster serve` flag can be passed as a keyword (`enable_batching=True`,
`model_config_file=...`, `rest_api_port=0`); `port` and `rest_api_port` default to free
loopback ports. The server's log goes to `log_path` (a temporary file by default) and
its last lines are quoted when it fails to start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from tfcluster import quiet
from tfcluster.errors import UserError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalServer:
    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None, rest_api_port: int | None = None,
                 log_path: str | None = None, python: str = sys.executable, env: dict | None = None, **flags: Any):
        self.host = host
        self.port = port or free_port(host)
        self.rest_api_port = free_port(host) if rest_api_port is None else rest_api_port
        self.flags = {"port": self.port, "rest_api_port": self.rest_api_port, "bind_address": host, **flags}
        self.log_path = log_path or tempfile.mkstemp(prefix="tfcluster-serve-", suffix=".log")[1]
        self.python, self.env = python, env
        self.proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_api_port}"

    def argv(self) -> list[str]:
        args = [self.python, "-m", "tfcluster.serving.server"]
        for k, v in self.flags.items():
            if v is None:
                continue
            args.append(f"--{k}={str(v).lower() if isinstance(v, bool) else v}")
        return args

    def start(self) -> "LocalServer":
        env = {**os.environ, **(self.env or {})}
        lib = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [lib, env.get("PYTHONPATH")]))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT, env=env)
        return self

    def log_tail(self, n: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                lines = [ln for ln in f.read().splitlines() if "cuInit" not in ln and not quiet.is_noise(ln)]
            return "\n".join(lines[-n:])
        except OSError:
            return ""

    def client(self, **kwargs):
        from tfcluster.serving.client import Client

        return Client(self.target, **kwargs)

    def wait_until_available(self, *models: str, timeout_s: float = 120.0) -> dict[str, int]:
        """Wait until each model has an AVAILABLE version; {model: version}. One-line error on failure."""
        deadline = time.monotonic() + timeout_s
        found = {}
        with self.client(timeout_s=5) as c:
            for m in models:
                while True:
                    if self.proc is not None and self.proc.poll() is not None:
                        raise UserError(f"the model server exited with status {self.proc.returncode}; its log ({self.log_path}) ends:\n{self.log_tail()}")
                    try:
                        found[m] = c.wait_until_available(m, timeout_s=min(2.0, max(0.1, deadline - time.monotonic())))
                        break
                    except UserError as e:
                        if time.monotonic() >= deadline:
                            raise UserError(f"{e}; server log {self.log_path}") from None
        return found

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (drain), then wait; SIGKILL after `timeout_s`. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
