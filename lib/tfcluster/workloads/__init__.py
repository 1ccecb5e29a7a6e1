"""Workload registry: one module per workload, imported only when asked for.

Each module follows the workload contract (DESIGN.md): `Config`, `build`, `make_data`,
a `tf.function` train step, `evaluate`, `export`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tfcluster.errors import UserError

WORKLOADS: dict[str, str] = {
    "nmt": "tfcluster.workloads.nmt",
    "dcgan": "tfcluster.workloads.dcgan",
    "dqn": "tfcluster.workloads.dqn",
    "pg": "tfcluster.workloads.pg",
}


def get(name: str) -> ModuleType:
    try:
        return importlib.import_module(WORKLOADS[name])
    except KeyError:
        raise UserError(f"unknown workload {name!r}; one of: {', '.join(WORKLOADS)}") from None
