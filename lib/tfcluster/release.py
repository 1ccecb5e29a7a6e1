"""`tfcluster release`: a new version takes the `stable` label only when it is as good as the current one
on held-out data, measured through the serving API with the workload's own metric; with rollback.

    tfcluster release --model nmt --model_config_file models/models.config --server 127.0.0.1:8500 \\
        --source_file data/test.en --reference_file data/test.de [--version 3] [--margin 0.5]
    tfcluster release --model pg --release pg -n serving --env CartPole-v1 --episodes 20     # a chart release
    tfcluster release --model nmt --model_config_file models/models.config --rollback

1. The candidate (`--version`, default the newest version the server has) must load within
   `--load_timeout`; it is labelled `canary` in the models config the server reads (a models.config
   file for `tfcluster serve --model_config_file`, or the chart's ConfigMap, which TF Serving re-reads).
2. `canary` and `stable` are evaluated through gRPC, by label, the path clients use, on the same
   evaluation set with the metric the workload declares (`Workload.release`: BLEU for NMT, sequence
   accuracy for OCR, SWD for DCGAN, mean return for DQN/PG).
3. `stable` moves to the candidate when its figure is at least stable's minus `--margin` (for a
   lower-is-better metric: at most plus); with no `stable` yet, when it passes `--min_metric` (if
   given). Otherwise the config is put back as it was and the command exits 1 with one line giving
   both figures.
4. Every decision is appended to a history (JSON lines beside models.config; a ConfigMap
   annotation on Kubernetes): time, model, versions, figures, verdict, who ran it and how.
   `--rollback` moves `stable` back to the stable before the current one.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import socket
import sys
import time
from typing import Any, Callable

from tfcluster.errors import UserError, main_guard

STABLE, CANARY = "stable", "canary"
HISTORY_ANNOTATION = "tfcluster.io/release-history"
HISTORY_KEEP = 100  # entries kept in the ConfigMap annotation (the local file keeps all)


# ---------------------------------------------------------------------------- models.config edits


def labels_of(text: str, model: str) -> dict[str, int]:
    from tfcluster.deploy import model_names, parse_model_config

    for c in parse_model_config(text).model_config_list.config:
        if c.name == model:
            return dict(c.version_labels)
    raise UserError(f"model {model!r} is not in the models config (it has: {', '.join(model_names(text)) or 'nothing'})")


def with_labels(text: str, model: str, labels: dict[str, int | None]) -> str:
    """models.config text with `labels` of `model` set (None: removed)."""
    from google.protobuf import text_format

    from tfcluster.deploy import parse_model_config

    msg = parse_model_config(text)
    cfg = next(c for c in msg.model_config_list.config if c.name == model)
    for label, version in labels.items():
        if version is None:
            cfg.version_labels.pop(label, None)
        else:
            cfg.version_labels[label] = int(version)
    return text_format.MessageToString(msg)


# ---------------------------------------------------------------------------- where the config lives


class LocalConfig:
    """A models.config file (what `tfcluster serve --model_config_file` polls); history beside it."""

    def __init__(self, path: str):
        from tfcluster.storage import require_file

        self.path = require_file(path, "--model_config_file")
        self.history_path = path + ".history.jsonl"
        self.where = path

    def read(self) -> str:
        with open(self.path) as f:
            return f.read()

    def write(self, text: str) -> None:
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)  # the server never reads half a file

    def history(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.history_path):
            return []
        with open(self.history_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def append(self, entry: dict[str, Any]) -> None:
        with open(self.history_path, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")


class KubeConfigMap:
    """The chart release's models ConfigMap (TF Serving re-reads it); history in an annotation."""

    def __init__(self, release: str, namespace: str, values: dict[str, Any], kubeconfig: str | None, context: str | None):
        from kubernetes import client

        from tfcluster import deploy

        objects = deploy.render(values, release, namespace)
        self.name = deploy.find(objects, "ConfigMap", ("tfcluster.io/config", "models"))["metadata"]["name"]
        self.service = deploy.find(objects, "Service")["metadata"]["name"]
        self.namespace = namespace
        self.api = deploy.api_client(kubeconfig, context)
        self.core = client.CoreV1Api(self.api)
        self.where = f"configmap {namespace}/{self.name}"

    def _get(self):
        from kubernetes.client.exceptions import ApiException

        from tfcluster import deploy

        try:
            return deploy._call(self.api, self.core.read_namespaced_config_map, self.name, self.namespace)
        except ApiException:
            raise UserError(f"configmap {self.name} not found in namespace {self.namespace}; deploy the release first") from None

    def read(self) -> str:
        from tfcluster import deploy

        cm = self._get()
        self._rv = cm.metadata.resource_version
        text = (cm.data or {}).get(deploy.MODELS_CONFIG_KEY)
        if text is None:
            raise UserError(f"configmap {self.name} has no {deploy.MODELS_CONFIG_KEY}")
        return text

    def _patch(self, body: dict[str, Any]):
        from tfcluster import deploy

        try:
            return deploy._call(self.api, self.core.patch_namespaced_config_map, self.name, self.namespace, body,
                                field_manager=deploy.FIELD_MANAGER, _content_type="application/merge-patch+json")
        except UserError as e:
            if " 409 " in f" {e} ":
                raise UserError(f"configmap {self.name} changed while releasing; run the command again") from None
            raise

    def write(self, text: str) -> None:
        from tfcluster import deploy

        # resourceVersion: the patch fails (409) if someone else changed the ConfigMap since we read it.
        body: dict[str, Any] = {"data": {deploy.MODELS_CONFIG_KEY: text}}
        if getattr(self, "_rv", None):
            body["metadata"] = {"resourceVersion": self._rv}
        cm = self._patch(body)
        self._rv = cm.metadata.resource_version

    def history(self) -> list[dict[str, Any]]:
        raw = (self._get().metadata.annotations or {}).get(HISTORY_ANNOTATION, "[]")
        try:
            return list(json.loads(raw))
        except ValueError:
            return []

    def append(self, entry: dict[str, Any]) -> None:
        entries = (self.history() + [entry])[-HISTORY_KEEP:]
        self._patch({"metadata": {"annotations": {HISTORY_ANNOTATION: json.dumps(entries, sort_keys=True)}}})


