"""Workload registry: name -> module, imported only when asked for.

Each module ends with `WORKLOAD = Workload(...)`, the typed contract of `workloads/base.py`
(its Config, how it trains, its export, serving contract, metric and search space);
`get(name)` returns that object. Adding a workload is one module and one line here
(ARCHITECTURE.md walks through OCR as the example). The entry points look workloads up here and
hand the object to the machinery (`tfcluster.train_cli`, `tfcluster.sweep_cli`).
"""

from __future__ import annotations

import importlib

from tfcluster.errors import UserError
from tfcluster.workloads.base import Workload

WORKLOADS: dict[str, str] = {
    "nmt": "tfcluster.workloads.nmt",
    "dcgan": "tfcluster.workloads.dcgan",
    "dqn": "tfcluster.workloads.dqn",
    "pg": "tfcluster.workloads.pg",
    "ocr": "tfcluster.workloads.ocr",
}


def get(name: str) -> Workload:
    """The contract object of workload `name`; a one-line error for an unknown name."""
    try:
        module = WORKLOADS[name]
    except KeyError:
        raise UserError(f"unknown workload {name!r}; one of: {', '.join(WORKLOADS)}") from None
    return importlib.import_module(module).WORKLOAD


def release_check(name: str):
    """The `contract.ReleaseCheck` of workload `name` (what `tfcluster release` measures)."""
    check = get(name).release
    if check is None:
        raise UserError(f"workload {name} declares no release check")
    return check
