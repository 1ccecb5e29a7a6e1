"""Pure pieces of serving: version policies, batching, REST JSON, metrics, image grids, flags."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from tfcluster import contract
from tfcluster.errors import UserError
from tfcluster.images import image_grid
from tfcluster.serving import protos
from tfcluster.serving.batching import BatchOptions, Batcher
from tfcluster.serving.metrics import Metrics
from tfcluster.serving.models import aspired_versions
from tfcluster.serving.rest import format_predict, parse_predict_body
from tfcluster.serving.server import parser
from tfcluster.serving.tensors import Failure


def _policy(text: str):
    from tensorflow_serving.config import file_system_storage_path_source_pb2 as fs

    return text_format.Parse(text, fs.FileSystemStoragePathSourceConfig.ServableVersionPolicy())


@pytest.mark.parametrize(
    "policy,want",
    [(None, [5]), ("latest { num_versions: 2 }", [3, 5]), ("all {}", [1, 2, 3, 5]), ("specific { versions: 2 versions: 4 }", [2])],
)
def test_version_policies(policy, want):
    assert aspired_versions([1, 2, 3, 5], _policy(policy) if policy else None) == want


def test_flags_keep_tf_serving_names_and_defaults():
    a = parser().parse_args([])
    assert (a.port, a.rest_api_port, a.model_name, a.file_system_poll_wait_seconds, a.model_config_file_poll_wait_seconds) == (8500, 0, "default", 1, 0)
    assert (a.enable_batching, a.enable_model_warmup, a.saved_model_tags, a.rest_api_timeout_in_ms) == (False, True, "serve", 30000)
    a = parser().parse_args(["--enable_batching", "--enable_model_warmup=false", "--port=9000"])
    assert (a.enable_batching, a.enable_model_warmup, a.port) == (True, False, 9000)


def test_batching_parameters_text_proto_and_defaults():
    p = text_format.Parse("max_batch_size { value: 16 } batch_timeout_micros { value: 500 } "
                          "allowed_batch_sizes: 8 allowed_batch_sizes: 16", protos.BatchingParameters())
    o = BatchOptions.from_proto(p)
    assert (o.max_batch_size, o.batch_timeout_micros, o.max_enqueued_batches, o.allowed_batch_sizes) == (16, 500, 10, (8, 16))
    with pytest.raises(UserError, match="must increase and end with max_batch_size 16"):
        BatchOptions.from_proto(text_format.Parse("max_batch_size { value: 16 } allowed_batch_sizes: 8", protos.BatchingParameters()))
    assert BatchOptions.from_proto(protos.BatchingParameters()).max_batch_size == 1000


def test_batcher_merges_pads_and_splits():
    seen = []

    def run(inputs):
        seen.append(inputs["x"].shape[0])
        return {"y": inputs["x"] * 10}

    b = Batcher(BatchOptions(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1, allowed_batch_sizes=(4, 8)))
    # TF Serving's way (run_when_idle off): the first request waits out the timeout for company
    futs = [b.submit("k", "m", run, {"x": np.full((n, 1), i, np.float32)}) for i, n in enumerate([1, 2])]
    out = [f.result(10) for f in futs]
    b.close()
    np.testing.assert_array_equal(out[0]["y"], [[0.0]])
    np.testing.assert_array_equal(out[1]["y"], [[10.0], [10.0]])
    assert seen == [4]  # 3 rows merged, padded to the allowed size 4
    with pytest.raises(Failure) as e:
        Batcher(BatchOptions(max_batch_size=2, num_batch_threads=1)).submit("k", "model m", run, {"x": np.zeros((3, 1))})
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "batch of 3 rows is larger than max_batch_size 2" in e.value.message


def test_batcher_queue_full_is_unavailable():
    gate = threading.Event()
    b = Batcher(BatchOptions(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1))
    run = lambda x: (gate.wait(5), {"y": x["x"]})[1]  # noqa: E731
    first = []  # on an idle batcher the submitting thread runs its batch itself: submit from a thread
    t = threading.Thread(target=lambda: first.append(b.submit("k", "m", run, {"x": np.zeros((1, 1))})))
    t.start()
    deadline = threading.Event()
    while "k" not in b._queues or b._queues["k"].rows or not b._running:  # the first request is running
        deadline.wait(0.01)
    second = b.submit("k", "m", run, {"x": np.zeros((1, 1))})  # no slot free: it queues
    assert not second.done()
    with pytest.raises(Failure) as e:
        b.submit("k", "m", run, {"x": np.zeros((1, 1))})
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and "queue to which this task was submitted is full" in e.value.message
    gate.set()
    t.join(5)
    first[0].result(5)
    second.result(5)  # a batch thread ran it once the slot was free
    b.close()


def test_batcher_runs_a_ready_batch_on_the_submitting_thread_and_bounds_concurrency():
    """An idle batcher runs a request's batch on the submitting thread (no hand-off); never more than
    num_batch_threads batches at once; what queues while every slot is busy runs as one batch."""
    lock, running, peak, where, sizes = threading.Lock(), [0], [0], [], []
    gate = threading.Event()

    def run(x):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            where.append(threading.current_thread().name)
            sizes.append(x["x"].shape[0])
        gate.wait(5)
        with lock:
            running[0] -= 1
        return {"y": x["x"]}

    b = Batcher(BatchOptions(max_batch_size=8, num_batch_threads=2))
    gate.set()
    assert b.submit("k", "m", run, {"x": np.zeros((1, 1))}).result(5)["y"].shape == (1, 1)
    assert where == [threading.current_thread().name]
    gate.clear()
    futs, threads = [], []
    for _ in range(2):  # two requests take both slots
        threads.append(threading.Thread(target=lambda: futs.append(b.submit("k", "m", run, {"x": np.zeros((1, 1))}))))
        threads[-1].start()
    while running[0] < 2:
        time.sleep(0.01)
    queued = [b.submit("k", "m", run, {"x": np.zeros((1, 1))}) for _ in range(3)]  # all slots busy: they wait
    assert not any(f.done() for f in queued)
    gate.set()
    for f in queued:
        f.result(5)
    for t in threads:
        t.join(5)
    b.close()
    assert peak[0] == 2 and sorted(sizes)[-1] == 3 and len(sizes) == 4, (peak, sizes)


def test_rest_row_and_columnar_formats():
    spec = {"observation": contract.Tensor("observation", "float32", (None, 4))}
    inputs, rows = parse_predict_body({"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}, spec)
    assert rows and inputs["observation"].dtype == np.float32 and inputs["observation"].shape == (2, 4)
    inputs, rows = parse_predict_body({"inputs": {"observation": [[1, 2, 3, 4]]}}, spec)
    assert not rows and inputs["observation"].shape == (1, 4)
    s = {"source": contract.Tensor("source", "string", (None,))}
    inputs, _ = parse_predict_body({"instances": [{"source": {"b64": "aGk="}}, {"source": "yo"}]}, s)
    assert inputs["source"].tolist() == [b"hi", b"yo"]
    with pytest.raises(Failure, match="exactly one of 'instances'"):
        parse_predict_body({"instances": [], "inputs": []}, spec)
    out = {"action": np.array([1, 0]), "translation_bytes": np.array([b"\xff", b"a"], dtype=object)}
    assert format_predict(out, rows=True) == {"predictions": [{"action": 1, "translation_bytes": {"b64": "/w=="}},
                                                              {"action": 0, "translation_bytes": {"b64": "YQ=="}}]}
    assert format_predict({"a": np.array([1.5])}, rows=False) == {"outputs": [1.5]}


def test_metrics_text():
    m = Metrics()
    m.request_count.inc("pg", "OK")
    m.request_count.inc("pg", "OK")
    m.request_latency.observe(250.0, "pg", "predict", "GRPC")
    text = m.text()
    assert ':tensorflow:serving:request_count{model_name="pg",status="OK"} 2' in text
    assert ':tensorflow:serving:request_latency_bucket{model_name="pg",API="predict",entrypoint="GRPC",le="100"} 0' in text
    assert ':tensorflow:serving:request_latency_bucket{model_name="pg",API="predict",entrypoint="GRPC",le="300"} 1' in text
    assert ':tensorflow:serving:request_latency_count{model_name="pg",API="predict",entrypoint="GRPC"} 1' in text


def test_image_grid():
    imgs = np.stack([np.full((2, 3, 1), 10 * (i + 1), np.uint8) for i in range(5)])
    g = image_grid(imgs, pad=1)
    assert g.shape == (2 * 3 + 1, 3 * 4 + 1, 1)  # 3 columns (ceil sqrt 5), 2 rows
    assert g[1, 1, 0] == 10 and g[1, 5, 0] == 20 and g[5, 1, 0] == 40 and g[5, 9, 0] == 0  # empty 6th cell
    assert image_grid(imgs, cols=5, pad=0).shape == (2, 15, 1)
    with pytest.raises(ValueError, match="uint8"):
        image_grid(imgs.astype(np.float32))


def test_health_messages_match_the_grpc_health_proto():
    r = protos.HealthCheckResponse(status=protos.HealthCheckResponse.NOT_SERVING)
    assert r.SerializeToString() == b"\x08\x02"  # field 1, varint 2: the grpc.health.v1 wire format
    assert protos.HealthCheckRequest.FromString(b"\n\x02pg").service == "pg"


def _manager_for(base: str, name: str = "m"):
    from tensorflow_serving.config import model_server_config_pb2

    from tfcluster.serving.models import ModelManager, Options

    cfg = model_server_config_pb2.ModelServerConfig()
    cfg.model_config_list.config.add(name=name, base_path=base, model_platform="tensorflow").model_version_policy.all.SetInParent()
    mgr = ModelManager(Options())
    mgr.apply_config(cfg)
    return mgr


def test_version_folders_with_leading_zeros_are_that_version(tmp_path):
    """TF Serving reads `00000123` as version 123 and loads that folder."""
    import os

    from tfcluster.serving import tiny
    from tfcluster.serving.models import AVAILABLE

    path = tiny.export(tiny.pg_policy(0), str(tmp_path), contract.PG)
    os.rename(path, os.path.join(os.path.dirname(path), "00000123"))
    tiny.export(tiny.pg_policy(1), str(tmp_path), contract.PG, version=7)
    mgr = _manager_for(str(tmp_path / "pg"))
    assert [(vs.version, vs.state, os.path.basename(vs.path)) for vs in mgr.models["m"].versions.values()
            if vs.state == AVAILABLE] == [(123, AVAILABLE, "00000123"), (7, AVAILABLE, "7")]


def test_signatures_run_in_a_session_and_the_graph_checks_shapes(tmp_path):
    """A version runs as TF Serving runs it (a session over the MetaGraphDef): the declared [-1, 4] is not
    enforced by the server, the graph's own check answers, internal signatures are not listed."""
    import tensorflow as tf

    from tfcluster.serving import tiny

    path = tiny.export(tiny.pg_policy(0), str(tmp_path), contract.PG)
    mgr = _manager_for(str(tmp_path / "pg"))
    servable = mgr.models["m"].versions[1].servable
    assert sorted(servable.signatures) == ["serving_default"]
    assert "__saved_model_init_op" not in servable.signature_def_map().signature_def
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    got = servable.signatures["serving_default"].run({"observation": obs})
    want = tf.saved_model.load(path).signatures["serving_default"](observation=tf.constant(obs))
    np.testing.assert_array_equal(got["probabilities"], want["probabilities"].numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"observation must have shape \[batch, 4\]"):
        servable.signatures["serving_default"].run({"observation": obs[:, :3]})


