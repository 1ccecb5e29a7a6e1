"""`tfcluster release` against a real `tfcluster serve` polling a models.config, with real models:

* PG on CartPole: an untrained policy becomes the first stable, a trained one is promoted on its mean
  return over held-out episodes, a worse one is refused (exit 1, both figures, stable untouched), and
  --rollback restores the previous stable; six clients call `stable` all along with no failed request,
  each answer from the version the label named while it was in flight; the history holds every decision.
* NMT on the toy corpus: a version trained 300 steps beats one trained 10 steps on BLEU (sacrebleu)
  of the dev set; the worse one is refused.
* Bad input: one line each, stable untouched.
"""

from __future__ import annotations

import json
import os
import threading
import time

import grpc
import numpy as np
import pytest

from tfcluster import release
from tfcluster.serving import LocalServer

pytestmark = pytest.mark.slow


def write_config(path, model: str, base: str, labels: dict[str, int] | None = None) -> None:
    lines = "".join(f' version_labels {{ key: "{k}" value: {v} }}' for k, v in (labels or {}).items())
    with open(path, "w") as f:
        f.write(f'model_config_list {{ config {{ name: "{model}" base_path: "{base}" model_platform: "tensorflow" '
                f"model_version_policy {{ all {{}} }}{lines} }} }}\n")


def labels(path, model):
    return release.labels_of(open(path).read(), model)


def run(argv, capsys):
    try:
        code = release.main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def pg_repo(tmp_path_factory):
    """Three PG versions: 1 untrained, 2 trained for 6 iterations, 3 untrained (another seed)."""
    from tfcluster.rl import PGConfig
    from tfcluster.workloads import pg

    base = str(tmp_path_factory.mktemp("pg-models"))
    paths = []
    for seed, iterations in ((0, 0), (0, 6), (7, 0)):
        algo = PGConfig().environment("CartPole-v0").debugging(seed=seed).env_runners(num_env_runners=0).build()
        try:
            for _ in range(iterations):
                algo.train()
            paths.append(pg.export(algo.policy_weights(), algo.cfg, base))
        finally:
            algo.stop()
    assert [os.path.basename(p) for p in paths] == ["1", "2", "3"]
    return base


@pytest.fixture
def pg_server(pg_repo, tmp_path):
    cfg = tmp_path / "models.config"
    write_config(cfg, "pg", os.path.join(pg_repo, "pg"))
    server = LocalServer(model_config_file=str(cfg), file_system_poll_wait_seconds=1, model_config_file_poll_wait_seconds=1,
                         log_path=str(tmp_path / "server.log")).start()
    try:
        server.wait_until_available("pg", timeout_s=120)
        yield server, str(cfg)
    finally:
        assert server.stop() == 0, server.log_tail()


