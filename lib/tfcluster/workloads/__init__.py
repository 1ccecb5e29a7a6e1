"""Workload registry: name -> module, imported only when asked for.

Each module ends with `WORKLOAD = Workload(...)`, the typed contract of `workloads/base.py`
(its Config, how it trains, its export, serving contract, metric and search space);
`get(name)` returns that object. Adding a workload is one module and one line here
(ARCHITECTURE.md walks through OCR as the example).
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


def main(name: str, argv: list[str] | None = None) -> int:
    """What `jobs/train_<name>.py` and `tfcluster train <name>` run."""
    from tfcluster.errors import main_guard

    return main_guard(lambda: get(name).main(argv))()
