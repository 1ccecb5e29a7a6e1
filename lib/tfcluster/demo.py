"""`make demo` / `tfcluster demo`: the main job end to end on the embedded defaults.

1. start a local Ray cluster (127.0.0.1, token auth, dashboard :8265);
2. `ray job submit ... -- python jobs/train_nmt.py` on Multi30k en->de (from
   ../shared/data/multi30k, the user cache, or downloaded and checksum-verified into
   ~/.cache/tfcluster), else, with one line saying why, on a small generated corpus; the
   job exports the model to demo/models/nmt/<version>;
3. start the local model server (`tfcluster serve`, TF Serving's gRPC API) on the model
   repository and translate a few sentences through the gRPC client;
4. stop the server and the cluster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from tfcluster import cluster
from tfcluster.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MULTI30K = os.path.join(os.path.dirname(ROOT), "shared", "data", "multi30k")


def banner(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def corpus(work: str) -> tuple[list[str], list[str]]:
    """(train flags, sentences to translate): Multi30k (../shared, the cache or a download), else the generated corpus."""
    from tfcluster.data import multi30k

    try:
        folder = multi30k.locate(MULTI30K)
    except multi30k.FetchError as e:
        folder, why = None, str(e)
    if folder:
        p = os.path.join(folder, "{}")
        flags = [
            "--src", "en", "--tgt", "de", "--subword", "unigram", "--subword_vocab_size", "4000",
            "--train_prefix", p.format("train"), "--dev_prefix", p.format("val"),
            "--test_prefix", p.format("test_2016_flickr"),
            "--num_layers", "1", "--num_units", "128", "--attention", "scaled_luong", "--input_feeding", "false",
            "--optimizer", "adam", "--learning_rate", "0.002", "--batch_size", "64", "--dropout", "0.1",
            "--num_train_steps", "600", "--steps_per_stats", "50", "--steps_per_external_eval", "300",
            "--infer_batch_size", "128",
        ]
        sentences = ["A man rides a bike.", "Two dogs are playing in the snow.", "A woman is sitting on a bench."]
        print(f"corpus: Multi30k en->de from {folder}")
    else:
        from tfcluster.data import toy

        p = toy.write_corpus(os.path.join(work, "data"))
        flags = [
            "--src", "src", "--tgt", "tgt", "--vocab_prefix", p["vocab"], "--train_prefix", p["train"],
            "--dev_prefix", p["dev"], "--test_prefix", p["test"], "--num_units", "32", "--attention", "scaled_luong",
            "--input_feeding", "false", "--optimizer", "adam", "--learning_rate", "0.01", "--batch_size", "32",
            "--dropout", "0.0", "--num_train_steps", "600", "--steps_per_stats", "100", "--steps_per_external_eval", "300",
        ]
        sentences = ["a man rides a bike", "the small dog sees a red ball", "a woman walks"]
        print(f"corpus: Multi30k is not available ({why}); training on the generated word-for-word corpus "
              f"in {p['train']}.* instead", flush=True)
    return flags, sentences


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tfcluster demo", description=__doc__.splitlines()[0])
    ap.add_argument("--work_dir", default=os.path.join(ROOT, "demo"), help="where data, runs and models go (default: ./demo)")
    ap.add_argument("--num_workers", type=int, default=2, help="Ray Train workers (default: 2)")
    a = ap.parse_args(argv)
    t0 = time.time()
    work = os.path.abspath(a.work_dir)
    if os.path.exists(work):
        shutil.rmtree(work)
    os.makedirs(work)
    models = os.path.join(work, "models")

    banner("1/4 local Ray cluster")
    started = not cluster.dashboard_up()
    cluster.up()
    try:
        banner("2/4 ray job submit -- python jobs/train_nmt.py")
        flags, sentences = corpus(work)
        cmd = [
            cluster.ray_cli(), "job", "submit", "--address", cluster.DASHBOARD_URL, "--working-dir", ROOT, "--",
            "python", "jobs/train_nmt.py", *flags, "--num_workers", str(a.num_workers),
            "--out_dir", os.path.join(work, "runs", "nmt"), "--model_base_path", models,
        ]
        print("$ ray job submit --address", cluster.DASHBOARD_URL, "--working-dir . -- python jobs/train_nmt.py", " ".join(cmd[cmd.index("jobs/train_nmt.py") + 1:]), flush=True)
        if subprocess.run(cmd, env=cluster.auth_env()).returncode != 0:
            raise UserError("the training job failed; see its log above")
    finally:
        if started:
            banner("stopping the Ray cluster")
            cluster.down()

    banner("3/4 tfcluster serve --model_name nmt --model_base_path demo/models/nmt")
    from tfcluster.serving import LocalServer

    with LocalServer(model_name="nmt", model_base_path=os.path.join(models, "nmt"), rest_api_port=0) as srv:
        version = srv.wait_until_available("nmt", timeout_s=180)["nmt"]
        print(f"model nmt version {version} AVAILABLE on {srv.target} (gRPC)")
        banner("4/4 translations over gRPC (tfcluster.serving.Client)")
        out = srv.client().predict("nmt", {"source": sentences})
        for src, tgt, score in zip(sentences, out["translation"], out["score"]):
            tgt = tgt.decode() if isinstance(tgt, bytes) else tgt
            print(f"  {src}\n    -> {tgt}   (log-prob {float(score):.2f})")
    print(f"\ndemo finished in {time.time() - t0:.0f} s; model repository: {models}")
    return 0