# ---------------------------------------------------------------------------- the server


@dataclasses.dataclass
class Served:
    """One labelled version of a model, called through gRPC: `served(inputs)` -> outputs (numpy)."""

    client: Any
    model: str
    label: str
    spec: Any  # contract.ModelSpec of the default signature, from the server's metadata

    def __call__(self, inputs: dict[str, Any], signature: str | None = None) -> dict[str, Any]:
        import numpy as np

        from tfcluster.serving.client import ServingError

        if signature is None and self.spec is not None:  # numbers in the signature's dtype (an env's float64 -> float32)
            want = {t.key: t.dtype for t in self.spec.inputs}
            inputs = {k: np.asarray(v).astype(want[k]) if want.get(k) not in (None, "string") else v
                      for k, v in inputs.items()}
        try:
            return self.client.predict(self.model, inputs, label=self.label, signature=signature)
        except ServingError as e:
            if e.code is not None and e.code.name == "INVALID_ARGUMENT":
                raise UserError(f"the evaluation set does not match {self.model}'s inputs ({self.label}): {e}") from None
            raise UserError(str(e)) from None


def wait_loaded(client, model: str, version: int, timeout_s: float) -> None:
    """Until `version` is AVAILABLE; a UserError quoting its load error, or naming what was seen."""
    from tfcluster.serving.client import ServingError

    deadline, last = time.monotonic() + timeout_s, "nothing yet"
    while True:
        try:
            states = {s.version: s for s in client.status(model, timeout_s=10, retries=0)}
        except ServingError as e:
            if e.code is not None and e.code.name == "NOT_FOUND":
                raise UserError(f"the server at {client.target} does not serve a model named {model!r}") from None
            raise UserError(str(e)) from None
        s = states.get(version)
        if s is not None and s.state == "AVAILABLE":
            return
        if s is not None and s.state == "END" and s.error_message:
            raise UserError(f"version {version} of {model} did not load: {s.error_message}")
        last = f"version {version} {s.state}" if s else f"no version {version} (the server has {sorted(states) or 'none'})"
        if time.monotonic() >= deadline:
            raise UserError(f"version {version} of {model} is not AVAILABLE after {timeout_s:g} s ({last})")
        time.sleep(0.5)


