#!/usr/bin/env python3
"""Serving overhead: in-process signature call vs gRPC round trip through `tfcluster serve`.

    python bench/serving.py [--seconds 5] [--nmt_model_dir models/nmt/3] [--dcgan_model_dir models/dcgan/2]
                            [--out bench/results/serving.json]

For the pg policy, for nmt (one sentence per request) and, with --dcgan_model_dir, for a DCGAN
generator (one latent vector per request, images back), in the same run:
  * in-process: the SavedModel's `serving_default` called directly, p50 latency at batch 1
    and throughput (rows/s) at batch 16;
  * gRPC: the local server started as a subprocess with --enable_batching
    (serving/batching.config), p50 and p99 round-trip latency at 1 client and throughput with 16
    concurrent clients (load-generator processes of their own, one row per request, prebuilt requests),
    with the batches the server ran meanwhile (its processed_batch_size metric: count, mean rows, sizes);
  * the p50 overhead again with in-process and gRPC calls alternated call by call, one at a time
    (`grpc_p50_overhead_ms_interleaved`), which machine drift between the two windows does not move.
Goals (issue 3): p50 overhead <= 2 ms at 1 client; 16-client throughput >= 70% of the
in-process throughput at batch 16. Prints one JSON object. Without --nmt_model_dir the
nmt model is tfcluster.serving.tiny's string stand-in.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from report import emit  # noqa: E402  (bench/report.py, beside this file)

import numpy as np  # noqa: E402


def p50_ms(fn, seconds: float) -> tuple[float, int]:
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, len(times)


def throughput(fn, rows_per_call: int, seconds: float, clients: int = 1) -> float:
    counts = [0] * clients
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def loop(i):
        start.wait()
        while not stop.is_set():
            fn()
            counts[i] += rows_per_call

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


PREDICT = "/tensorflow.serving.PredictionService/Predict"


def _load(target: str, request: bytes, threads: int, seconds: float, start_at: float, out) -> None:
    """A load-generator process: `threads` clients, each sending the serialized PredictRequest in a loop
    (one channel per process, bytes in and out, so the client's own cost stays small), until `seconds`
    after the wall-clock `start_at`; puts its latencies (seconds) on `out`."""
    import grpc

    channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
    call = channel.unary_unary(PREDICT)
    for _ in range(10):
        call(request, timeout=60)
    lats: list[list[float]] = [[] for _ in range(threads)]

    def loop(i):
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + seconds
        while True:
            t0 = time.perf_counter()
            call(request, timeout=60)
            t1 = time.perf_counter()
            if time.time() > end:
                break
            lats[i].append(t1 - t0)

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    channel.close()
    out.put([x for lat in lats for x in lat])


def interleaved_overhead_ms(fn, inputs: dict, target: str, request: bytes, seconds: float) -> float:
    """p50 of a gRPC round trip minus p50 of the in-process call, the two alternated call by call from this
    process (one at a time; the server idle between its requests), so both see the same machine: the
    separate windows of the main figure can differ by a millisecond or two on a shared 2-core machine."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(PREDICT)
        local, served = [], []
        end = time.perf_counter() + 2 * seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            fn(**inputs)
            t1 = time.perf_counter()
            call(request, timeout=60)
            local.append(t1 - t0)
            served.append(time.perf_counter() - t1)
    return round((statistics.median(served) - statistics.median(local)) * 1e3, 3)


MONITORING = "/monitoring/prometheus/metrics"
BATCH_METRIC = ":tensorflow:serving:batching_session:processed_batch_size"


def batch_sizes(rest_url: str, model: str) -> dict:
    """The server's processed-batch-size histogram for `model` (its Prometheus text, read with
    prometheus_client's parser): batches, rows, and batches per bucket (cumulative, as Prometheus counts them)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(rest_url + MONITORING, timeout=30).read().decode()
    h = {"batches": 0, "rows": 0.0, "le": {}}
    for family in text_string_to_metric_families(text):
        if family.name != BATCH_METRIC:
            continue
        for sample in family.samples:
            if sample.labels.get("model_name") != model:
                continue
            if sample.name.endswith("_bucket"):
                h["le"][sample.labels["le"]] = int(sample.value)
            elif sample.name.endswith("_sum"):
                h["rows"] = sample.value
            elif sample.name.endswith("_count"):
                h["batches"] = int(sample.value)
    return h


def batches_between(before: dict, after: dict) -> dict:
    """Batches the server ran between two `batch_sizes` readings: how many, mean rows, and how many
    of at most N rows for each bucket bound N."""
    n = after["batches"] - before["batches"]
    prev, per_bucket = 0, {}
    for le, total in after["le"].items():
        count = total - before["le"].get(le, 0)
        if count - prev:
            per_bucket[le] = count - prev
        prev = count
    return {"batches": n, "mean_rows": round((after["rows"] - before["rows"]) / n, 2) if n else 0.0,
            "batches_by_size_le": per_bucket}


def grpc_load(target: str, request: bytes, clients: int, seconds: float, processes: int) -> dict:
    """`clients` concurrent clients spread over `processes` load-generator processes (none of them this
    one): p50/p99 latency (ms) and requests per second over the same `seconds` window."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    processes = max(1, min(processes, clients))
    start_at = time.time() + 8.0  # every process connected and warmed before the window opens
    per = [clients // processes + (i < clients % processes) for i in range(processes)]
    procs = [ctx.Process(target=_load, args=(target, request, n, seconds, start_at, out)) for n in per]
    for p in procs:
        p.start()
    lats = [x for _ in procs for x in out.get(timeout=seconds + 120)]
    for p in procs:
        p.join()
    lats.sort()
    return {"p50_ms": round(statistics.median(lats) * 1e3, 3), "p99_ms": round(lats[int(0.99 * (len(lats) - 1))] * 1e3, 3),
            "requests_per_s": round(len(lats) / seconds, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time per figure (default: 5)")
    p.add_argument("--nmt_model_dir", default=None, help="an exported NMT version folder (<base>/nmt/<version>)")
    p.add_argument("--dcgan_model_dir", default=None, help="an exported DCGAN version folder (<base>/dcgan/<version>)")
    p.add_argument("--batching_parameters_file", default=os.path.join(ROOT, "serving", "batching.config"))
    p.add_argument("--sentence", default="A man in an orange hat starring at something.",
                   help="the nmt request's source sentence")
    p.add_argument("--server_flag", action="append", default=[], metavar="NAME=VALUE",
                   help="another `tfcluster serve` flag, e.g. tensorflow_inter_op_parallelism=1 (repeatable)")
    p.add_argument("--client_processes", type=int, default=2, help="load-generator processes for the 16 clients")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()

    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from tfcluster import contract
    from tfcluster.serving import LocalServer, tiny

    tmp = tempfile.mkdtemp(prefix="bench-serving-")
    try:
        base = os.path.join(tmp, "models")
        paths = {"pg": tiny.export(tiny.pg_policy(0), base, contract.PG)}
        if a.nmt_model_dir:
            os.makedirs(os.path.join(base, "nmt"))
            paths["nmt"] = os.path.join(base, "nmt", "1")
            os.symlink(os.path.abspath(a.nmt_model_dir), paths["nmt"])
            from tfcluster.serving.models import read_meta_graph, register_ops

            register_ops(read_meta_graph(paths["nmt"], {"serve"}), paths["nmt"])  # tensorflow-text's ops, if it uses them
        else:
            paths["nmt"] = tiny.export(tiny.nmt_echo(), base, contract.NMT)
        one = {
            "pg": {"observation": np.array([[0.01, -0.02, 0.03, 0.04]], np.float32)},
            "nmt": {"source": np.array([a.sentence.encode()], dtype=object)},
        }
        if a.dcgan_model_dir:
            os.makedirs(os.path.join(base, "dcgan"))
            paths["dcgan"] = os.path.join(base, "dcgan", "1")
            os.symlink(os.path.abspath(a.dcgan_model_dir), paths["dcgan"])
            z = tf.saved_model.load(paths["dcgan"]).signatures["serving_default"].structured_input_signature[1]["z"]
            one["dcgan"] = {"z": np.random.default_rng(0).uniform(-1, 1, (1, z.shape[-1])).astype(np.float32)}
        results, fns = {}, {}
        for model, path in paths.items():  # in process first, on a quiet server-less machine
            fn = tf.saved_model.load(path).signatures["serving_default"]
            x1 = {k: tf.constant(v) for k, v in one[model].items()}
            fns[model] = fn, x1  # again, alternated with gRPC calls, once the server runs
            x16 = {k: tf.constant(np.repeat(v, 16, axis=0)) for k, v in one[model].items()}
            y1, _ = fn(**x1), fn(**x16)
            lat, n = p50_ms(lambda: fn(**x1), a.seconds)
            results[model] = {
                "in_process_p50_ms_batch1": round(lat, 3),
                "in_process_rows_per_s_batch16": round(throughput(lambda: fn(**x16), 16, a.seconds), 1),
            }
            if model == "nmt":  # a long decode and a fixed cost per request tell apart only with the length
                results[model]["translation"] = y1["translation"].numpy()[0].decode()
                results[model]["output_tokens"] = len(results[model]["translation"].split())
        cfg = os.path.join(tmp, "models.config")
        with open(cfg, "w") as f:
            f.write("model_config_list {\n" + "".join(
                f'  config {{ name: "{m}" base_path: "{base}/{m}" model_platform: "tensorflow" }}\n' for m in paths) + "}\n")
        monitoring = os.path.join(tmp, "monitoring.config")
        with open(monitoring, "w") as f:
            f.write(f'prometheus_config {{ enable: true path: "{MONITORING}" }}\n')
        with LocalServer(model_config_file=cfg, enable_batching=True, batching_parameters_file=a.batching_parameters_file,
                         monitoring_config_file=monitoring, log_path=os.path.join(tmp, "server.log"),
                         **dict(f.split("=", 1) for f in a.server_flag)) as srv:
            srv.wait_until_available(*paths, timeout_s=300)
            for model in paths:
                req = predict_pb2.PredictRequest()
                req.model_spec.name = model
                for k, v in one[model].items():
                    req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
                body = req.SerializeToString()
                r = results[model]
                one_client = grpc_load(srv.target, body, 1, a.seconds, 1)
                before = batch_sizes(srv.rest_url, model)
                many = grpc_load(srv.target, body, 16, a.seconds, a.client_processes)
                r["grpc_16_clients_batches"] = batches_between(before, batch_sizes(srv.rest_url, model))
                r["grpc_p50_ms_1_client"], r["grpc_p99_ms_1_client"] = one_client["p50_ms"], one_client["p99_ms"]
                r["grpc_p50_overhead_ms"] = round(one_client["p50_ms"] - r["in_process_p50_ms_batch1"], 3)
                r["grpc_p50_overhead_ms_interleaved"] = interleaved_overhead_ms(*fns[model], srv.target, body, a.seconds)
                r["grpc_rows_per_s_16_clients"] = many["requests_per_s"]
                r["grpc_p50_ms_16_clients"], r["grpc_p99_ms_16_clients"] = many["p50_ms"], many["p99_ms"]
                r["grpc_16_clients_vs_in_process_batch16"] = round(r["grpc_rows_per_s_16_clients"] / r["in_process_rows_per_s_batch16"], 3)
                r["goal_p50_overhead_le_2ms"] = r["grpc_p50_overhead_ms"] <= 2.0
                r["goal_16_clients_ge_70pct"] = r["grpc_16_clients_vs_in_process_batch16"] >= 0.7
        report = {
            "bench": "serving",
            "models": {"pg": "tiny linear softmax policy (tfcluster.serving.tiny)",
                       "nmt": a.nmt_model_dir or "tiny string stand-in (tfcluster.serving.tiny.nmt_echo)",
                       **({"dcgan": a.dcgan_model_dir} if a.dcgan_model_dir else {})},
            "batching_parameters_file": os.path.relpath(a.batching_parameters_file, ROOT),
            "seconds_per_figure": a.seconds,
            "server_flags": a.server_flag,
            "load_generator": f"its own processes ({a.client_processes} for 16 clients, threads in each), raw PredictRequest bytes",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "tensorflow": tf.__version__,
                        "load_average_1m": round(os.getloadavg()[0], 2)},
            "results": results,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit(report, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
