"""`tfcluster serve`: a local model server with `tensorflow_model_server`'s API and flags.

    tfcluster serve --model_name=nmt --model_base_path=models/nmt
    tfcluster serve --model_config_file=serving/models.config --rest_api_port=8501 \\
        --enable_batching --batching_parameters_file=serving/batching.config \\
        --monitoring_config_file=serving/monitoring.config
    python -m tfcluster.serving.server ...                      (the same)

Flags keep TF Serving's names and defaults (`--flag=value`, booleans also bare), so a
command line or a Kubernetes `args:` list runs either server. Two flags are this server's
own: `--bind_address` (TF Serving always binds every interface) and `--drain_seconds`.
gRPC: PredictionService (Predict, GetModelMetadata, Classify, Regress), ModelService
(GetModelStatus, HandleReloadConfigRequest) and grpc.health.v1.Health ('' = the server,
a model name = SERVING once a version is AVAILABLE). REST and Prometheus: see rest.py.
SIGTERM (or Ctrl-C): stop accepting, finish in-flight requests, exit 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures

from tfcluster import contract
from tfcluster.errors import UserError, main_guard

log = logging.getLogger("tfcluster.serving")

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def _bool(v: str) -> bool:
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "t", "y"):
        return True
    if s in ("0", "false", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def parser() -> argparse.ArgumentParser:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(
        prog="tfcluster serve",
        description="Local model server with tensorflow_model_server's gRPC/REST API and flags.",
        allow_abbrev=False,
    )
    a = p.add_argument

    def flag(name: str, default: bool, help_: str) -> None:
        a(name, type=_bool, nargs="?", const=True, default=default, metavar="true|false", help=f"{help_} (default: {str(default).lower()})")

    a("--port", type=int, default=8500, help="gRPC port (default: 8500)")
    a("--grpc_socket_path", default="", help="also listen on this UNIX socket (default: none)")
    a("--rest_api_port", type=int, default=0, help="HTTP/REST port; 0 = off (default: 0)")
    a("--rest_api_num_threads", type=int, default=4 * cores, help="accepted for compatibility; REST runs a thread per request")
    a("--rest_api_timeout_in_ms", type=int, default=30000, help="REST request timeout in ms (default: 30000)")
    flag("--enable_batching", False, "batch requests server-side")
    flag("--allow_version_labels_for_unavailable_models", False, "allow new labels on versions not yet loaded")
    flag("--batching_run_when_idle", True,
         "with batching, an idle server runs a queue once it holds as many requests as its last batch (a lone "
         "client's at once) instead of waiting out batch_timeout_micros")
    a("--batching_parameters_file", default="", help="BatchingParameters text proto (default: TF Serving's defaults)")
    a("--model_config_file", default="", help="ModelServerConfig text proto: models, version policies, labels")
    a("--model_config_file_poll_wait_seconds", type=int, default=0, help="re-read --model_config_file this often; 0 = never (default: 0)")
    a("--model_name", default="default", help="model name when --model_config_file is not given (default: default)")
    a("--model_base_path", default="", help="model repository folder <base>/<version>/ for --model_name")
    a("--max_num_load_retries", type=int, default=5, help="retries of a failed load (default: 5)")
    a("--load_retry_interval_micros", type=int, default=60_000_000, help="wait between load retries (default: 60 s)")
    a("--file_system_poll_wait_seconds", type=int, default=1, help="poll the repository this often; 0 = load once (default: 1)")
    a("--tensorflow_intra_op_parallelism", type=int, default=0,
      help="TF intra-op threads for every version; 0 = what a version's assets.extra/session_config.pbtxt asks, else "
           "TF decides, or with --enable_batching cores / num_batch_threads")
    a("--tensorflow_inter_op_parallelism", type=int, default=0, help="TF inter-op threads; 0 = TF decides")
    a("--tensorflow_session_parallelism", type=int, default=0, help="sets both of the above when they are 0")
    a("--ssl_config_file", default="", help="SSLConfig text proto (server_key, server_cert, custom_ca, client_verify)")
    a("--saved_model_tags", default="serve", help="comma-separated MetaGraphDef tags (default: serve)")
    a("--grpc_channel_arguments", default="", help="comma-separated gRPC server arguments key=value")
    a("--grpc_max_threads", type=int, default=max(64, 4 * cores),
      help="gRPC worker threads: each request in flight holds one while it waits for its batch, so this bounds how "
           f"many requests can share a batch (default: max(64, 4 x cores) = {max(64, 4 * cores)})")
    flag("--enable_signature_method_name_check", False,
         "Classify/Regress/MultiInference only on signatures whose method_name says so (TF2 signatures all say predict)")
    flag("--enable_model_warmup", True, "replay assets.extra/tf_serving_warmup_requests before a version serves")
    a("--num_request_iterations_for_warmup", type=int, default=1, help="replays of each warmup record (default: 1)")
    a("--monitoring_config_file", default="", help="MonitoringConfig text proto (Prometheus on the REST port)")
    a("--bind_address", default="0.0.0.0", help="[tfcluster] interface for gRPC and REST (default: 0.0.0.0)")
    a("--drain_seconds", type=float, default=30.0, help="[tfcluster] on SIGTERM, wait this long for in-flight requests (default: 30)")
    a("--version", action="store_true", help="print the version and exit")
    return p


def intra_op_threads_for_batching(num_batch_threads: int, cores: int | None = None) -> int:
    """With batching and no --tensorflow_intra_op_parallelism: the cores shared out among the batch threads,
    so batches running side by side do not put num_batch_threads x cores threads on the cores. On the NMT
    preset export (2 cores, 2 batch threads) 1 thread each instead of TF's 2 serves 16 clients at 84-93% of
    the in-process batch-16 rate instead of 52-88% (bench/serving.py)."""
    return max(1, (cores or os.cpu_count() or 1) // num_batch_threads)


OWN_POOLS_ENV = "TF_OVERRIDE_GLOBAL_THREADPOOL"


def flag_intra_op_threads(args) -> int:
    """The intra-op threads the command line sets for every version; 0 = none set."""
    return args.tensorflow_intra_op_parallelism or args.tensorflow_session_parallelism


def flag_inter_op_threads(args) -> int:
    """The inter-op threads the command line sets for every version; 0 = none set."""
    return args.tensorflow_inter_op_parallelism or args.tensorflow_session_parallelism


def own_pools() -> bool:
    """Whether each TF session in this process owns its intra-op pool: TF's TF_OVERRIDE_GLOBAL_THREADPOOL
    (read once, when TF makes its first device). Otherwise one pool, sized by the first session, serves all."""
    return os.environ.get(OWN_POOLS_ENV, "").strip().lower() in ("1", "true")


def models_asking_for_threads(cfg) -> list[str]:
    """Names of the configured models with a version whose assets.extra/session_config.pbtxt names its own
    intra-op threads (a beam-search decoder runs fastest on one). Only then does the server give each
    session a pool of its own: TF takes that switch once, for the whole process."""
    from tfcluster import storage
    from tfcluster.serving.models import model_threads

    names = []
    for mc in cfg.model_config_list.config:
        try:
            versions = [v for v in storage.listdir(mc.base_path) if v.isdigit()]
            if any(model_threads(storage.join(mc.base_path, v))[0] for v in versions):
                names.append(mc.name)
        except Exception:  # noqa: BLE001 - an unreadable base path or file fails later, with the load's own message
            continue
    return names


def model_server_config(args):
    """The ModelServerConfig from --model_config_file or --model_name/--model_base_path."""
    from tensorflow_serving.config import model_server_config_pb2

    from tfcluster.serving import protos

    if args.model_config_file:
        cfg = protos.parse_text(args.model_config_file, model_server_config_pb2.ModelServerConfig, "--model_config_file")
    elif args.model_base_path:
        cfg = model_server_config_pb2.ModelServerConfig()
        cfg.model_config_list.config.add(name=args.model_name, base_path=args.model_base_path, model_platform="tensorflow")
    else:
        raise UserError("give --model_base_path (with --model_name) or --model_config_file")
    from tfcluster import storage

    for mc in cfg.model_config_list.config:
        if "://" not in mc.base_path:
            mc.base_path = os.path.abspath(mc.base_path)
        # A bucket: refused credentials, an unreachable endpoint or a missing bucket are one line now, not a
        # silent poll; an empty prefix is fine (versions appear there when a job exports).
        elif storage.info(mc.base_path) is None and (cause := storage.missing_cause(mc.base_path)).startswith("the bucket"):
            raise UserError(f"model {mc.name}: base path {storage.display(mc.base_path)}: {cause}")
    return cfg


def _channel_args(text: str) -> list[tuple[str, object]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise UserError(f"--grpc_channel_arguments: {item!r} is not key=value")
        k, v = item.split("=", 1)
        out.append((k.strip(), int(v) if v.strip().lstrip("-").isdigit() else v.strip()))
    return out


def _server_credentials(path: str):
    import grpc

    from tfcluster.serving import protos

    c = protos.parse_text(path, protos.SSLConfig, "--ssl_config_file")
    return grpc.ssl_server_credentials(
        [(c.server_key.encode(), c.server_cert.encode())],
        root_certificates=c.custom_ca.encode() or None,
        require_client_auth=c.client_verify,
    )


class ModelServer:
    """The running server: model manager, gRPC, REST, pollers. `stop()` drains."""

    def __init__(self, args, cfg=None):
        import grpc
        import tensorflow as tf

        from tfcluster.serving import protos
        from tfcluster.serving.batching import BatchOptions, Batcher
        from tfcluster.serving.metrics import Metrics
        from tfcluster.serving.models import ModelManager, Options
        from tfcluster.serving.rest import RestServer
        from tfcluster.serving.service import Core, add_services

        self.args = args
        cfg = cfg or model_server_config(args)
        batch_opts = None
        if args.enable_batching:
            params = (
                protos.parse_text(args.batching_parameters_file, protos.BatchingParameters, "--batching_parameters_file")
                if args.batching_parameters_file
                else protos.BatchingParameters()
            )
            batch_opts = dataclasses.replace(BatchOptions.from_proto(params), run_when_idle=args.batching_run_when_idle)
        intra = flag_intra_op_threads(args)
        inter = flag_inter_op_threads(args)
        if batch_opts and not intra:
            # batches run side by side on num_batch_threads threads: each gets its share of the cores, as
            # TF's thread pools would otherwise put cores x num_batch_threads threads on the cores
            intra = intra_op_threads_for_batching(batch_opts.num_batch_threads)
            log.info("Batching: %d batch threads, %d intra-op threads (--tensorflow_intra_op_parallelism to change)",
                     batch_opts.num_batch_threads, intra)
        try:
            if intra:
                tf.config.threading.set_intra_op_parallelism_threads(intra)
            if inter:
                tf.config.threading.set_inter_op_parallelism_threads(inter)
        except RuntimeError as e:  # a server made in a process whose TensorFlow already runs
            log.warning("TensorFlow's thread pools stay as they are: %s", e)
        monitoring_path = None
        if args.monitoring_config_file:
            mc = protos.parse_text(args.monitoring_config_file, protos.MonitoringConfig, "--monitoring_config_file")
            if mc.prometheus_config.enable:
                monitoring_path = mc.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
                if not args.rest_api_port:
                    log.warning("--monitoring_config_file enables Prometheus, but --rest_api_port is 0: no endpoint")

        self.metrics = Metrics()
        self.batcher = Batcher(batch_opts, on_batch=lambda label, n: self.metrics.batch_size.observe(n, label.split()[1])) if batch_opts else None
        opts = Options(
            tags=set(t.strip() for t in args.saved_model_tags.split(",") if t.strip()),
            session_config=tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra or 0,
                                                    inter_op_parallelism_threads=inter or 0),
            max_num_load_retries=args.max_num_load_retries,
            load_retry_interval_s=args.load_retry_interval_micros / 1e6,
            allow_labels_for_unavailable=args.allow_version_labels_for_unavailable_models,
            model_intra_op=own_pools() and not flag_intra_op_threads(args),
            model_inter_op=not flag_inter_op_threads(args),
            on_load=lambda name, path, ok: self.metrics.load_attempts.inc(path, "success" if ok else "fail"),
        )
        self.manager = ModelManager(opts)
        self.core = Core(self.manager, self.metrics, self.batcher, check_method_names=args.enable_signature_method_name_check)
        if args.enable_model_warmup:
            opts.warmup = lambda s: self.core.warmup(s, args.num_request_iterations_for_warmup)
        try:
            self.manager.apply_config(cfg)  # initial load, like TF Serving, before the ports open
        except Exception as e:  # noqa: BLE001
            raise UserError(f"model config: {getattr(e, 'message', e)}") from None
        self._config_text = self._read_config_text()

        options = [
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
            *_channel_args(args.grpc_channel_arguments),
        ]
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=args.grpc_max_threads, thread_name_prefix="grpc"), options=options)
        add_services(self.grpc, self.core)
        address = f"{args.bind_address}:{args.port}"
        try:
            if args.ssl_config_file:
                self.port = self.grpc.add_secure_port(address, _server_credentials(args.ssl_config_file))
            else:
                self.port = self.grpc.add_insecure_port(address)
            if args.grpc_socket_path:
                self.grpc.add_insecure_port(f"unix:{args.grpc_socket_path}")
        except RuntimeError as e:
            raise UserError(f"cannot listen on {address} for gRPC ({e}); is the port in use? choose another with --port") from None
        self.rest = None
        if args.rest_api_port:
            try:
                self.rest = RestServer(self.core, args.bind_address, args.rest_api_port, monitoring_path, args.rest_api_timeout_in_ms / 1e3)
            except OSError as e:
                raise UserError(f"cannot listen on {args.bind_address}:{args.rest_api_port} for REST ({e.strerror}); choose another --rest_api_port") from None
        self._stop = threading.Event()

    def _read_config_text(self) -> str | None:
        if not self.args.model_config_file:
            return None
        try:
            with open(self.args.model_config_file) as f:
                return f.read()
        except OSError:
            return None

    def _poll_config(self) -> None:
        every = self.args.model_config_file_poll_wait_seconds
        while not self._stop.wait(every):
            text = self._read_config_text()
            if text is None or text == self._config_text:
                continue
            self._config_text = text
            try:
                self.manager.apply_config(model_server_config(self.args))
                log.info("Applied the changed model config %s", self.args.model_config_file)
            except Exception as e:  # noqa: BLE001 - keep the old config
                log.error("Changed model config %s not applied: %s", self.args.model_config_file, getattr(e, "message", e))

    def start(self) -> None:
        self.grpc.start()
        log.info("Running gRPC ModelServer at %s:%d ...", self.args.bind_address, self.port)
        if self.rest:
            self.rest.start()
            log.info("Exporting HTTP/REST API at:%s:%d ...", self.args.bind_address, self.rest.port)
        self.manager.start_polling(self.args.file_system_poll_wait_seconds)
        if self.args.model_config_file and self.args.model_config_file_poll_wait_seconds > 0:
            threading.Thread(target=self._poll_config, name="config-poll", daemon=True).start()

    def stop(self) -> None:
        """Drain: refuse new requests, finish in-flight ones (up to --drain_seconds), then stop."""
        t0 = time.monotonic()
        self._stop.set()
        self.core.draining.set()
        self.manager.stop()
        done = self.grpc.stop(grace=self.args.drain_seconds)
        if self.rest:
            self.rest.stop()
        done.wait()
        if self.batcher:
            self.batcher.close()
        log.info("Drained and stopped in %.2f s", time.monotonic() - t0)


def _logging() -> None:
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname).1s serving] %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.handlers[:] = [h]
    log.setLevel(logging.INFO)
    log.propagate = False


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.version:
        from tfcluster import __version__

        print(f"tfcluster model server {__version__} (TensorFlow Serving API)")
        return 0
    from tfcluster.storage import require_file

    # checks that need no TensorFlow import come first: a wrong flag fails in a blink
    if not args.model_config_file and not args.model_base_path:
        raise UserError("give --model_base_path (with --model_name) or --model_config_file")
    for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file", "ssl_config_file"):
        if getattr(args, flag):
            require_file(getattr(args, flag), f"--{flag}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _logging()
    cfg = None
    if OWN_POOLS_ENV not in os.environ and not flag_intra_op_threads(args):
        # TensorFlow reads this once, when it makes its first device: before any model loads
        cfg = model_server_config(args)
        asking = models_asking_for_threads(cfg)
        if asking:
            os.environ[OWN_POOLS_ENV] = "1"
            log.info("Each version's session owns its intra-op pool (%s=1): %s ask for threads of their own in %s",
                     OWN_POOLS_ENV, ", ".join(asking), contract.SESSION_CONFIG_FILE)
    stop = threading.Event()
    got = []

    def on_signal(signum, _frame):
        got.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = ModelServer(args, cfg)
    server.start()
    while not stop.wait(3600):
        pass
    log.info("Received %s: draining in-flight requests", got[0] if got else "a signal")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
