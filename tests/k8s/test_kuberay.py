"""k8s/ray: the RayCluster and the RayJobs, against the KubeRay CRD schemas and against each other."""

from __future__ import annotations

import copy
import shlex

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kube_support import RAY_DIR, K8S_VERSIONS
from tfcluster import config as config_mod
from tfcluster import workloads

WORKLOADS = tuple(workloads.WORKLOADS)  # every registered workload has its RayJob


def manifests():
    out = []
    for path in sorted(RAY_DIR.glob("*.yaml")):
        out += [(path.name, o) for o in yaml.safe_load_all(path.read_text()) if o]
    return out


def rayjob(workload):
    return yaml.safe_load((RAY_DIR / f"rayjob-{workload}.yaml").read_text())


def raycluster():
    return yaml.safe_load((RAY_DIR / "raycluster.yaml").read_text())


def pod_templates(cluster_spec):
    yield cluster_spec["headGroupSpec"]["template"]
    for g in cluster_spec["workerGroupSpecs"]:
        yield g["template"]


def test_every_ray_manifest_is_valid_against_the_kuberay_crds(crd_schema):
    seen = {"RayCluster": 0, "RayJob": 0}
    for name, obj in manifests():
        if obj["kind"] in seen:
            errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(crd_schema(obj["kind"])).iter_errors(obj)]
            assert errors == [], f"{name}: {errors}"
            seen[obj["kind"]] += 1
    assert seen == {"RayCluster": 1, "RayJob": len(WORKLOADS)}


@pytest.mark.parametrize("mutate, kind", [
    (lambda o: o["spec"].__setitem__("shutdownAfterJobFinished", True), "RayJob"),  # misspelt field
    (lambda o: o["spec"].__setitem__("backoffLimit", "1"), "RayJob"),  # wrong type
    (lambda o: o["spec"]["rayClusterSpec"]["authOptions"].__setitem__("mode", "password"), "RayJob"),  # not an enum value
    (lambda o: o["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"), "RayJob"),  # required
])
def test_a_broken_rayjob_is_rejected(crd_schema, mutate, kind):
    obj = copy.deepcopy(rayjob("nmt"))
    mutate(obj)
    assert list(jsonschema.Draft7Validator(crd_schema(kind)).iter_errors(obj))


def test_a_broken_raycluster_is_rejected(crd_schema):
    obj = raycluster()
    obj["spec"]["autoscalerOptions"]["upscalingMode"] = "Fast"
    assert list(jsonschema.Draft7Validator(crd_schema("RayCluster")).iter_errors(obj))


def test_core_objects_and_pod_templates_are_valid_kubernetes():
    """PVCs directly; the Ray pod templates wrapped in a PodTemplate (the CRDs embed the core schema loosely)."""
    count = 0
    for name, obj in manifests():
        if obj["apiVersion"] == "v1":
            for v in K8S_VERSIONS:
                kubernetes_validate.validate(obj, v, strict=True)
            count += 1
            continue
        spec = obj["spec"] if obj["kind"] == "RayCluster" else obj["spec"]["rayClusterSpec"]
        for tpl in pod_templates(spec):
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": tpl}
            kubernetes_validate.validate(wrapped, "1.33", strict=True)
            count += 1
    assert count >= 2 + 3 + 2 * len(WORKLOADS)


def test_raycluster_has_head_cpu_and_gpu_groups_with_the_autoscaler():
    spec = raycluster()["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == "2.60.0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] and g["maxReplicas"] > g["minReplicas"]
    gpu = groups["gpu"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["containers"][0]["image"].endswith("-gpu")
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


@pytest.mark.parametrize("workload", WORKLOADS)
def test_rayjob_per_workload(workload):
    job = rayjob(workload)
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", f"jobs/train_{workload}.py"]
    flags = dict(zip(argv[2::2], argv[3::2]))
    assert flags["--model_base_path"] == "/mnt/models"
    assert flags["--out_dir"].startswith("/mnt/work/runs/")
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["backoffLimit"] >= 0 and spec["activeDeadlineSeconds"] > 0
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert env["working_dir"] == "/app" and env["env_vars"]["KERAS_BACKEND"] == "tensorflow"
    workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    if workloads.get(workload).is_rl:  # the learner runs in the driver; env runners fill the worker pods
        pod_cpus = float(workers["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"])
        runners = int(flags["--num_env_runners"]) * float(flags.get("--num_cpus_per_env_runner", 1))
        assert "--num_workers" not in flags and 0 < runners <= workers["replicas"] * pod_cpus
    else:
        assert workers["replicas"] == int(flags["--num_workers"])  # one Ray Train worker per pod
        # Checkpoints go to storage every pod mounts (the RWX workspace claim), so a worker
        # rescheduled onto another node resumes; the job waits for GPU nodes to be added.
        mounts = {m["mountPath"]: m["name"] for m in workers["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert any(flags["--storage_path"].startswith(path + "/") for path in mounts)
        assert float(flags["--wait_for_resources"]) > 0
    config_mod.build(workloads.get(workload).config, {k[2:]: v for k, v in flags.items()}, "entrypoint")
    if flags.get("--use_gpu") == "true":
        assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The model lands where the serving chart looks: <claim tfcluster-models>/<model>/<version>.
    assert workloads.get(workload).serving.name == workload


def test_jobs_and_serving_share_the_models_claim(render):
    chart_claim = next(v for v in next(o for o in render({}) if o["kind"] == "Deployment")["spec"]["template"]["spec"]["volumes"]
                       if v["name"] == "models")["persistentVolumeClaim"]["claimName"]
    claims = {o["metadata"]["name"] for _, o in manifests() if o["kind"] == "PersistentVolumeClaim"}
    assert chart_claim in claims
    for workload in WORKLOADS:
        for tpl in pod_templates(rayjob(workload)["spec"]["rayClusterSpec"]):
            vols = {v["name"]: v for v in tpl["spec"]["volumes"]}
            mounts = {m["name"]: m["mountPath"] for m in tpl["spec"]["containers"][0]["volumeMounts"]}
            assert vols["models"]["persistentVolumeClaim"]["claimName"] == chart_claim
            assert mounts["models"] == "/mnt/models"


def test_token_auth_through_one_secret_everywhere():
    specs = [raycluster()["spec"]] + [rayjob(w)["spec"]["rayClusterSpec"] for w in WORKLOADS]
    for s in specs:
        assert s["authOptions"] == {"mode": "token", "secretName": "tfcluster-ray-auth"}
    # No token is committed: the Secret is created from a generated value (see the README).
    assert not [o for _, o in manifests() if o["kind"] == "Secret"]


def test_ray_pods_run_as_non_root():
    specs = [raycluster()["spec"]] + [rayjob(w)["spec"]["rayClusterSpec"] for w in WORKLOADS]
    for s in specs:
        for tpl in pod_templates(s):
            assert tpl["spec"]["securityContext"]["runAsNonRoot"] is True
            assert tpl["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