def _callers(target, stop, answers, failures, n=6):
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc
    import tensorflow as tf

    def loop():
        channel = grpc.insecure_channel(target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="pg", version_label="stable"))
        req.inputs["observation"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 4), np.float32)))
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                resp = stub.Predict(req, timeout=10)
                answers.append((t0, time.monotonic(), resp.model_spec.version.value))
            except grpc.RpcError as e:
                failures.append(f"{e.code()}: {e.details()}")
        channel.close()

    threads = [threading.Thread(target=loop) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def test_pg_promote_refuse_rollback_under_load_with_history(pg_server, capsys):
    server, cfg = pg_server
    common = ["--model", "pg", "--model_config_file", cfg, "--server", server.target, "--env", "CartPole-v0",
              "--episodes", "8"]
    # No stable yet: the candidate becomes stable (its return above --min_metric).
    code, out, err = run(common + ["--version", "1", "--min_metric", "5"], capsys)
    assert code == 0, err
    assert labels(cfg, "pg") == {"stable": 1} and "stable -> version 1" in out

    stop, answers, failures = threading.Event(), [], []
    threads = _callers(server.target, stop, answers, failures)
    timeline = []  # (start, end, allowed versions while the command ran)
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        code, out, err = run(common + ["--version", "2"], capsys)
        timeline.append((t0, time.monotonic(), {1, 2}))
        assert code == 0, err
        assert labels(cfg, "pg") == {"stable": 2}
        assert "pg: stable -> version 2: mean_return" in out
        time.sleep(1.0)

        t0 = time.monotonic()
        code, out, err = run(common + ["--version", "3"], capsys)  # untrained: worse than stable
        timeline.append((t0, time.monotonic(), {2}))
        assert code == 1
        line = err.strip()
        assert "\n" not in line and line.startswith("pg: version 3 refused, stable stays at 2: mean_return ")
        assert labels(cfg, "pg") == {"stable": 2}  # canary gone again: as it was
        time.sleep(1.0)

        t0 = time.monotonic()
        code, out, err = run(["--model", "pg", "--model_config_file", cfg, "--server", server.target, "--rollback"], capsys)
        timeline.append((t0, time.monotonic(), {1, 2}))
        assert code == 0, err
        assert labels(cfg, "pg") == {"stable": 1} and "rolled back to version 1 (was 2)" in out
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert len(answers) > 100

    def allowed(t_send, t_recv):
        ok = set()
        # outside the commands: 1 before the promotion, 2 until the rollback, 1 after it
        steady = [(-1e18, timeline[0][0], {1}), (timeline[0][1], timeline[2][0], {2}), (timeline[2][1], 1e18, {1})]
        for start, end, versions in steady + timeline:
            if t_send <= end and t_recv >= start:
                ok |= versions
        return ok

    wrong = [(a, b, v) for a, b, v in answers if v not in allowed(a, b)]
    assert wrong == []
    assert {v for _, _, v in answers} == {1, 2}

    history = [json.loads(line) for line in open(cfg + ".history.jsonl")]
    assert [h["verdict"] for h in history] == ["promoted", "promoted", "refused", "rolled back"]
    first, promoted, refused, back = history
    assert (first["from"], first["to"], first["stable_value"]) == (None, 1, None)
    assert (promoted["from"], promoted["to"]) == (1, 2) and promoted["candidate_value"] > promoted["stable_value"]
    assert (refused["candidate"], refused["to"]) == (3, 2) and refused["candidate_value"] < refused["stable_value"]
    assert (back["from"], back["to"]) == (2, 1)
    for h in history:
        assert h["metric"] == "mean_return" and h["by"] and h["time"].endswith("Z") and "release" in h["command"]
    code, out, _ = run(["--model", "pg", "--model_config_file", cfg, "--server", server.target, "--history"], capsys)
    assert code == 0 and len(out.strip().splitlines()) == 4


def test_bad_input_is_one_line_and_stable_stays(pg_server, pg_repo, capsys):
    server, cfg = pg_server
    write_config(cfg, "pg", os.path.join(pg_repo, "pg"), {"stable": 1})
    before = open(cfg).read()
    common = ["--model_config_file", cfg, "--server", server.target]
    cases = [
        (["--model", "nmt", "--source_file", cfg, "--reference_file", cfg], "model 'nmt' is not in the models config"),
        (["--model", "pg", "--version", "99", "--load_timeout", "2", "--env", "CartPole-v0"],
         "version 99 of pg is not AVAILABLE after 2 s (no version 99"),
        (["--model", "pg", "--version", "2"], "pg's release check needs --env"),
        (["--model", "pg", "--version", "2", "--env", "MountainCar-v0", "--episodes", "1"],
         "the evaluation set does not match pg's inputs"),
        (["--model", "pg", "--version", "2", "--env", "CartPole-v0", "--server", "127.0.0.1:1"],
         "cannot reach a model server at 127.0.0.1:1"),
    ]
    for args, message in cases:
        code, _, err = run(common + args, capsys)
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)
        assert open(cfg).read() == before or labels(cfg, "pg") == {"stable": 1}
    # a candidate that cannot load: its load error is quoted
    broken = os.path.join(pg_repo, "pg", "4")
    os.makedirs(os.path.join(broken, "variables"))
    with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    try:
        code, _, err = run(common + ["--model", "pg", "--version", "4", "--env", "CartPole-v0"], capsys)
        assert code == 2 and "version 4 of pg did not load:" in err and err.count("\n") == 1, err
    finally:
        import shutil

        shutil.rmtree(broken)
    assert labels(cfg, "pg") == {"stable": 1}
    assert not os.path.exists(cfg + ".history.jsonl")  # no decision was made


def test_nmt_better_version_promoted_worse_refused(tmp_path, capsys):
    from tfcluster import config as config_mod
    from tfcluster.data import toy
    from tfcluster.train.loop import WorkerContext, run_loop
    from tfcluster.workloads import nmt

    p = toy.write_corpus(str(tmp_path / "data"), sizes={"train": 2000, "dev": 40})
    base = str(tmp_path / "models")
    for steps in (10, 300):
        cfg = nmt.Config(src="src", tgt="tgt", train_prefix=p["train"], dev_prefix=p["dev"], vocab_prefix=p["vocab"],
                         out_dir=str(tmp_path / f"run{steps}"), num_train_steps=steps, steps_per_stats=10,
                         steps_per_external_eval=10**6, num_units=32, attention="scaled_luong", input_feeding=False,
                         optimizer="adam", learning_rate=0.01, batch_size=32, dropout=0.0)
        cfg = nmt.prepare(cfg)
        config_mod.save(cfg)
        run_loop(lambda s: nmt.Task(cfg, s, WorkerContext()), cfg)
        nmt.export_checkpoint(cfg, "last", base)
    cfg_path = tmp_path / "models.config"
    write_config(cfg_path, "nmt", os.path.join(base, "nmt"))
    server = LocalServer(model_config_file=str(cfg_path), file_system_poll_wait_seconds=1,
                         model_config_file_poll_wait_seconds=1, log_path=str(tmp_path / "server.log")).start()
    try:
        server.wait_until_available("nmt", timeout_s=120)
        common = ["--model", "nmt", "--model_config_file", str(cfg_path), "--server", server.target,
                  "--source_file", p["dev"] + ".src", "--reference_file", p["dev"] + ".tgt"]
        code, out, err = run(common + ["--version", "1"], capsys)
        assert code == 0, err
        code, out, err = run(common + ["--version", "2"], capsys)
        assert code == 0, err
        assert labels(cfg_path, "nmt") == {"stable": 2}
        code, out, err = run(common + ["--version", "1"], capsys)  # the 10-step model again: refused
        assert code == 1 and "nmt: version 1 refused, stable stays at 2: bleu " in err
        assert labels(cfg_path, "nmt") == {"stable": 2}
        history = [json.loads(line) for line in open(str(cfg_path) + ".history.jsonl")]
        good, bad = history[1], history[2]
        assert good["candidate_value"] > 50 > good["stable_value"] and bad["candidate_value"] == good["stable_value"]
    finally:
        assert server.stop() == 0, server.log_tail()
