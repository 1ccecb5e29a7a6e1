"""Sweep entry points: `python jobs/sweep_<workload>.py [flags]` (`main(name)`) and
`tfcluster sweep <workload> [flags]` (`command`): the workload's contract object handed to
`tfcluster.tune.sweep`, and with `--export_best --promote` the release gate on the exported best trial."""

from __future__ import annotations

import sys
from typing import Any

from tfcluster import workloads
from tfcluster.errors import main_guard


def run(wl: Any, argv: list[str] | None = None) -> dict[str, Any]:
    from tfcluster.train_cli import promote
    from tfcluster.tune import sweep as sweep_mod

    sc, cfg, explicit = sweep_mod.parse(wl, argv)
    out = sweep_mod.run(wl, sc, cfg, explicit)
    promote(wl, cfg, out.get("export_path"))
    return out


def main(name: str, argv: list[str] | None = None) -> int:
    """What `jobs/sweep_<name>.py` runs: errors for people become one line and exit status 2."""

    def go() -> int:
        run(workloads.get(name), argv)
        return 0

    return main_guard(go)()


def command(argv: list[str] | None = None) -> int:
    """`tfcluster sweep <workload> [flags]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print(f"usage: tfcluster sweep {{{','.join(workloads.WORKLOADS)}}} [flags]   (--help after the workload lists them)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return main(argv[0], argv[1:])
