"""Input from object storage: NMT and DCGAN training steps/s with their data in the S3 stand-in against
the same data on local disk, in one run.

    python bench/storage_input.py --stand_in .venv/s3-stand-in --data ../shared/data [--out bench/results/storage_input.json]

The bucket is moto's S3 server on 127.0.0.1 (its own process), reached through plain s3:// URIs and
AWS_ENDPOINT_URL, as a job on a cluster reaches MinIO or S3. Each workload trains the real job
(`run_loop` on its Task's tf.data pipeline) twice, once from a local folder and once from the bucket
with an empty node cache, and reports per stats window:

* warm: the windows after the first epoch (node cache filled, decoded data cached): goal >= 0.95x
  of local disk (median of `--rounds` pairs, alternating which goes first, after one unmeasured warm-up
  run that takes the process's first graph traces);
* the first-epoch cost: the seconds the bucket run's first epoch took beyond the local run's. NMT
  fetches its corpus files before the first step (the fetch time; its first window is compared too);
  DCGAN fetches each image as its pipeline reaches it (the first epoch's time at its images/s, plus
  the listing in `prepare`). Whole-run wall times also hold the final evaluation and vary by +-10 s
  on this machine; they are recorded, not compared.

NMT uses Multi30k en->de (`<data>/multi30k`, a synthetic corpus when absent) with a 2x128 model;
DCGAN the first `--images` anime faces (`<data>/anime_faces`, generated JPEGs when absent) at 48x48.
Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "lib"))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from report import emit  # noqa: E402  (bench/report.py, beside this file)


WARM_WINDOWS = 5  # NMT stats windows averaged after the first epoch


def start_stand_in(stand_in: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "PYTHONPATH": stand_in}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"error: the S3 stand-in in {stand_in} did not start")
            time.sleep(0.2)


def windows(out_dir: str, key: str) -> list[tuple[int, float]]:
    from tfcluster.metrics import read_metrics

    return [(r["step"], float(r[key])) for r in read_metrics(out_dir) if key in r]


def timed_run(make_task, cfg) -> float:
    from tfcluster.train.loop import run_loop

    t0 = time.perf_counter()
    run_loop(make_task, cfg)
    return time.perf_counter() - t0


def fresh_cache(work: str) -> None:
    cache = os.path.join(work, "node-cache")
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["TFCLUSTER_CACHE_DIR"] = cache


def bench_nmt(data: str, bucket: str, work: str, window: int, rounds: int) -> dict:
    from tfcluster import storage
    from tfcluster.data import text, toy
    from tfcluster.train.loop import WorkerContext
    from tfcluster.workloads import nmt

    if os.path.isdir(data):
        src, tgt, corpus = "en", "de", "multi30k"
        folder = data
    else:
        src, tgt, corpus = "src", "tgt", "synthetic"
        folder = os.path.join(work, "toy")
        toy.write_corpus(folder, sizes={"train": 8000}, vocab=False)
    files = [f for f in os.listdir(folder) if f.startswith("train.")]
    for f in files:
        with open(os.path.join(folder, f), "rb") as fh:
            storage.write_bytes(f"{bucket}/nmt/{f}", fh.read())
    local_prefix, s3_prefix = os.path.join(folder, "train"), f"{bucket}/nmt/train"
    pairs = text.check_parallel(text.resolve(local_prefix, src), text.resolve(local_prefix, tgt))
    base = nmt.Config(src=src, tgt=tgt, train_prefix=local_prefix, out_dir=os.path.join(work, "nmt-vocab"),
                      tokenize="simple", num_layers=2, num_units=128, attention="scaled_luong", batch_size=128,
                      input_feeding=False, vocab_size=8000, steps_per_stats=window, steps_per_external_eval=10**9)
    base = nmt.prepare(base)  # one vocabulary for both runs
    epoch = -(-pairs // base.batch_size)
    steps = window * (epoch // window + 1 + WARM_WINDOWS)

    def one(where: str, prefix: str, tag: str, num_steps: int) -> dict:
        fresh_cache(work)
        run = os.path.join(work, f"nmt-{where}-{tag}")
        os.makedirs(run)
        for p in base.vocab_files:
            shutil.copy(p, run)
        c = dataclasses.replace(base, out_dir=run, train_prefix=prefix, num_train_steps=num_steps)
        t0 = time.perf_counter()
        for lang in (src, tgt):
            text.text_dataset(text.resolve(prefix, lang))  # what the Task's dataset() fetches before step 1
        fetch = time.perf_counter() - t0
        wall = timed_run(lambda s: nmt.Task(c, s, WorkerContext()), c)
        w = windows(run, "perf/tgt_tokens_per_s")
        warm = [v for step, v in w if step - window >= epoch]  # windows that start after the first epoch
        return {"first_window_tokens_per_s": round(w[0][1], 1), "warm_tokens_per_s": round(sum(warm) / max(1, len(warm)), 1),
                "fetch_s": round(fetch, 2), "wall_s": round(wall, 1)}

    one("local", local_prefix, "warmup", window)  # the process's first graph traces, not measured
    out: dict[str, list] = {"local": [], "s3": []}
    for r in range(rounds):
        order = [("local", local_prefix), ("s3", s3_prefix)]
        for where, prefix in (order if r % 2 == 0 else order[::-1]):
            out[where].append(one(where, prefix, str(r), steps))
            print(f"# nmt round {r} {where}: {out[where][-1]}", file=sys.stderr, flush=True)
    med = {w: {k: statistics.median(x[k] for x in runs_) for k in runs_[0]} for w, runs_ in out.items()}
    mb = sum(os.path.getsize(os.path.join(folder, f)) for f in files) / 1e6
    return {"corpus": corpus, "sentence_pairs": pairs, "megabytes": round(mb, 2), "steps": steps, "window": window,
            "rounds": out, "median": med,
            "warm_ratio": round(med["s3"]["warm_tokens_per_s"] / med["local"]["warm_tokens_per_s"], 3),
            # the corpus files are fetched before step 1; after that the first epoch reads the node cache
            "first_epoch_extra_s": round(med["s3"]["fetch_s"] - med["local"]["fetch_s"], 2),
            "first_window_ratio": round(med["s3"]["first_window_tokens_per_s"] / med["local"]["first_window_tokens_per_s"], 3)}


def bench_dcgan(data: str, bucket: str, work: str, n: int, rounds: int) -> dict:
    from PIL import Image
    import numpy as np

    from tfcluster import storage
    from tfcluster.workloads import dcgan

    folder = os.path.join(work, "faces")
    os.makedirs(folder)
    if os.path.isdir(data):
        names = sorted(os.listdir(data), key=lambda s: (len(s), s))[:n]
        for f in names:
            shutil.copy(os.path.join(data, f), folder)
        source = "anime_faces"
    else:
        rng = np.random.default_rng(0)
        for i in range(n):
            Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8)).save(os.path.join(folder, f"{i}.jpg"))
        source = "generated 96x96 JPEGs"
    storage.upload_tree(folder, f"{bucket}/images/faces", last=())
    batch = 64
    epoch = n // batch

    def one(where: str, data_dir: str, tag: str, epochs: int) -> dict:
        fresh_cache(work)
        run = os.path.join(work, f"dcgan-{where}-{tag}")
        cfg = dcgan.Config(dataset="faces", data_dir=data_dir, input_height=96, output_height=48, crop=True,
                           batch_size=batch, epoch=epochs, out_dir=run, steps_per_stats=epoch, sample_every=10**9,
                           steps_per_external_eval=0, cache_images="memory")
        t0 = time.perf_counter()
        cfg = dcgan.prepare(cfg)
        prep = time.perf_counter() - t0
        wall = timed_run(lambda s: dcgan.Task(cfg, s), cfg)
        w = windows(run, "perf/images_per_s")
        warm = [v for _, v in w[1:]]  # the epochs after the first
        return {"first_epoch_images_per_s": round(w[0][1], 1), "warm_images_per_s": round(sum(warm) / max(1, len(warm)), 1),
                "prepare_s": round(prep, 2), "wall_s": round(wall, 1)}

    one("local", work, "warmup", 1)  # the process's first graph traces, not measured
    out: dict[str, list] = {"local": [], "s3": []}
    for r in range(rounds):
        order = [("local", work), ("s3", f"{bucket}/images")]
        for where, data_dir in (order if r % 2 == 0 else order[::-1]):
            out[where].append(one(where, data_dir, str(r), 3))
            print(f"# dcgan round {r} {where}: {out[where][-1]}", file=sys.stderr, flush=True)
    med = {w: {k: statistics.median(x[k] for x in runs_) for k in runs_[0]} for w, runs_ in out.items()}
    first = lambda o: epoch * batch / o["first_epoch_images_per_s"]  # noqa: E731
    return {"data": source, "images": n, "epochs": 3, "batch_size": batch, "rounds": out, "median": med,
            "warm_ratio": round(med["s3"]["warm_images_per_s"] / med["local"]["warm_images_per_s"], 3),
            "first_epoch_extra_s": round(first(med["s3"]) + med["s3"]["prepare_s"] - first(med["local"])
                                         - med["local"]["prepare_s"], 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stand_in", default=".venv/s3-stand-in", help="moto installed with --target (make test installs it)")
    p.add_argument("--data", default="../shared/data", help="holds multi30k/ and anime_faces/ (generated data when absent)")
    p.add_argument("--what", choices=["all", "nmt", "dcgan"], default="all")
    p.add_argument("--window", type=int, default=40, help="NMT steps per stats window")
    p.add_argument("--images", type=int, default=2048, help="DCGAN images in the bucket")
    p.add_argument("--rounds", type=int, default=2, help="local/bucket pairs per workload, order alternating")
    p.add_argument("--out", default="", help="also write the JSON here")
    a = p.parse_args()
    if not os.path.isdir(os.path.join(a.stand_in, "moto")):
        raise SystemExit(f"error: no S3 stand-in in {a.stand_in}: run `make test` once (it installs moto there)")
    proc, endpoint = start_stand_in(os.path.abspath(a.stand_in))
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    work = tempfile.mkdtemp(prefix="storage-bench-")
    try:
        import pyarrow.fs

        pyarrow.fs.S3FileSystem(endpoint_override=endpoint.split("://")[1], scheme="http", region="us-east-1",
                                access_key="bench", secret_key="bench", allow_bucket_creation=True).create_dir("bench")
        result = {"benchmark": "storage_input", "bucket": "S3 stand-in (moto server, 127.0.0.1)", "goal_warm_ratio": 0.95,
                  "cpu_count": os.cpu_count()}
        if a.what in ("all", "nmt"):
            result["nmt"] = bench_nmt(os.path.join(a.data, "multi30k"), "s3://bench", work, a.window, a.rounds)
        if a.what in ("all", "dcgan"):
            result["dcgan"] = bench_dcgan(os.path.join(a.data, "anime_faces"), "s3://bench", work, a.images, a.rounds)
        result["load_average"] = os.getloadavg()
        emit(result, a.out)
    finally:
        proc.terminate()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
