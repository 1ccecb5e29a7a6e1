#!/usr/bin/env python3
"""Serving overhead: in-process signature call vs gRPC round trip through `tfcluster serve`.

    python bench/serving.py [--seconds 3] [--rounds 5] [--nmt_model_dir models/nmt/3] [--dcgan_model_dir models/dcgan/2]
                            [--out bench/results/serving.json]

For the pg policy, for nmt (one sentence per request) and, with --dcgan_model_dir, for a DCGAN
generator (one latent vector per request, images back), in the same run, one side at a time, in
`--rounds` rounds (each figure is its median over the rounds, the overhead and the 16-client ratio
those of each round's own pair, so one slow window on a shared machine does not decide the figure):
  * in-process, while no server runs: the SavedModel's `serving_default` called directly, p50 latency
    at batch 1 and throughput (rows/s) at batch 16;
  * gRPC, a fresh server each round: the local server started as a subprocess with --enable_batching
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


def _load(target: str, request: bytes, threads: int, seconds: float, ready, go, out) -> None:
    """A load-generator process: `threads` clients, each sending the serialized PredictRequest in a loop
    (one channel per process, bytes in and out, so the client's own cost stays small). Once connected and
    warmed it says so on `ready`, waits for `go` and runs for `seconds`; puts its latencies (seconds) on `out`."""
    import grpc

    channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
    call = channel.unary_unary(PREDICT)
    for _ in range(10):
        call(request, timeout=60)
    lats: list[list[float]] = [[] for _ in range(threads)]
    ready.put(True)
    go.wait()
    start_at = time.time()

    def loop(i):
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


def one_row(fn, sentence: str) -> dict:
    """A batch-1 request for the signature: the sentence for a string input (nmt), a fixed uniform draw in
    [-1, 1) of the declared row shape for a float input (a DCGAN latent vector, an observation)."""
    rng, inputs = np.random.default_rng(0), {}
    for k, spec in fn.structured_input_signature[1].items():
        if spec.dtype.name == "string":
            inputs[k] = np.array([sentence.encode()], dtype=object)
        else:
            inputs[k] = rng.uniform(-1, 1, (1, *spec.shape[1:])).astype(spec.dtype.as_numpy_dtype)
    return inputs


def merged_batches(rounds: list[dict]) -> dict:
    """`batches_between` readings of several windows as one."""
    n = sum(b["batches"] for b in rounds)
    per_bucket: dict[str, int] = {}
    for b in rounds:
        for le, count in b["batches_by_size_le"].items():
            per_bucket[le] = per_bucket.get(le, 0) + count
    return {"batches": n, "mean_rows": round(sum(b["mean_rows"] * b["batches"] for b in rounds) / n, 2) if n else 0.0,
            "batches_by_size_le": dict(sorted(per_bucket.items(), key=lambda kv: float(kv[0])))}


def grpc_load(target: str, request: bytes, clients: int, seconds: float, processes: int) -> dict:
    """`clients` concurrent clients spread over `processes` load-generator processes (none of them this
    one): p50/p99 latency (ms) and requests per second over the same `seconds` window."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    processes = max(1, min(processes, clients))
    per = [clients // processes + (i < clients % processes) for i in range(processes)]
    procs = [ctx.Process(target=_load, args=(target, request, n, seconds, ready, go, out)) for n in per]
    for p in procs:
        p.start()
    for _ in procs:  # every process connected and warmed before the window opens
        ready.get(timeout=120)
    go.set()
    lats = [x for _ in procs for x in out.get(timeout=seconds + 120)]
    for p in procs:
        p.join()
    lats.sort()
    return {"p50_ms": round(statistics.median(lats) * 1e3, 3), "p99_ms": round(lats[int(0.99 * (len(lats) - 1))] * 1e3, 3),
            "requests_per_s": round(len(lats) / seconds, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per figure and round (default: 3)")
    p.add_argument("--nmt_model_dir", default=None, help="an exported NMT version folder (<base>/nmt/<version>)")
    p.add_argument("--dcgan_model_dir", default=None, help="an exported DCGAN version folder (<base>/dcgan/<version>)")
    p.add_argument("--batching_parameters_file", default=os.path.join(ROOT, "serving", "batching.config"))
    p.add_argument("--sentence", default="A man in an orange hat starring at something.",
                   help="the nmt request's source sentence")
    p.add_argument("--server_flag", action="append", default=[], metavar="NAME=VALUE",
                   help="another `tfcluster serve` flag, e.g. tensorflow_inter_op_parallelism=1 (repeatable)")
    p.add_argument("--rounds", type=int, default=5,
                   help="in-process figures, then a fresh server's, this many times; each figure is the median (default: 5)")
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
        if a.dcgan_model_dir:
            os.makedirs(os.path.join(base, "dcgan"))
            paths["dcgan"] = os.path.join(base, "dcgan", "1")
            os.symlink(os.path.abspath(a.dcgan_model_dir), paths["dcgan"])
        one = {"pg": {"observation": np.array([[0.01, -0.02, 0.03, 0.04]], np.float32)}}  # the others: one_row
        info, fns = {}, {}
        for model, path in paths.items():
            fn = tf.saved_model.load(path).signatures["serving_default"]
            if model not in one:
                one[model] = one_row(fn, a.sentence)
            x1 = {k: tf.constant(v) for k, v in one[model].items()}
            x16 = {k: tf.constant(np.repeat(v, 16, axis=0)) for k, v in one[model].items()}
            y1, _ = fn(**x1), fn(**x16)
            fns[model] = fn, x1, x16
            info[model] = {}
            if model == "nmt":  # a long decode and a fixed cost per request tell apart only with the length
                info[model]["translation"] = y1["translation"].numpy()[0].decode()
                info[model]["output_tokens"] = len(info[model]["translation"].split())
        cfg = os.path.join(tmp, "models.config")
        with open(cfg, "w") as f:
            f.write("model_config_list {\n" + "".join(
                f'  config {{ name: "{m}" base_path: "{base}/{m}" model_platform: "tensorflow" }}\n' for m in paths) + "}\n")
        monitoring = os.path.join(tmp, "monitoring.config")
        with open(monitoring, "w") as f:
            f.write(f'prometheus_config {{ enable: true path: "{MONITORING}" }}\n')
        bodies = {}
        for model in paths:
            req = predict_pb2.PredictRequest()
            req.model_spec.name = model
            for k, v in one[model].items():
                req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
            bodies[model] = req.SerializeToString()
        rounds: dict[str, list[dict]] = {m: [] for m in paths}
        for i in range(a.rounds):
            inproc = {}
            for model, (fn, x1, x16) in fns.items():  # in process, on a quiet machine: no server runs
                inproc[model] = p50_ms(lambda: fn(**x1), a.seconds)[0], throughput(lambda: fn(**x16), 16, a.seconds)
            with LocalServer(model_config_file=cfg, enable_batching=True, batching_parameters_file=a.batching_parameters_file,
                             monitoring_config_file=monitoring, log_path=os.path.join(tmp, f"server-{i}.log"),
                             **dict(f.split("=", 1) for f in a.server_flag)) as srv:
                srv.wait_until_available(*paths, timeout_s=300)
                for model, body in bodies.items():
                    fn, x1, _ = fns[model]
                    one_client = grpc_load(srv.target, body, 1, a.seconds, 1)
                    before = batch_sizes(srv.rest_url, model)
                    many = grpc_load(srv.target, body, 16, a.seconds, a.client_processes)
                    batches = batches_between(before, batch_sizes(srv.rest_url, model))
                    lat, rate = inproc[model]
                    rounds[model].append({
                        "in_process_p50_ms_batch1": round(lat, 3),
                        "in_process_rows_per_s_batch16": round(rate, 1),
                        "grpc_p50_ms_1_client": one_client["p50_ms"],
                        "grpc_p99_ms_1_client": one_client["p99_ms"],
                        "grpc_p50_overhead_ms": round(one_client["p50_ms"] - lat, 3),
                        "grpc_p50_overhead_ms_interleaved": interleaved_overhead_ms(fn, x1, srv.target, body, a.seconds),
                        "grpc_rows_per_s_16_clients": many["requests_per_s"],
                        "grpc_p50_ms_16_clients": many["p50_ms"],
                        "grpc_p99_ms_16_clients": many["p99_ms"],
                        "grpc_16_clients_vs_in_process_batch16": round(many["requests_per_s"] / rate, 3),
                        "grpc_16_clients_batches": batches,
                    })
        results = {}
        for model, rs in rounds.items():
            # each figure: its median over the rounds (the overhead and the ratio: of each round's own pair)
            r = {k: round(statistics.median(x[k] for x in rs), 3) for k in rs[0] if k != "grpc_16_clients_batches"}
            r["grpc_16_clients_batches"] = merged_batches([x["grpc_16_clients_batches"] for x in rs])
            r["goal_p50_overhead_le_2ms"] = r["grpc_p50_overhead_ms"] <= 2.0
            r["goal_16_clients_ge_70pct"] = r["grpc_16_clients_vs_in_process_batch16"] >= 0.7
            r["rounds"] = {k: [x[k] for x in rs] for k in ("in_process_p50_ms_batch1", "grpc_p50_ms_1_client", "grpc_p50_overhead_ms",
                                                          "grpc_p50_overhead_ms_interleaved", "grpc_16_clients_vs_in_process_batch16")}
            results[model] = {**info[model], **r}
        report = {
            "bench": "serving",
            "models": {"pg": "tiny linear softmax policy (tfcluster.serving.tiny)",
                       "nmt": a.nmt_model_dir or "tiny string stand-in (tfcluster.serving.tiny.nmt_echo)",
                       **({"dcgan": a.dcgan_model_dir} if a.dcgan_model_dir else {})},
            "batching_parameters_file": os.path.relpath(a.batching_parameters_file, ROOT),
            "seconds_per_figure": a.seconds,
            "rounds": a.rounds,
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