def test_typed_value_fields_round_trip():
    import tensorflow as tf

    from tfcluster.serving.tensors import to_typed_proto

    for a in [np.array([[3.0]], np.float32), np.arange(6, dtype=np.uint8).reshape(2, 3), np.array([1, 2], np.int64),
              np.array([True, False]), np.array([1.5, 2], np.float16), np.array([1 + 2j], np.complex64),
              np.array([b"a", b"bc"], dtype=object), np.zeros((0, 4), np.float32)]:
        p = to_typed_proto(a)
        assert not p.tensor_content
        b = tf.make_ndarray(p)
        assert b.dtype == a.dtype and b.shape == a.shape and (b == a).all()
    assert list(to_typed_proto(np.array([[3.0]], np.float32)).float_val) == [3.0]


def test_packed_typed_fields_are_the_element_by_element_encoding():
    """Typed values are merged in as one packed field made by numpy: the same message, to the byte, as
    appending the values one by one, for every numeric dtype (NaN, -0.0, integer extremes, negative
    ints as 10-byte varints, big-endian and strided arrays, empty tensors)."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    from tfcluster.serving.tensors import _TYPED_FIELD, to_typed_proto

    rng = np.random.default_rng(0)
    f = rng.standard_normal((4, 48, 48, 3)).astype(np.float32)
    f.flat[:4] = [np.nan, -0.0, np.inf, -np.inf]
    ints = [np.iinfo(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)]
    cases = [f, f[:, ::2, 1:, :], f.astype(">f4"), f.astype(np.float64), f.astype(np.float16),
             f.astype(tf.bfloat16.as_numpy_dtype), np.array([1 + 2j, -3.5j], np.complex64),
             np.array([[1e300 - 1j]], np.complex128), np.array([1 + 2j, -3.5j], ">c8"), f.astype(">f2"),
             rng.random((3, 5)) > 0.5, np.zeros((2, 0), np.float32),
             np.zeros((0,), np.int32), rng.integers(0, 256, (2, 48, 48, 3)).astype(np.uint8),
             np.arange(-300, 300, 7, dtype=np.int32).reshape(2, -1)[:, ::3].astype(">i4")]
    cases += [np.array([v for v in (i.min, -1, 0, 1, 127, 128, 16383, 16384, i.max) if i.min <= v <= i.max], i.dtype) for i in ints]
    for a in cases:
        dtype = tf.as_dtype(a.dtype)
        ref = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum, tensor_shape=tf.TensorShape(a.shape).as_proto())
        flat = a.ravel()
        if a.dtype.kind == "c":
            flat = np.stack([flat.real, flat.imag], axis=-1).ravel()
        elif a.dtype.itemsize == 2 and a.dtype.kind not in "iu":  # float16, bfloat16: their (native) bits
            flat = flat.astype(flat.dtype.newbyteorder("=")).view(np.uint16)
        getattr(ref, _TYPED_FIELD[dtype.name]).extend(flat.tolist())
        got = to_typed_proto(a)
        assert got.SerializeToString() == ref.SerializeToString(), a.dtype
        back, native = tf.make_ndarray(got), np.ascontiguousarray(a, a.dtype.newbyteorder("="))
        assert back.dtype == native.dtype and back.shape == a.shape and back.tobytes() == native.tobytes(), a.dtype
    into = tensor_pb2.TensorProto()
    assert to_typed_proto(f, into=into) is into and len(into.float_val) == f.size


def test_run_when_idle_runs_a_lone_request_at_once_and_gathers_under_load():
    """With run_when_idle a request on an idle batcher does not wait out batch_timeout_micros;
    requests that arrive while a batch runs wait for it and run together."""
    gate, sizes = threading.Event(), []

    def run(x):
        sizes.append(x["x"].shape[0])
        gate.wait(5)
        return {"y": x["x"]}

    b = Batcher(BatchOptions(max_batch_size=8, batch_timeout_micros=2_000_000, num_batch_threads=2, run_when_idle=True))
    gate.set()
    t0 = time.perf_counter()
    b.submit("k", "m", run, {"x": np.zeros((1, 1))}).result(5)
    assert time.perf_counter() - t0 < 1.0  # not the 2 s timeout
    gate.clear()
    first = []
    t = threading.Thread(target=lambda: first.append(b.submit("k", "m", run, {"x": np.zeros((1, 1))})))
    t.start()
    while len(sizes) < 2:
        time.sleep(0.01)
    late = [b.submit("k", "m", run, {"x": np.zeros((1, 1))}) for _ in range(3)]  # a batch runs: these gather
    time.sleep(0.2)
    assert len(sizes) == 2 and not any(f.done() for f in late)  # a free slot, but they wait for the timeout
    gate.set()
    for f in late:
        f.result(5)
    t.join(5)
    b.close()
    assert sizes == [1, 1, 3], sizes


def test_run_when_idle_gathers_as_many_requests_as_the_last_batch_had():
    """Clients answered together come back together: on an idle batcher a queue whose last batch held
    3 requests waits for 3 again (at most batch_timeout_micros), and a lone client's runs at once."""
    gate, sizes = threading.Event(), []

    def run(x):
        sizes.append(x["x"].shape[0])
        gate.wait(5)
        return {"y": x["x"]}

    def submit_in_thread():
        out = []
        t = threading.Thread(target=lambda: out.append(b.submit("k", "m", run, {"x": np.zeros((1, 1))})))
        t.start()
        return t, out

    b = Batcher(BatchOptions(max_batch_size=8, batch_timeout_micros=1_000_000, num_batch_threads=1, run_when_idle=True))
    t, _ = submit_in_thread()  # runs at once, held by the gate
    while not sizes:
        time.sleep(0.01)
    crowd = [b.submit("k", "m", run, {"x": np.zeros((1, 1))}) for _ in range(3)]  # the slot is busy: they queue
    gate.set()
    t.join(5)
    for f in crowd:
        f.result(5)
    assert sizes == [1, 3], sizes

    t0 = time.perf_counter()
    first, out = submit_in_thread()
    time.sleep(0.2)
    assert sizes == [1, 3]  # idle, but one request of the 3 the last batch had: it waits for company
    rest = [b.submit("k", "m", run, {"x": np.zeros((1, 1))}) for _ in range(2)]  # the third runs the batch
    first.join(5)
    for f in [*out, *rest]:
        f.result(5)
    assert sizes == [1, 3, 3] and time.perf_counter() - t0 < 0.9, sizes  # ran with the third, before the timeout

    t0 = time.perf_counter()
    b.submit("k", "m", run, {"x": np.zeros((1, 1))}).result(5)  # alone: waits out the timeout once
    waited = time.perf_counter() - t0
    t0 = time.perf_counter()
    b.submit("k", "m", run, {"x": np.zeros((1, 1))}).result(5)  # the last batch was one request: at once
    assert waited >= 0.9 and time.perf_counter() - t0 < 0.5 and sizes == [1, 3, 3, 1, 1], (waited, sizes)
    b.close()


