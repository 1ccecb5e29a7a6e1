"""`tfcluster train <workload> [flags]`: the same as `python jobs/train_<workload>.py [flags]`."""

from __future__ import annotations

import sys

from tfcluster import workloads


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print(f"usage: tfcluster train {{{','.join(workloads.WORKLOADS)}}} [flags]   (--help after the workload lists them)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    return workloads.main(name, rest)
