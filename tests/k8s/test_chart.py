"""The tf-serving chart, rendered by a real Helm engine (helm-python-sdk) and validated by kubernetes-validate."""

from __future__ import annotations

import re

import helm_python
import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from kube_support import CHART, EXAMPLES, K8S_VERSIONS
from tfcluster import contract, workloads

VALUE_SETS = {
    "defaults": {},
    "gpu": {"gpu": {"enabled": True}},
    "pvc-created": {"modelStorage": {"pvc": {"create": True, "storageClassName": "filestore", "size": "50Gi"}}},
    "bucket-gs": {"modelStorage": {"type": "bucket", "bucket": {"uri": "gs://tfc-models/models", "credentialsSecret": "gcs-key",
                                                                 "sync": {"enabled": False}}}},
    "bucket-gs-synced": {"modelStorage": {"type": "bucket", "bucket": {"uri": "gs://tfc-models/models", "credentialsSecret": "gcs-key"}}},
    "bucket-s3": {"modelStorage": {"type": "bucket", "bucket": {"uri": "s3://tfc-models/models", "credentialsSecret": "aws-keys",
                                                                 "s3": {"endpoint": "minio.minio:9000", "useHttps": False}}}},
    "hpa-on": {"autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80}},
    "hpa-off-no-pdb": {"autoscaling": {"enabled": False}, "podDisruptionBudget": {"enabled": False}, "batching": {"enabled": False}},
    "servicemonitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "all-models": {"models": [{"name": m} for m in contract.MODELS], "probeModel": "dqn"},
}


def objects(render, values):
    return render(values)


def kinds(objs):
    return sorted(o["kind"] for o in objs)


def one(objs, kind):
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(objs):
    return one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def args_of(objs) -> dict[str, str]:
    return dict(a.split("=", 1) for a in container(objs)["args"])


def model_config(objs):
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("tfcluster.io/config") == "models")
    msg = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(cm["data"]["models.config"], msg)  # TF Serving's own proto: a parse error fails the test
    return msg


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_object_is_valid_for_kubernetes_1_31_to_1_34(render, name):
    objs = objects(render, VALUE_SETS[name])
    checked = 0
    for obj in objs:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD kind; kubernetes-validate has no schema for it (checked below)
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 5


