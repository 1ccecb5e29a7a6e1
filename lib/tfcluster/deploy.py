"""`tfcluster deploy apply|promote|status`: TF Serving on Kubernetes through the `kubernetes` client.

  tfcluster deploy apply   --release nmt -f k8s/examples/nmt-values.yaml
        render k8s/charts/tf-serving (a real Helm engine, offline) and server-side apply
        every object (field manager `tfcluster`, the way `kubectl apply --server-side` does)
  tfcluster deploy promote --release nmt --model nmt --version 3 --label stable
        point a version label at a version in the models ConfigMap; TF Serving re-reads
        the file while running (modelConfig.pollWaitSeconds), no restart
  tfcluster deploy status  --release nmt [--timeout 300]
        wait for the rollout, then for every model to have an AVAILABLE version

Cluster access comes from --kubeconfig/--context, else KUBECONFIG / ~/.kube/config, else
the in-cluster service account. Object names come from rendering the chart with the same
values, so they always match what `deploy apply` (or `helm install`) created.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tfcluster.errors import UserError

FIELD_MANAGER = "tfcluster"
CHART_DIR = Path(__file__).resolve().parents[2] / "k8s" / "charts" / "tf-serving"
MODELS_CONFIG_KEY = "models.config"
REQUEST_TIMEOUT_S = 15
# Irregular plurals of the kinds the chart renders; the rest are lower(kind) + "s".
_PLURALS = {"Ingress": "ingresses", "NetworkPolicy": "networkpolicies"}


# ---------------------------------------------------------------------------- rendering


def load_values(files: list[str], sets: list[str]) -> dict[str, Any]:
    """Merge `-f` files then `--set` expressions, later ones winning (helm's order)."""
    import yaml

    values: dict[str, Any] = {}
    for f in files:
        try:
            with open(f) as fh:
                _merge(values, yaml.safe_load(fh) or {})
        except OSError as e:
            raise UserError(f"cannot read values file {f}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise UserError(f"values file {f} is not valid YAML: {str(e).splitlines()[0]}") from None
    if sets:
        import helm_python

        for s in sets:
            try:
                _merge(values, helm_python.parse_set_string(s))
            except helm_python.HelmError as e:
                raise UserError(f"bad --set {s!r}: {e}") from None
    return values


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Deep-merge `new` into `into`; `--set models[0].x=1` changes element 0 of an existing list, as helm does."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        elif isinstance(v, list) and isinstance(into.get(k), list) and any(isinstance(x, dict) or x is None for x in v):
            old = into[k]
            for i, item in enumerate(v):
                if i >= len(old):
                    old.append(item)
                elif isinstance(item, dict) and isinstance(old[i], dict):
                    _merge(old[i], item)
                elif item is not None:
                    old[i] = item
        else:
            into[k] = v


def render(values: dict[str, Any], release: str, namespace: str, chart_dir: Path | str = CHART_DIR) -> list[dict[str, Any]]:
    """The chart's objects for `values`, in apply order (config before the workloads that mount it)."""
    import helm_python
    import yaml

    try:
        helm_python.validate_release_name(release)
    except helm_python.HelmError:
        raise UserError(f"bad release name {release!r}: lower-case letters, digits and '-', at most 53 characters") from None
    try:
        with helm_python.Chart.load(str(chart_dir)) as chart:
            rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
    except helm_python.HelmChartLoadError as e:
        raise UserError(f"cannot load the chart at {chart_dir}: {e}") from None
    except (helm_python.HelmValuesError, helm_python.HelmRenderError) as e:
        raise UserError("the chart does not accept these values: " + " ".join(str(e).split())) from None
    objects = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for obj in yaml.safe_load_all(text):
            if obj:
                obj.setdefault("metadata", {}).setdefault("namespace", namespace)
                objects.append(obj)
    order = ["ServiceAccount", "PersistentVolumeClaim", "ConfigMap", "Service", "Deployment",
             "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"]
    return sorted(objects, key=lambda o: order.index(o["kind"]) if o["kind"] in order else len(order))


def find(objects: list[dict[str, Any]], kind: str, label: tuple[str, str] | None = None) -> dict[str, Any]:
    for o in objects:
        labels = o["metadata"].get("labels", {})
        if o["kind"] == kind and (label is None or labels.get(label[0]) == label[1]):
            return o
    raise UserError(f"the chart rendered no {kind}")


# ---------------------------------------------------------------------------- cluster access


def api_client(kubeconfig: str | None = None, context: str | None = None):
    """A `kubernetes` ApiClient; a one-line error when no configuration is found."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg, persist_config=False)
    except config.ConfigException as e:
        if kubeconfig or context or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise UserError(f"no usable Kubernetes configuration in {where}: {e}; pass --kubeconfig/--context") from None
        config.load_incluster_config(client_configuration=cfg)
    cfg.retries = 0  # fail fast with one line when the API server is unreachable
    return client.ApiClient(cfg)


def _describe(api, e: Exception) -> UserError:
    """Turn a client exception into one line naming the server and what to do."""
    from kubernetes.client.exceptions import ApiException

    host = api.configuration.host
    if isinstance(e, ApiException):
        reason = e.reason
        try:
            reason = json.loads(e.body).get("message", reason)
        except (TypeError, ValueError, AttributeError):
            pass
        if e.status in (401, 403):
            return UserError(f"the Kubernetes API server at {host} refused the request ({e.status}): {reason}; check your credentials and RBAC")
        return UserError(f"Kubernetes API error {e.status} from {host}: {reason}")
    return UserError(f"cannot reach the Kubernetes API server at {host} ({type(e).__name__}); check the cluster is up and your kubeconfig context (kubectl cluster-info)")


def _call(api, fn, *args, **kwargs):
    import urllib3
    from kubernetes.client.exceptions import ApiException

    try:
        return fn(*args, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
    except ApiException as e:
        if e.status == 404:
            raise
        raise _describe(api, e) from None
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise _describe(api, e) from None


def resource_path(obj: dict[str, Any]) -> str:
    """The REST path of a namespaced object, e.g. /apis/apps/v1/namespaces/ns/deployments/name."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    plural = _PLURALS.get(kind, kind.lower() + "s")
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    meta = obj["metadata"]
    return f"{prefix}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"


def server_side_apply(api, obj: dict[str, Any], *, force: bool = True, dry_run: bool = False) -> dict[str, Any]:
    """PATCH application/apply-patch+yaml: create or update `obj`, owning the fields it sets."""
    query = [("fieldManager", FIELD_MANAGER), ("fieldValidation", "Strict")]
    if force:
        query.append(("force", "true"))
    if dry_run:
        query.append(("dryRun", "All"))
    params = api.param_serialize(
        method="PATCH",
        resource_path=resource_path(obj),
        query_params=query,
        header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
        body=obj,
        auth_settings=["BearerToken"],
    )

    def call(*a, _request_timeout=None):
        resp = api.call_api(*a, _request_timeout=_request_timeout)
        resp.read()
        return api.response_deserialize(resp, {"2XX": "object"}).data

    try:
        return _call(api, call, *params)
    except Exception as e:  # a 404 here means the kind is not served (e.g. no ServiceMonitor CRD)
        from kubernetes.client.exceptions import ApiException

        if isinstance(e, ApiException) and e.status == 404:
            raise UserError(f"the cluster does not serve {obj['apiVersion']} {obj['kind']} (is its CRD installed?); "
                            f"turn it off in the values (e.g. serviceMonitor.enabled=false)") from None
        raise


# ---------------------------------------------------------------------------- models.config


def parse_model_config(text: str):
    """models.config (a ModelServerConfig text proto) -> message; a one-line error when malformed."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    msg = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        raise UserError(f"the models ConfigMap holds a malformed {MODELS_CONFIG_KEY}: {e}") from None
    return msg


def set_version_label(text: str, model: str, version: int, label: str) -> tuple[str, int | None]:
    """Point `label` of `model` at `version` in models.config text; returns (new text, old version)."""
    from google.protobuf import text_format

    from tfcluster import contract

    contract.spec(model)  # unknown model names fail here, with the list of known ones
    if version < 1:
        raise UserError(f"bad version {version}: versions are the positive integers of <model_base_path>/{model}/<version>/")
    if not label or not label.replace("-", "").replace("_", "").isalnum() or not label[0].isalpha():
        raise UserError(f"bad label {label!r}: use a name such as stable or canary")
    msg = parse_model_config(text)
    configs = {c.name: c for c in msg.model_config_list.config}
    if model not in configs:
        raise UserError(f"model {model!r} is not served by this release (it serves: {', '.join(configs) or 'nothing'}); "
                        f"add it to the values' models and run `tfcluster deploy apply`")
    cfg = configs[model]
    policy = cfg.model_version_policy
    if policy.WhichOneof("policy_choice") == "specific" and version not in policy.specific.versions:
        loaded = ", ".join(map(str, policy.specific.versions))
        raise UserError(f"bad version {version} for {model}: its specific version policy loads only {loaded}; "
                        f"add {version} to models[{model}].versions first")
    old = cfg.version_labels[label] if label in cfg.version_labels else None
    cfg.version_labels[label] = version
    return text_format.MessageToString(msg), old


def model_names(text: str) -> list[str]:
    return [c.name for c in parse_model_config(text).model_config_list.config]


# ---------------------------------------------------------------------------- commands


def cmd_apply(a, values) -> int:
    objects = render(values, a.release, a.namespace)
    api = api_client(a.kubeconfig, a.context)
    for obj in objects:
        server_side_apply(api, obj, dry_run=a.dry_run)
        print(f"{obj['kind'].lower()}/{obj['metadata']['name']} {'checked (dry run)' if a.dry_run else 'applied'}")
    print(f"release {a.release}: {len(objects)} objects in namespace {a.namespace}"
          f" (server-side apply, field manager {FIELD_MANAGER})")
    if not a.dry_run:
        print(f"next: tfcluster deploy status --release {a.release} --namespace {a.namespace}")
    return 0


def cmd_promote(a, values) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    objects = render(values, a.release, a.namespace)
    name = find(objects, "ConfigMap", ("tfcluster.io/config", "models"))["metadata"]["name"]
    api = api_client(a.kubeconfig, a.context)
    core = client.CoreV1Api(api)
    try:
        cm = _call(api, core.read_namespaced_config_map, name, a.namespace)
    except ApiException:
        raise UserError(f"configmap {name} not found in namespace {a.namespace}; deploy the release first "
                        f"(tfcluster deploy apply --release {a.release})") from None
    text = (cm.data or {}).get(MODELS_CONFIG_KEY)
    if text is None:
        raise UserError(f"configmap {name} has no {MODELS_CONFIG_KEY}")
    new_text, old = set_version_label(text, a.model, a.version, a.label)
    # resourceVersion makes the patch fail (409) if someone changed the ConfigMap since we read it.
    body = {"metadata": {"resourceVersion": cm.metadata.resource_version}, "data": {MODELS_CONFIG_KEY: new_text}}
    try:
        _call(api, core.patch_namespaced_config_map, name, a.namespace, body, field_manager=FIELD_MANAGER,
              _content_type="application/merge-patch+json")
    except UserError as e:
        if " 409 " in f" {e} ":
            raise UserError(f"configmap {name} changed while promoting; run the command again") from None
        raise
    was = f" (was {old})" if old is not None else ""
    print(f"{a.model}: label {a.label} -> version {a.version}{was} in configmap {name}")
    print("TF Serving picks it up at its next poll of models.config (modelConfig.pollWaitSeconds);"
          f" keep it across `deploy apply` by setting models[{a.model}].versionLabels.{a.label}: {a.version} in your values")
    return 0


def _rollout_done(dep) -> tuple[bool, str]:
    """kubectl rollout status's test: the controller saw the spec, all replicas updated and available."""
    spec_replicas = dep.spec.replicas if dep.spec.replicas is not None else 1
    st = dep.status
    if st is None or (st.observed_generation or 0) < (dep.metadata.generation or 0):
        return False, "waiting for the controller to see the new spec"
    updated, available, total = st.updated_replicas or 0, st.available_replicas or 0, st.replicas or 0
    if updated < spec_replicas:
        return False, f"{updated} of {spec_replicas} replicas updated"
    if total > updated:
        return False, f"{total - updated} old replicas still terminating"
    if available < updated:
        return False, f"{available} of {updated} updated replicas available"
    return True, f"{available}/{spec_replicas} replicas available"


def _model_status(api, service: str, namespace: str, port: str, model: str) -> tuple[bool, str]:
    """GET /v1/models/<model> on the server, through the API server's service proxy.

    The path is sent as written: the generated client would escape its slashes (v1%2Fmodels%2F...).
    """
    path = f"/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy/v1/models/{model}"
    params = api.param_serialize(method="GET", resource_path=path, header_params={"Accept": "application/json"},
                                 auth_settings=["BearerToken"])

    def call(*a, _request_timeout=None):
        resp = api.call_api(*a, _request_timeout=_request_timeout)
        return resp.status, resp.read()

    code, raw = _call(api, call, *params)
    if code != 200:
        return False, f"not found on the server ({code})"
    try:
        status = json.loads(raw)
    except ValueError:
        return False, "no model status yet"
    versions = status.get("model_version_status", [])
    live = sorted(int(v["version"]) for v in versions if v.get("state") == "AVAILABLE")
    if live:
        return True, f"versions {', '.join(map(str, live))} AVAILABLE"
    states = ", ".join(f"{v.get('version')}={v.get('state')}" for v in versions) or "no versions yet"
    return False, states


def cmd_status(a, values) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    objects = render(values, a.release, a.namespace)
    dep_name = find(objects, "Deployment")["metadata"]["name"]
    service = find(objects, "Service")["metadata"]["name"]
    cm = find(objects, "ConfigMap", ("tfcluster.io/config", "models"))
    models = model_names(cm["data"][MODELS_CONFIG_KEY])
    api = api_client(a.kubeconfig, a.context)
    apps = client.AppsV1Api(api)
    deadline = time.monotonic() + a.timeout
    last = ""

    def waiting(what: str) -> None:
        nonlocal last
        if time.monotonic() > deadline:
            raise UserError(f"timed out after {a.timeout:g}s: {what}")
        if what != last:
            print(what, flush=True)
            last = what
        time.sleep(a.interval)

    while True:
        try:
            dep = _call(api, apps.read_namespaced_deployment_status, dep_name, a.namespace)
        except ApiException:
            raise UserError(f"deployment {dep_name} not found in namespace {a.namespace}; "
                            f"run `tfcluster deploy apply --release {a.release}` first") from None
        done, msg = _rollout_done(dep)
        if done:
            print(f"deployment {dep_name}: rolled out, {msg}")
            break
        waiting(f"deployment {dep_name}: {msg}")
    pending = list(models)
    while pending:
        still = []
        for m in pending:
            ok, msg = _model_status(api, service, a.namespace, "rest", m)
            if ok:
                print(f"model {m}: {msg}")
            else:
                still.append((m, msg))
        pending = [m for m, _ in still]
        if pending:
            waiting("; ".join(f"model {m}: {msg}" for m, msg in still))
    print(f"release {a.release} is serving {', '.join(models)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfcluster deploy", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--release", default="tf-serving", help="release name (objects are named after it; default: tf-serving)")
    common.add_argument("--namespace", "-n", default="default", help="namespace (default: default)")
    common.add_argument("-f", "--values", action="append", default=[], metavar="FILE",
                        help="values file, e.g. k8s/examples/nmt-values.yaml (repeatable)")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="helm --set expression (repeatable)")
    common.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: KUBECONFIG or ~/.kube/config)")
    common.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    sub = p.add_subparsers(dest="action", required=True, metavar="apply|promote|status")
    ap = sub.add_parser("apply", parents=[common], help="server-side apply the tf-serving chart's objects")
    ap.add_argument("--dry_run", "--dry-run", action="store_true", help="server-side dry run: validate, change nothing")
    pr = sub.add_parser("promote", parents=[common], help="point a version label at a model version")
    pr.add_argument("--model", required=True, help="model name (nmt, dcgan, dqn, pg)")
    pr.add_argument("--version", required=True, help="model version (the <version> folder)")
    pr.add_argument("--label", default="stable", help="version label (default: stable)")
    st = sub.add_parser("status", parents=[common], help="wait for the rollout and for every model to be available")
    st.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default: 300)")
    st.add_argument("--interval", type=float, default=2.0, help="seconds between checks (default: 2)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.action == "promote":
        try:
            a.version = int(a.version)
        except ValueError:
            raise UserError(f"bad version {a.version!r}: a version is a positive integer (the <version> folder name)") from None
    values = load_values(a.values, a.set)
    return {"apply": cmd_apply, "promote": cmd_promote, "status": cmd_status}[a.action](a, values)


if __name__ == "__main__":
    from tfcluster.errors import main_guard

    sys.exit(main_guard(main)())
