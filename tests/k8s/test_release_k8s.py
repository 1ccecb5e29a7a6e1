"""`tfcluster release` against a chart release: the labels live in the models ConfigMap of a fake Kubernetes
API server on 127.0.0.1 (a stand-in for what cannot run here), mirrored into the models.config file of a
real `tfcluster serve` the way the kubelet projects a ConfigMap volume; the history is an annotation."""

from __future__ import annotations

import json
import os
import threading

import pytest

from kube_support import EXAMPLES, run_cli
from tfcluster import release
from tfcluster.serving import LocalServer, tiny
from tfcluster import contract

pytestmark = pytest.mark.slow
CM = "/api/v1/namespaces/serving/configmaps/pg-tf-serving-models"


def test_release_and_rollback_through_the_configmap(fake_kube, tmp_path, capsys):
    state, kubeconfig = fake_kube
    base = str(tmp_path / "models")
    for seed in (0, 1):
        tiny.export(tiny.pg_policy(seed), base, contract.PG)
    values = ["-f", str(EXAMPLES / "pg-values.yaml"), "--set", "models[0].versionPolicy=all",
              "--set", "models[0].versionLabels.stable=1"]
    code, _, err = run_cli(["deploy", "apply", "--kubeconfig", kubeconfig, "--release", "pg", "-n", "serving", *values], capsys)
    assert code == 0, err

    # The kubelet's part: the ConfigMap's models.config lands in the file the server polls (base paths made local).
    local_cfg = tmp_path / "models.config"
    stop = threading.Event()

    def project():
        while True:
            text = state.objects[CM]["data"]["models.config"].replace("/models/pg", os.path.join(base, "pg"))
            if not local_cfg.exists() or local_cfg.read_text() != text:
                local_cfg.write_text(text)
            if stop.wait(0.2):
                return

    projector = threading.Thread(target=project)
    projector.start()
    server = None
    try:
        while not local_cfg.exists():
            pass
        server = LocalServer(model_config_file=str(local_cfg), file_system_poll_wait_seconds=1,
                             model_config_file_poll_wait_seconds=1, log_path=str(tmp_path / "server.log")).start()
        server.wait_until_available("pg", timeout_s=120)
        common = ["release", "--model", "pg", "--kubeconfig", kubeconfig, "--release", "pg", "-n", "serving",
                  "-f", str(EXAMPLES / "pg-values.yaml"), "--server", server.target, "--env", "CartPole-v1",
                  "--episodes", "3", "--margin", "1000"]  # two fixed linear policies: the margin lets 2 pass
        code, out, err = run_cli(common + ["--version", "2"], capsys)
        assert code == 0, err
        assert release.labels_of(state.objects[CM]["data"]["models.config"], "pg") == {"stable": 2}
        code, out, err = run_cli(["release", "--model", "pg", "--kubeconfig", kubeconfig, "--release", "pg", "-n", "serving",
                                  "-f", str(EXAMPLES / "pg-values.yaml"), "--server", server.target, "--rollback"], capsys)
        assert code == 0, err
        assert release.labels_of(state.objects[CM]["data"]["models.config"], "pg") == {"stable": 1}
        history = json.loads(state.objects[CM]["metadata"]["annotations"][release.HISTORY_ANNOTATION])
        assert [(h["verdict"], h["from"], h["to"]) for h in history] == [("promoted", 1, 2), ("rolled back", 2, 1)]
        edits = [r for r in state.requests if r["method"] == "PATCH" and r["path"] == CM
                 and r["content_type"] == "application/merge-patch+json" and "data" in (r["body"] or {})]
        assert len(edits) == 3  # canary, stable, rollback
        assert all(r["body"]["metadata"]["resourceVersion"] for r in edits)  # optimistic concurrency
    finally:
        stop.set()
        projector.join()
        if server is not None:
            assert server.stop() == 0, server.log_tail()
