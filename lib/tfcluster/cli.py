"""`tfcluster <command>`: one entry point, each command in its own module (imported lazily).

  tfcluster train   <workload> [flags]   train on Ray (same as python jobs/train_<workload>.py)
  tfcluster sweep   <workload> [flags]   Ray Tune sweep (same as python jobs/sweep_<workload>.py)
  tfcluster export  --workload W ...     export a checkpoint to <model_base_path>/<model>/<version>
  tfcluster serve   [flags]              local model server with tensorflow_model_server's flags
  tfcluster sync-models SRC DST          mirror complete versions from a bucket into a folder (TF Serving's sidecar)
  tfcluster predict [flags] [inputs]     call a model over gRPC
  tfcluster release --model M [flags]    canary -> stable when the new version is as good on held-out data
  tfcluster deploy  apply|promote|status Kubernetes: the tf-serving chart and model versions
  tfcluster submit  [flags] -- cmd       a Ray job (dashboard address) or a RayJob resource
  tfcluster cluster up|down|status       a local Ray head on 127.0.0.1 with token auth
  tfcluster demo                         what `make demo` runs
"""

from __future__ import annotations

import importlib
import sys

from tfcluster.errors import main_guard

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("tfcluster.train_cli:command", "train a workload on Ray"),
    "sweep": ("tfcluster.sweep_cli:command", "hyperparameter sweep with Ray Tune"),
    "export": ("tfcluster.export_cli", "export a checkpoint as a versioned SavedModel"),
    "serve": ("tfcluster.serving.server", "local model server with TF Serving's API and flags"),
    "sync-models": ("tfcluster.serving.sync", "mirror complete model versions from a bucket into a folder"),
    "predict": ("tfcluster.serving.cli", "call a served model over gRPC"),
    "release": ("tfcluster.release", "promote a version to stable only when it is as good, measured over gRPC"),
    "deploy": ("tfcluster.deploy", "deploy serving to Kubernetes, promote versions"),
    "submit": ("tfcluster.submit", "submit a training job to Ray or KubeRay"),
    "cluster": ("tfcluster.cluster", "start or stop a local Ray cluster"),
    "demo": ("tfcluster.demo", "train, export, serve and translate on a local cluster"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: tfcluster <command> [flags]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`tfcluster <command> --help` for a command's flags."]
    return "\n".join(lines)


@main_guard
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from tfcluster import __version__

        print(f"tfcluster {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, _, function = COMMANDS[name][0].partition(":")  # `module` (its main) or `module:function`
    return int(getattr(importlib.import_module(module_name), function or "main")(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
