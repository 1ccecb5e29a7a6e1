"""Paths and small helpers shared by the container and Kubernetes tests (imported by name: this folder has no package)."""

from __future__ import annotations

import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "k8s" / "charts" / "tf-serving"
RAY_DIR = ROOT / "k8s" / "ray"
EXAMPLES = ROOT / "k8s" / "examples"
DOCKER = ROOT / "docker"
KUBERAY_SCHEMAS = ROOT.parent / "shared" / "schemas" / "kuberay"
K8S_VERSIONS = ("1.31", "1.32", "1.33", "1.34")


def strict_schema(schema):
    """Reject unknown fields the way `kubectl apply --validate=strict` does: additionalProperties false
    wherever the CRD lists properties and does not preserve unknown fields."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        for v in schema.values():
            strict_schema(v)
    elif isinstance(schema, list):
        for v in schema:
            strict_schema(v)
    return schema



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(argv, capsys):
    """The `tfcluster` entry point in this process; (exit status, stdout, stderr)."""
    from tfcluster import cli

    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
