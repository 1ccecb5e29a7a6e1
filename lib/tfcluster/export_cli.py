"""`tfcluster export --workload W --out_dir RUN --model_base_path MODELS [--checkpoint best|last]`.

Re-exports a trained run (its `config.json` and checkpoints) as the next version of the
workload's model in the repository, as the train jobs do at their end.
"""

from __future__ import annotations

import argparse

from tfcluster import config as config_mod
from tfcluster import workloads
from tfcluster.errors import UserError
from tfcluster.storage import require_file


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfcluster export", description=__doc__.splitlines()[0])
    p.add_argument("--workload", required=True, choices=sorted(workloads.WORKLOADS))
    p.add_argument("--out_dir", required=True, help="the training run's out_dir (config.json and checkpoints)")
    p.add_argument("--model_base_path", required=True, help="model repository: <base>/<model>/<version>/")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which checkpoint (default: best)")
    a = p.parse_args(argv)
    wl = workloads.get(a.workload)
    require_file(f"{a.out_dir}/{config_mod.CONFIG_FILE}", "training run (config.json)")
    cfg = config_mod.load(wl.config, a.out_dir)
    cfg = config_mod.build(wl.config, {**config_mod.to_dict(cfg), "out_dir": a.out_dir, "model_base_path": a.model_base_path})
    path = wl.export(cfg, a.checkpoint)
    if not path:
        raise UserError(f"nothing exported from {a.out_dir}")
    print(path)
    return 0