def wait_label(client, model: str, label: str, version: int, timeout_s: float) -> None:
    """Until the server resolves `label` to `version` (it re-read the config)."""
    from tfcluster.serving.client import ServingError

    deadline, seen = time.monotonic() + timeout_s, None
    while True:
        try:
            seen = client.metadata(model, label=label).version
            if seen == version:
                return
        except ServingError as e:
            seen = e.details or str(e)
        if time.monotonic() >= deadline:
            raise UserError(f"the server did not take label {label} -> {version} of {model} within {timeout_s:g} s "
                            f"(it answers: {seen}); does it poll the config (--model_config_file_poll_wait_seconds)?")
        time.sleep(0.25)


# ---------------------------------------------------------------------------- the gate


@dataclasses.dataclass
class Gate:
    store: Any  # LocalConfig or KubeConfigMap
    client: Any  # tfcluster.serving.Client
    model: str
    check: Any  # the workload's contract.ReleaseCheck
    data: dict[str, Any]
    margin: float = 0.0
    min_metric: float | None = None
    load_timeout_s: float = 120.0
    apply_timeout_s: float = 120.0
    apply: Callable[[str], None] | None = None  # after each config write (the local server's reload RPC)
    command: str = ""  # what ran the gate, for the history

    def _write(self, text: str, label: str, version: int | None) -> None:
        self.store.write(text)
        if self.apply:
            self.apply(text)
        if version is not None:
            wait_label(self.client, self.model, label, version, self.apply_timeout_s)

    def evaluate(self, label: str) -> float:
        from tfcluster import contract

        md = self.client.metadata(self.model, label=label)
        spec = md.signatures.get(contract.DEFAULT_SIGNATURE)
        return float(self.check.evaluate(Served(self.client, self.model, label, spec), self.data))

    def passes(self, candidate: float, stable: float | None) -> bool:
        if stable is None:
            if self.min_metric is None:
                return True
            return candidate >= self.min_metric if self.check.mode == "max" else candidate <= self.min_metric
        return candidate >= stable - self.margin if self.check.mode == "max" else candidate <= stable + self.margin

    def newest(self) -> int:
        from tfcluster.serving.client import ServingError

        try:
            versions = [s.version for s in self.client.status(self.model, timeout_s=10, retries=0)]
        except ServingError as e:
            raise UserError(str(e)) from None
        if not versions:
            raise UserError(f"the server has no version of {self.model}")
        return max(versions)

    def release(self, version: int | None = None) -> dict[str, Any]:
        text = self.store.read()
        labels = labels_of(text, self.model)
        stable = labels.get(STABLE)
        candidate = version or self.newest()
        if candidate == stable:
            raise UserError(f"version {candidate} of {self.model} is already {STABLE}")
        wait_loaded(self.client, self.model, candidate, self.load_timeout_s)
        if stable is not None:
            wait_loaded(self.client, self.model, stable, self.load_timeout_s)
        self._write(with_labels(text, self.model, {CANARY: candidate}), CANARY, candidate)
        try:
            got = self.evaluate(CANARY)
            base = self.evaluate(STABLE) if stable is not None else None
        except BaseException:
            self._write(text, CANARY, None)  # as it was
            raise
        ok = self.passes(got, base)
        entry = self._entry("promoted" if ok else "refused", candidate, stable, got, base)
        if ok:
            self._write(with_labels(text, self.model, {STABLE: candidate, CANARY: None}), STABLE, candidate)
        else:
            self._write(text, STABLE, stable)
        self.store.append(entry)
        return entry

    def rollback(self) -> dict[str, Any]:
        text = self.store.read()
        current = labels_of(text, self.model).get(STABLE)
        if current is None:
            raise UserError(f"{self.model} has no {STABLE} label to roll back")
        moves = [e for e in self.store.history()
                 if e.get("model") == self.model and e.get("verdict") in ("promoted", "rolled back") and e.get("to") == current]
        previous = moves[-1].get("from") if moves else None
        if previous is None:
            raise UserError(f"no earlier {STABLE} version of {self.model} in the history of {self.store.where}")
        wait_loaded(self.client, self.model, previous, self.load_timeout_s)
        self._write(with_labels(text, self.model, {STABLE: previous}), STABLE, previous)
        entry = self._entry("rolled back", previous, current, None, None)
        self.store.append(entry)
        return entry

    def _entry(self, verdict: str, to: int, was: int | None, got: float | None, base: float | None) -> dict[str, Any]:
        return {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": self.model, "verdict": verdict,
            "to": to if verdict != "refused" else was, "from": was, "candidate": to if verdict != "rolled back" else None,
            "metric": self.check.metric, "mode": self.check.mode, "candidate_value": got, "stable_value": base,
            "margin": self.margin, "by": f"{getpass.getuser()}@{socket.gethostname()}",
            "command": self.command or " ".join(sys.argv),
        }


def fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.2f}"


def describe(entry: dict[str, Any]) -> str:
    m, metric = entry["model"], entry["metric"]
    if entry["verdict"] == "rolled back":
        return f"{m}: {STABLE} rolled back to version {entry['to']} (was {entry['from']})"
    figures = f"{metric} {fmt(entry['candidate_value'])} (version {entry['candidate']}) vs {fmt(entry['stable_value'])} " \
              f"({STABLE}{' version ' + str(entry['from']) if entry['from'] is not None else ''})"
    if entry["verdict"] == "promoted":
        return f"{m}: {STABLE} -> version {entry['candidate']}: {figures}"
    return f"{m}: version {entry['candidate']} refused, {STABLE} stays at {entry['from']}: {figures}, margin {entry['margin']:g}"


# ---------------------------------------------------------------------------- the command


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation set (what the model's workload needs)")
    g.add_argument("--source_file", default="", help="nmt: source sentences, one per line (local, s3://, gs://)")
    g.add_argument("--reference_file", default="", help="nmt: their reference translations")
    g.add_argument("--image_dir", default="", help="dcgan: real images to compare with (SWD); ocr: labelled images "
                                                   "(the label is the file name up to the first _ or .)")
    g.add_argument("--num_images", type=int, default=256, help="dcgan: images generated per version (default: 256)")
    g.add_argument("--env", default="", help="dqn/pg: the environment (e.g. CartPole-v1)")
    g.add_argument("--episodes", type=int, default=20, help="dqn/pg: episodes per version (default: 20)")
    g.add_argument("--eval_seed", type=int, default=1_000_000,
                   help="dqn/pg: first episode seed, disjoint from training seeds (default: 1000000); dcgan: z seed")


def parser() -> argparse.ArgumentParser:
    from tfcluster import workloads

    p = argparse.ArgumentParser(prog="tfcluster release", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(workloads.WORKLOADS), help="the served model (its workload)")
    p.add_argument("--version", type=int, default=0, help="the candidate (default: the newest version the server has)")
    where = p.add_argument_group("where the labels live (one of)")
    where.add_argument("--model_config_file", default="", help="models.config of `tfcluster serve` (or a TF Serving on this machine)")
    where.add_argument("--release", default="", help="a tf-serving chart release on Kubernetes (its models ConfigMap)")
    where.add_argument("-n", "--namespace", default="default")
    where.add_argument("-f", "--values", action="append", default=[], help="the release's values files")
    where.add_argument("--kubeconfig", default=None)
    where.add_argument("--context", default=None)
    p.add_argument("--server", default="", help="host:port of the server's gRPC API (default: 127.0.0.1:8500, or the "
                                                "release's Service <name>.<namespace>.svc:8500)")
    p.add_argument("--margin", type=float, default=0.0, help="how much worse than stable the candidate may be (default: 0)")
    p.add_argument("--min_metric", type=float, default=None, help="with no stable yet: the figure the candidate must reach")
    p.add_argument("--load_timeout", type=float, default=120.0, help="seconds for the candidate to load (default: 120)")
    p.add_argument("--apply_timeout", type=float, default=120.0,
                   help="seconds for the server to take a label change (default: 120; a ConfigMap can take a minute)")
    p.add_argument("--rollback", action="store_true", help="move stable back to the previous stable")
    p.add_argument("--history", action="store_true", help="print the decisions so far and exit")
    add_eval_flags(p)
    return p


def build_gate(a: argparse.Namespace, data: dict[str, Any] | None = None, command: str = "") -> Gate:
    from tfcluster import workloads
    from tfcluster.serving import Client

    if bool(a.model_config_file) == bool(a.release):
        raise UserError("give --model_config_file (a local server) or --release (a chart release on Kubernetes)")
    check = workloads.release_check(a.model)
    apply = None
    if a.release:
        from tfcluster import deploy

        store: Any = KubeConfigMap(a.release, a.namespace, deploy.load_values(a.values, []), a.kubeconfig, a.context)
        server = a.server or f"{store.service}.{a.namespace}.svc:8500"
    else:
        store = LocalConfig(a.model_config_file)
        server = a.server or "127.0.0.1:8500"
    client = Client(server, timeout_s=60.0, retries=2)
    if not a.release:
        apply = lambda text: _reload(client, text)  # noqa: E731 - the change now, not at the next poll
    data = data if data is not None else {k: getattr(a, k) for k in
                                          ("source_file", "reference_file", "image_dir", "num_images", "env", "episodes", "eval_seed")}
    return Gate(store, client, a.model, check, data, a.margin, a.min_metric, a.load_timeout, a.apply_timeout, apply,
                command)


def _reload(client, text: str) -> None:
    """HandleReloadConfigRequest with the new config, so a local server applies it at once."""
    from tensorflow_serving.apis import model_management_pb2

    from tfcluster.deploy import parse_model_config
    from tfcluster.serving.client import ServingError

    req = model_management_pb2.ReloadConfigRequest(config=parse_model_config(text))
    try:
        resp = client._call(client._models.HandleReloadConfigRequest, req, "HandleReloadConfigRequest")
    except ServingError as e:
        raise UserError(str(e)) from None
    if resp.status.error_code:
        raise UserError(f"the server refused the models config: {resp.status.error_message}")


def run(a: argparse.Namespace, data: dict[str, Any] | None = None, command: str = "") -> dict[str, Any] | None:
    """The decision (the history entry it appended), or None for --history."""
    gate = build_gate(a, data, command)
    try:
        if a.history:
            for e in gate.store.history():
                print(json.dumps(e, sort_keys=True))
            return None
        return gate.rollback() if a.rollback else gate.release(a.version or None)
    finally:
        gate.client.close()


def promote(wl: Any, cfg: Any, path: str) -> dict[str, Any]:
    """`--promote`: the release gate on the version a run just exported, with the run's evaluation set."""
    from tfcluster import storage

    if wl.release is None:
        raise UserError(f"workload {wl.name} declares no release check; --promote is not available")
    a = parser().parse_args(["--model", wl.name, "--version", storage.basename(path), "--load_timeout", "600"])
    a.server = cfg.promote_server
    if cfg.promote.startswith("k8s:"):
        a.namespace, _, a.release = cfg.promote[len("k8s:"):].partition("/")
        if not (a.namespace and a.release):
            raise UserError(f"--promote {cfg.promote}: write k8s:<namespace>/<release>")
    else:
        a.model_config_file = cfg.promote
    print(f"# release gate: version {storage.basename(path)} of {wl.name} against {STABLE} ({cfg.promote})", flush=True)
    entry = run(a, wl.release.from_run(cfg), " ".join(sys.argv))  # the training command
    if entry["verdict"] == "refused":
        raise UserError(describe(entry))
    print(f"# {describe(entry)}", flush=True)
    return entry


@main_guard
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    entry = run(parser().parse_args(argv), command=" ".join(["tfcluster", "release", *argv]))
    if entry is None:
        return 0
    if entry["verdict"] == "refused":
        print(describe(entry), file=sys.stderr, flush=True)
        return 1
    print(describe(entry), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