def test_an_invalid_object_is_rejected_by_the_validator(render):
    """The validation above can fail: a misspelt field in a rendered Deployment is caught."""
    dep = one(render({}), "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, "1.33", strict=True)


@pytest.mark.parametrize("values", [None, {"gpu": {"enabled": True}}, {"autoscaling": {"enabled": True}}])
def test_lint_reports_no_errors(values):
    report = helm_python.lint(str(CHART), values, strict=False)
    assert report["errors"] == []
    assert not [m for m in report["messages"] if m["severity"] >= 3]


def test_lint_fails_on_values_the_schema_forbids():
    report = helm_python.lint(str(CHART), {"gpu": {"enabled": "yes"}})
    assert any("/gpu/enabled" in e for e in report["errors"])


@pytest.mark.parametrize("bad", [
    {"models": [{"name": "nmt", "versionPolicy": "newest"}]},
    {"models": [{"name": "nmt", "versionLabels": {"stable": 0}}]},
    {"models": []},
    {"modelStorage": {"type": "bucket", "bucket": {"uri": "http://example.com/models"}}},
    {"modelStorage": {"type": "nfs"}},
])
def test_bad_values_are_rejected(chart, bad):
    with pytest.raises((helm_python.HelmValuesError, helm_python.HelmRenderError)):
        chart.render(bad, name="nmt")


def test_default_objects(render):
    objs = render({})
    assert kinds(objs) == ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    for o in objs:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "nmt" and labels["app.kubernetes.io/name"] == "tf-serving"


def test_server_flags_ports_and_config_files(render):
    objs = render({})
    c = container(objs)
    assert c["command"] == ["/usr/bin/tensorflow_model_server"]
    a = args_of(objs)
    assert a["--port"] == "8500" and a["--rest_api_port"] == "8501"
    assert a["--model_config_file"] == "/etc/tfserving/models/models.config"
    assert a["--enable_batching"] == "true"
    assert a["--batching_parameters_file"] == "/etc/tfserving/config/batching.config"
    assert a["--monitoring_config_file"] == "/etc/tfserving/config/monitoring.config"
    assert a["--model_config_file_poll_wait_seconds"] == "30"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 8500, "rest": 8501}
    svc = one(objs, "Service")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {"grpc": (8500, "grpc"), "rest": (8501, "rest")}
    assert svc["spec"]["selector"] == one(objs, "Deployment")["spec"]["selector"]["matchLabels"]
    # The files the flags name are in the ConfigMaps mounted at those folders (whole folders, so edits propagate).
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["models-config"]["mountPath"] == "/etc/tfserving/models" and "subPath" not in mounts["models-config"]
    vols = {v["name"]: v for v in one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    cms = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    assert "models.config" in cms[vols["models-config"]["configMap"]["name"]]["data"]
    assert {"batching.config", "monitoring.config"} <= set(cms[vols["server-config"]["configMap"]["name"]]["data"])


def test_batching_parameters_come_from_values(render):
    objs = render({"batching": {"maxBatchSize": 64, "batchTimeoutMicros": 5000, "numBatchThreads": 3, "allowedBatchSizes": [16, 64]}})
    cfg = next(o for o in objs if o["metadata"]["name"].endswith("-config"))["data"]["batching.config"]
    assert "max_batch_size { value: 64 }" in cfg
    assert "batch_timeout_micros { value: 5000 }" in cfg
    assert "num_batch_threads { value: 3 }" in cfg
    assert re.findall(r"allowed_batch_sizes: (\d+)", cfg) == ["16", "64"]
    off = args_of(render({"batching": {"enabled": False}}))
    assert "--enable_batching" not in off and "--batching_parameters_file" not in off


def test_model_config_policies_and_labels(render):
    msg = model_config(render({"models": [
        {"name": "nmt", "versionPolicy": "latest", "latestVersions": 2, "versionLabels": {"stable": 3, "canary": 4}},
        {"name": "dcgan", "versionPolicy": "specific", "versions": [1, 5]},
        {"name": "pg", "versionPolicy": "all"},
    ]}))
    cfg = {c.name: c for c in msg.model_config_list.config}
    assert cfg["nmt"].base_path == "/models/nmt" and cfg["nmt"].model_platform == "tensorflow"
    assert cfg["nmt"].model_version_policy.latest.num_versions == 2
    assert dict(cfg["nmt"].version_labels) == {"stable": 3, "canary": 4}
    assert list(cfg["dcgan"].model_version_policy.specific.versions) == [1, 5]
    assert cfg["pg"].model_version_policy.WhichOneof("policy_choice") == "all"


def test_readiness_and_startup_ask_for_the_model_liveness_for_the_port(render):
    objs = render({"models": [{"name": "dqn"}, {"name": "pg"}]})
    c = container(objs)
    for probe in ("readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/v1/models/dqn", "port": "rest", "scheme": "HTTP"}
    assert c["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert container(render({"models": [{"name": "dqn"}, {"name": "pg"}], "probeModel": "pg"}))["readinessProbe"]["httpGet"]["path"] == "/v1/models/pg"


def test_non_root_and_read_only_root_file_system(render):
    for values in ({}, {"gpu": {"enabled": True}}):
        objs = render(values)
        pod = one(objs, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        sc = container(objs)["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert any(m["mountPath"] == "/tmp" for m in container(objs)["volumeMounts"])


def test_gpu_values(render):
    cpu, gpu = render({}), render({"gpu": {"enabled": True, "count": 2, "memoryFraction": 0.6}, "tolerations": [{"key": "team", "operator": "Exists"}]})
    assert container(cpu)["image"] == "tensorflow/serving:2.21.0"
    assert "nvidia.com/gpu" not in container(cpu)["resources"]["limits"]
    assert "--per_process_gpu_memory_fraction" not in args_of(cpu)
    c = container(gpu)
    assert c["image"] == "tensorflow/serving:2.21.0-gpu"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert c["resources"]["limits"]["cpu"] == "4"  # the user's limits are kept
    assert args_of(gpu)["--per_process_gpu_memory_fraction"] == "0.6"
    pod = one(gpu, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {t["key"] for t in pod["tolerations"]} == {"team", "nvidia.com/gpu"}


def test_pvc_storage(render):
    objs = render({})
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "models")
    assert vol["persistentVolumeClaim"] == {"claimName": "tfcluster-models", "readOnly": True}
    assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    created = render(VALUE_SETS["pvc-created"])
    pvc = one(created, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "tfcluster-models"
    assert pvc["spec"]["storageClassName"] == "filestore" and pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_gcs_bucket_storage(render):
    objs = render(VALUE_SETS["bucket-gs"])
    assert model_config(objs).model_config_list.config[0].base_path == "gs://tfc-models/models/nmt"
    c = container(objs)
    env = {e["name"]: e for e in c["env"]}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"]["value"] == "/var/secrets/bucket/key.json"
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "bucket-credentials", "secret": {"secretName": "gcs-key"}} in pod["volumes"]
    assert not any(v["name"] == "models" for v in pod["volumes"])


def test_s3_bucket_storage_is_mirrored_into_a_folder_tf_serving_reads(render):
    """TF Serving has no s3:// since 2.7: `tfcluster sync-models` (init container, then sidecar) fills an
    emptyDir from the bucket, and TF Serving reads that folder."""
    objs = render({"models": [{"name": "nmt"}, {"name": "dcgan"}], **VALUE_SETS["bucket-s3"]})
    assert [c.base_path for c in model_config(objs).model_config_list.config] == ["/models/nmt", "/models/dcgan"]
    server = container(objs)
    assert not any(e["name"].startswith(("AWS_", "S3_")) for e in server.get("env", []))  # no bucket access at all
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "models", "emptyDir": {"sizeLimit": "20Gi"}} in pod["volumes"]
    (init,), sidecar = pod["initContainers"], pod["containers"][1]
    for c, tail in ((init, ["--once"]), (sidecar, ["--interval=30"])):
        assert c["image"] == "tfcluster/train:0.1.0" and c["command"] == ["tfcluster"]
        assert c["args"] == ["sync-models", "s3://tfc-models/models", "/models", "--models=nmt,dcgan", *tail]
        assert {"name": "models", "mountPath": "/models"} in c["volumeMounts"]
        env = {e["name"]: e for e in c["env"]}
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.minio:9000" and env["AWS_REGION"]["value"] == "us-east-1"
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "aws-keys", "key": "AWS_ACCESS_KEY_ID"}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "aws-keys"
        assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_gcs_bucket_synced_mounts_the_key_in_the_sync_containers(render):
    objs = render(VALUE_SETS["bucket-gs-synced"])
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    sidecar = pod["containers"][1]
    assert {e["name"]: e.get("value") for e in sidecar["env"]} == {"GOOGLE_APPLICATION_CREDENTIALS": "/var/secrets/bucket/key.json"}
    assert {"name": "bucket-credentials", "mountPath": "/var/secrets/bucket", "readOnly": True} in sidecar["volumeMounts"]
    assert {"name": "bucket-credentials", "secret": {"secretName": "gcs-key"}} in pod["volumes"]
    assert model_config(objs).model_config_list.config[0].base_path == "/models/nmt"


def test_s3_without_the_sync_is_refused(chart):
    with pytest.raises((helm_python.HelmValuesError, helm_python.HelmRenderError), match="s3"):
        chart.render({"modelStorage": {"type": "bucket", "bucket": {"uri": "s3://b/models", "sync": {"enabled": False}}}},
                     name="nmt")


def test_hpa_on_and_off(render):
    on = render(VALUE_SETS["hpa-on"])
    hpa = one(on, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "nmt-tf-serving"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu", "memory"]
    assert "replicas" not in one(on, "Deployment")["spec"]  # the HPA owns the count
    off = render(VALUE_SETS["hpa-off-no-pdb"])
    assert "HorizontalPodAutoscaler" not in kinds(off) and "PodDisruptionBudget" not in kinds(off)
    assert one(off, "Deployment")["spec"]["replicas"] == 2


def test_pdb_selects_the_server_pods(render):
    objs = render({})
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == one(objs, "Deployment")["spec"]["selector"]["matchLabels"]


def test_service_monitor_scrapes_the_metrics_path(render):
    assert "ServiceMonitor" not in kinds(render({}))
    objs = render(VALUE_SETS["servicemonitor"])
    sm = one(objs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"][0]["port"] == "rest"  # a port name of the Service
    assert sm["spec"]["endpoints"][0]["path"] == "/monitoring/prometheus/metrics"
    assert sm["spec"]["selector"]["matchLabels"].items() <= one(objs, "Service")["metadata"]["labels"].items()
    mon = next(o for o in objs if o["metadata"]["name"].endswith("-config"))["data"]["monitoring.config"]
    assert 'path: "/monitoring/prometheus/metrics"' in mon and "enable: true" in mon


def test_names_follow_the_release(render):
    objs = render({}, release="tf-serving-prod")
    assert one(objs, "Deployment")["metadata"]["name"] == "tf-serving-prod"  # contains the chart name
    assert one(render({"fullnameOverride": "serving"}), "Deployment")["metadata"]["name"] == "serving"


def _undocumented_values(path):
    """Keys of a values file whose value (a leaf) has no `# --` comment on itself or on an enclosing key."""
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    pending_doc = False
    missing = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending_doc = True
            continue
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        m = re.match(r"^(\s*)([^\s:#][^:]*):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = pending_doc or any(d for _, _, d in stack)
        pending_doc = False
        nxt = next((l for l in lines[i + 1:] if l.strip() and not l.strip().startswith("#")), "")
        is_parent = rest == "" and (len(nxt) - len(nxt.lstrip())) > indent and not nxt.strip().startswith("- ")
        if not is_parent and not documented:
            missing.append(".".join([k for _, k, _ in stack] + [key]))
        stack.append((indent, key, documented))
    return missing


def test_every_value_has_a_doc_comment():
    assert _undocumented_values(CHART / "values.yaml") == []


def test_doc_comment_check_finds_a_missing_comment(tmp_path):
    p = tmp_path / "values.yaml"
    p.write_text("image:\n  # -- Repository.\n  repository: x\n  tag: y\n# -- Documented block.\nresources:\n  limits: {}\n")
    assert _undocumented_values(p) == ["image.tag"]


SERVED = {w.serving.name: w.serving for w in map(workloads.get, workloads.WORKLOADS)}  # every workload's contract


@pytest.mark.parametrize("model", list(SERVED))
def test_example_values_per_model(render, model):
    path = EXAMPLES / f"{model}-values.yaml"
    values = yaml.safe_load(path.read_text())
    names = [m["name"] for m in values["models"]]
    assert names == [model]
    assert set(names) <= set(SERVED)  # the serving contract's names, nothing else
    objs = render(values, release=model)
    for obj in objs:
        if not obj["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(obj, "1.33", strict=True)
    assert [c.name for c in model_config(objs).model_config_list.config] == [model]
    assert container(objs)["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{model}"


def test_all_example_files_name_contract_models():
    for path in sorted(EXAMPLES.glob("*-values.yaml")):
        for m in yaml.safe_load(path.read_text())["models"]:
            assert m["name"] in SERVED, f"{path.name}: {m['name']} is not the model of a registered workload"
