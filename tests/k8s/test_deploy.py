"""`tfcluster deploy` against a FAKE Kubernetes API server on loopback (127.0.0.1), see conftest.fake_kube."""

from __future__ import annotations

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from kube_support import EXAMPLES, free_port, run_cli
from tfcluster import deploy
from tfcluster.errors import UserError

NMT = str(EXAMPLES / "nmt-values.yaml")


def labels_in(text):
    msg = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(text, msg)
    return {c.name: dict(c.version_labels) for c in msg.model_config_list.config}


def test_apply_server_side_applies_every_rendered_object(fake_kube, capsys):
    state, kubeconfig = fake_kube
    code, out, err = run_cli(["deploy", "apply", "--kubeconfig", kubeconfig, "--release", "nmt", "-n", "serving", "-f", NMT], capsys)
    assert code == 0, err
    applies = state.applies()
    rendered = deploy.render(yaml.safe_load(open(NMT)), "nmt", "serving")
    assert [r["path"] for r in applies] == [deploy.resource_path(o) for o in rendered]
    assert {r["path"].rsplit("/", 2)[-2] for r in applies} == {
        "serviceaccounts", "configmaps", "services", "deployments", "horizontalpodautoscalers", "poddisruptionbudgets"}
    for r in applies:
        assert r["query"]["fieldManager"] == "tfcluster"
        assert r["query"]["force"] == "true"
        assert r["query"]["fieldValidation"] == "Strict"
        assert r["auth"] == "Bearer fake-token"
    dep = state.objects["/apis/apps/v1/namespaces/serving/deployments/nmt-tf-serving"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/v1/models/nmt"
    hpa = state.objects["/apis/autoscaling/v2/namespaces/serving/horizontalpodautoscalers/nmt-tf-serving"]
    assert hpa["spec"]["maxReplicas"] == 6  # from the example values file
    # ConfigMaps go before the Deployment that mounts them.
    paths = [r["path"] for r in applies]
    assert paths.index("/api/v1/namespaces/serving/configmaps/nmt-tf-serving-models") < paths.index(
        "/apis/apps/v1/namespaces/serving/deployments/nmt-tf-serving")
    assert "objects in namespace serving" in out


def test_apply_with_set_and_dry_run(fake_kube, capsys):
    state, kubeconfig = fake_kube
    code, out, err = run_cli(["deploy", "apply", "--kubeconfig", kubeconfig, "--release", "pg", "-n", "serving",
                              "-f", str(EXAMPLES / "pg-values.yaml"), "--set", "gpu.enabled=true", "--dry-run"], capsys)
    assert code == 0, err
    applies = state.applies()
    assert applies and all(r["query"]["dryRun"] == "All" for r in applies)
    dep = next(r["body"] for r in applies if r["body"]["kind"] == "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith("-gpu")
    assert not state.objects  # nothing persisted


def test_apply_without_the_servicemonitor_crd_says_so(fake_kube, capsys):
    state, kubeconfig = fake_kube
    code, _, err = run_cli(["deploy", "apply", "--kubeconfig", kubeconfig, "--release", "dqn", "-n", "serving",
                            "-f", str(EXAMPLES / "dqn-values.yaml")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "ServiceMonitor" in err and "serviceMonitor.enabled=false" in err


def test_bad_values_are_one_line(fake_kube, capsys):
    _, kubeconfig = fake_kube
    code, _, err = run_cli(["deploy", "apply", "--kubeconfig", kubeconfig, "--set", "gpu.enabled=maybe"], capsys)
    assert code == 2 and err.startswith("error: the chart does not accept these values") and err.count("\n") == 1


def test_unreachable_api_server_is_one_line(tmp_path, capsys, no_kube_env):
    port = free_port()  # nothing listens there
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
    }))
    code, _, err = run_cli(["deploy", "apply", "--kubeconfig", str(kubeconfig), "-f", NMT], capsys)
    assert code == 2
    assert err == f"error: cannot reach the Kubernetes API server at http://127.0.0.1:{port} (MaxRetryError); " \
                  "check the cluster is up and your kubeconfig context (kubectl cluster-info)\n" or \
        (err.startswith(f"error: cannot reach the Kubernetes API server at http://127.0.0.1:{port}") and err.count("\n") == 1)


def test_missing_kubeconfig_is_one_line(tmp_path, capsys, no_kube_env):
    code, _, err = run_cli(["deploy", "status", "--kubeconfig", str(tmp_path / "none")], capsys)
    assert code == 2 and "no usable Kubernetes configuration" in err and err.count("\n") == 1


def _deploy_nmt(state, kubeconfig, capsys, labels=None):
    values = ["--set", f"models[0].versionLabels.stable={labels}"] if labels else []
    code, _, err = run_cli(["deploy", "apply", "--kubeconfig", kubeconfig, "--release", "nmt", "-n", "serving", "-f", NMT] + values, capsys)
    assert code == 0, err
    return "/api/v1/namespaces/serving/configmaps/nmt-tf-serving-models"


def test_promote_edits_the_models_configmap(fake_kube, capsys):
    state, kubeconfig = fake_kube
    path = _deploy_nmt(state, kubeconfig, capsys, labels=2)
    assert labels_in(state.objects[path]["data"]["models.config"]) == {"nmt": {"stable": 2}}
    rv_before = state.objects[path]["metadata"]["resourceVersion"]
    code, out, err = run_cli(["deploy", "promote", "--kubeconfig", kubeconfig, "--release", "nmt", "-n", "serving",
                              "--model", "nmt", "--version", "3", "--label", "stable"], capsys)
    assert code == 0, err
    assert labels_in(state.objects[path]["data"]["models.config"]) == {"nmt": {"stable": 3}}
    patch = [r for r in state.requests if r["method"] == "PATCH" and r["path"] == path][-1]
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["body"]["metadata"]["resourceVersion"] == rv_before  # optimistic concurrency
    assert "label stable -> version 3 (was 2)" in out
    # A second label keeps the first.
    run_cli(["deploy", "promote", "--kubeconfig", kubeconfig, "--release", "nmt", "-n", "serving",
             "--model", "nmt", "--version", "4", "--label", "canary"], capsys)
    assert labels_in(state.objects[path]["data"]["models.config"]) == {"nmt": {"stable": 3, "canary": 4}}


@pytest.mark.parametrize("args, message", [
    (["--model", "bert", "--version", "3"], "unknown model 'bert'; known models: nmt, dcgan, dqn, pg"),
    (["--model", "dcgan", "--version", "3"], "model 'dcgan' is not served by this release (it serves: nmt)"),
    (["--model", "nmt", "--version", "three"], "bad version 'three'"),
    (["--model", "nmt", "--version", "0"], "bad version 0"),
    (["--model", "nmt", "--version", "3", "--label", "9lives"], "bad label '9lives'"),
])
def test_promote_errors_are_one_line(fake_kube, capsys, args, message):
    state, kubeconfig = fake_kube
    _deploy_nmt(state, kubeconfig, capsys)
    code, _, err = run_cli(["deploy", "promote", "--kubeconfig", kubeconfig, "--release", "nmt", "-n", "serving"] + args, capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_promote_before_deploy_says_what_to_do(fake_kube, capsys):
    _, kubeconfig = fake_kube
    code, _, err = run_cli(["deploy", "promote", "--kubeconfig", kubeconfig, "--release", "nmt", "-n", "serving",
                            "--model", "nmt", "--version", "3"], capsys)
    assert code == 2 and "configmap nmt-tf-serving-models not found" in err and "deploy apply" in err


def test_set_version_label_respects_a_specific_policy():
    text = 'model_config_list { config { name: "nmt" base_path: "/models/nmt" model_platform: "tensorflow" ' \
           'model_version_policy { specific { versions: 1 versions: 2 } } } }'
    new, old = deploy.set_version_label(text, "nmt", 2, "stable")
    assert old is None and labels_in(new) == {"nmt": {"stable": 2}}
    with pytest.raises(UserError, match="loads only 1, 2"):
        deploy.set_version_label(text, "nmt", 3, "stable")


def test_status_waits_for_rollout_and_models(fake_kube, capsys):
    state, kubeconfig = fake_kube
    _deploy_nmt(state, kubeconfig, capsys)
    # The example turns the HPA on; it has set the Deployment to 2 replicas.
    state.objects["/apis/apps/v1/namespaces/serving/deployments/nmt-tf-serving"]["spec"]["replicas"] = 2
    state.deployment_status = [
        {"observedGeneration": 1, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2},
        {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1},
        {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2},
    ]
    state.model_status["nmt"] = [
        {"model_version_status": [{"version": "3", "state": "LOADING", "status": {"error_code": "OK"}}]},
        {"model_version_status": [{"version": "3", "state": "AVAILABLE", "status": {"error_code": "OK"}}]},
    ]
    code, out, err = run_cli(["deploy", "status", "--kubeconfig", kubeconfig, "--release", "nmt", "-n", "serving",
                              "-f", NMT, "--interval", "0.01", "--timeout", "20"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert "deployment nmt-tf-serving: 1 of 2 replicas updated" in lines
    assert "deployment nmt-tf-serving: 1 of 2 updated replicas available" in lines
    assert "model nmt: 3=LOADING" in lines
    assert "model nmt: versions 3 AVAILABLE" in lines
    assert lines[-1] == "release nmt is serving nmt"
    proxied = [r["path"] for r in state.requests if "/proxy/" in r["path"]]
    assert proxied[0] == "/api/v1/namespaces/serving/services/nmt-tf-serving:rest/proxy/v1/models/nmt"


def test_status_times_out_with_one_line(fake_kube, capsys):
    state, kubeconfig = fake_kube
    _deploy_nmt(state, kubeconfig, capsys)
    state.deployment_status = [{"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}]
    # the model never loads: the server answers 404 for it
    code, _, err = run_cli(["deploy", "status", "--kubeconfig", kubeconfig, "--release", "nmt", "-n", "serving",
                            "-f", NMT, "--interval", "0.01", "--timeout", "0.2"], capsys)
    assert code == 2 and err.startswith("error: timed out after 0.2s: model nmt: not found on the server (404)")


def test_status_of_a_missing_release(fake_kube, capsys):
    _, kubeconfig = fake_kube
    code, _, err = run_cli(["deploy", "status", "--kubeconfig", kubeconfig, "--release", "nmt", "-n", "serving"], capsys)
    assert code == 2 and "deployment nmt-tf-serving not found in namespace serving" in err
