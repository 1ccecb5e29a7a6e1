"""Training entry points: `python jobs/train_<workload>.py [flags]` (`main(name)`) and
`tfcluster train <workload> [flags]` (`command`).

Flags -> Config, then the workload's offline mode (inference, visualize, evaluate-only) or training:
the data-parallel driver (`tfcluster.train.driver`) or the RL algorithm (`tfcluster.rl.algorithm`),
each handed the workload's contract object; the export; and with `--promote` the release gate on
the version just exported (`tfcluster.release`).
"""

from __future__ import annotations

import sys
from typing import Any

from tfcluster import workloads
from tfcluster.errors import main_guard


def run(wl: Any, argv: list[str] | None = None) -> int:
    """Train workload `wl` (its contract object) with the flags in `argv`."""
    from tfcluster import runs

    cfg = runs.parse(wl, argv)
    if wl.offline(cfg):
        return 0
    runs.record_command(cfg.out_dir, argv)
    if wl.is_rl:
        from tfcluster.rl import algorithm

        metrics = algorithm.run(wl, cfg)
    else:
        from tfcluster.train import driver

        metrics = driver.run(wl, cfg)
    promote(wl, cfg, (metrics or {}).get("export_path"))
    return 0


def promote(wl: Any, cfg: Any, path: str | None) -> None:
    """--promote: the release gate on the version just exported."""
    if path and getattr(cfg, "promote", ""):
        from tfcluster import release

        release.promote(wl, cfg, path)


def main(name: str, argv: list[str] | None = None) -> int:
    """What `jobs/train_<name>.py` runs: errors for people become one line and exit status 2."""
    return main_guard(lambda: run(workloads.get(name), argv))()


def command(argv: list[str] | None = None) -> int:
    """`tfcluster train <workload> [flags]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print(f"usage: tfcluster train {{{','.join(workloads.WORKLOADS)}}} [flags]   (--help after the workload lists them)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return main(argv[0], argv[1:])