def test_batch_threads_share_the_cores_out_of_tfs_intra_op_pool():
    from tfcluster.serving.server import intra_op_threads_for_batching

    assert intra_op_threads_for_batching(1, cores=2) == 2
    assert intra_op_threads_for_batching(2, cores=2) == 1
    assert intra_op_threads_for_batching(4, cores=16) == 4
    assert intra_op_threads_for_batching(32, cores=16) == 1  # never 0: that would mean "TF decides"


def test_a_model_on_threads_of_its_own_runs_batches_side_by_side():
    """With num_batch_threads 1 on 2 cores, a model that runs on one intra-op thread (its export's
    session_config.pbtxt) runs two batches at once; a model on the whole pool starts only once they end."""
    gate, lock, now, peak, started = threading.Event(), threading.Lock(), [0], [0], []

    def runner(name):
        def run(x):
            with lock:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
                started.append((name, now[0]))
            gate.wait(5)
            with lock:
                now[0] -= 1
            return {"y": x["x"]}

        return run

    b = Batcher(BatchOptions(max_batch_size=8, num_batch_threads=1), cores=2)
    assert (b.slots(0), b.slots(1), b.slots(2), b.slots(4)) == (1, 2, 1, 1)
    nmt, futs = runner("nmt"), []
    threads = [threading.Thread(target=lambda: futs.append(b.submit("nmt", "nmt", nmt, {"x": np.zeros((1, 1))}, 1)))
               for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while now[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert now[0] == 2, started  # both NMT batches run at once
    dcgan = b.submit("dcgan", "dcgan", runner("dcgan"), {"x": np.zeros((1, 1))})
    time.sleep(0.2)
    assert not dcgan.done()  # the cores are taken: it waits for them
    gate.set()
    assert dcgan.result(5)["y"].shape == (1, 1)
    for t in threads:
        t.join(5)
    b.close()
    assert peak[0] == 2 and started[-1] == ("dcgan", 1), started


def test_a_version_runs_on_the_threads_its_export_asks_for(tmp_path):
    """The contracts' exports write assets.extra/session_config.pbtxt: NMT one intra-op thread, NMT and DCGAN
    their ops on the calling thread (inter-op -1). A server that honours the file gives that version's session those
    settings, keeping its other ones; explicit server flags (model_intra_op / model_inter_op False) win; a
    positive inter-op setting, which a session cannot take for itself, is not taken; a broken file fails the
    load with the file's name."""
    import os

    import tensorflow as tf

    from tfcluster.serving import tiny
    from tfcluster.serving.models import Servable, model_threads

    nmt = tiny.export(tiny.nmt_echo(), str(tmp_path), contract.NMT)
    pg = tiny.export(tiny.pg_policy(0), str(tmp_path), contract.PG)
    dcgan = tiny.export(tiny.dcgan_ramp(z_dim=8, size=4), str(tmp_path), contract.DCGAN)
    assert (model_threads(nmt), model_threads(pg), model_threads(dcgan)) == ((1, -1), (0, 0), (0, -1))
    server = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=3)

    def config(s):
        return s.session._config.intra_op_parallelism_threads, s.session._config.inter_op_parallelism_threads

    own = Servable("nmt", 1, nmt, {"serve"}, server, model_intra_op=True, model_inter_op=True)
    assert (own.intra_op_threads, own.inter_op_threads, config(own)) == (1, -1, (1, -1))
    assert server.intra_op_parallelism_threads == 2  # the server's config is not changed
    out = own.signatures["serving_default"].run({"source": np.array([b"a b c"])})
    assert out["translation"].tolist() == tf.saved_model.load(nmt).signatures["serving_default"](
        source=tf.constant([b"a b c"]))["translation"].numpy().tolist()
    inline = Servable("dcgan", 1, dcgan, {"serve"}, server, model_intra_op=True, model_inter_op=True)
    assert (inline.intra_op_threads, inline.inter_op_threads, config(inline)) == (0, -1, (2, -1))
    z = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    np.testing.assert_array_equal(inline.signatures["serving_default"].run({"z": z})["images"],
                                  tf.saved_model.load(dcgan).signatures["serving_default"](z=tf.constant(z))["images"].numpy())
    for flagged in (Servable("nmt", 1, nmt, {"serve"}, server), Servable("dcgan", 1, dcgan, {"serve"}, server, model_intra_op=True)):
        assert (flagged.intra_op_threads, flagged.inter_op_threads, config(flagged)) == (0, 0, (2, 3))
    assert Servable("pg", 1, pg, {"serve"}, server, model_intra_op=True, model_inter_op=True).intra_op_threads == 0
    os.makedirs(os.path.dirname(os.path.join(pg, contract.SESSION_CONFIG_FILE)), exist_ok=True)
    with open(os.path.join(pg, contract.SESSION_CONFIG_FILE), "w") as f:
        f.write("inter_op_parallelism_threads: 4\n")
    assert config(Servable("pg", 1, pg, {"serve"}, server, model_intra_op=True, model_inter_op=True)) == (2, 3)
    with open(os.path.join(nmt, contract.SESSION_CONFIG_FILE), "w") as f:
        f.write("intra_op_parallelism_threads: many\n")
    with pytest.raises(UserError, match="session_config.pbtxt is not a valid tensorflow.ConfigProto text proto"):
        Servable("nmt", 1, nmt, {"serve"}, server, model_intra_op=True)

