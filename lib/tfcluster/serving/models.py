"""Servables and the model manager: what `tensorflow_model_server` does with a model repository.

* `Servable`: one loaded SavedModel version (signature functions + SignatureDefs).
* `ModelManager`: the `ModelServerConfig` (models, version policies, labels), the
  file-system poll that loads new versions and unloads old ones, and the state of every
  version (START, LOADING, AVAILABLE, UNLOADING, END) for `GetModelStatus`.

Loading follows TF Serving's availability-preserving policy: a new version is loaded
before an old one is unloaded, and an old version is unloaded only once an aspired version
is AVAILABLE, so a corrupt or half-written new folder leaves the previous version serving.
A version that failed to load is retried when its folder's contents change (a copy that
was still in progress) and otherwise up to `--max_num_load_retries` times, every
`--load_retry_interval_micros`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import grpc
import numpy as np

from tfcluster import contract
from tfcluster.serving.tensors import Failure, check_inputs, invalid, not_found

log = logging.getLogger("tfcluster.serving")

_VERSION_DIR = re.compile(r"^\d+$")
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# ModelVersionStatus.State numbers (tensorflow_serving/apis/get_model_status.proto)
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50
STATE_NAMES = {0: "UNKNOWN", START: "START", LOADING: "LOADING", AVAILABLE: "AVAILABLE", UNLOADING: "UNLOADING", END: "END"}


@dataclass(frozen=True)
class Signature:
    """A signature of a loaded version: its runner, spec (contract types) and method."""

    name: str
    fn: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
    method_name: str
    inputs: dict[str, contract.Tensor]
    outputs: dict[str, contract.Tensor]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.fn(inputs)


def _tensor(key: str, info) -> contract.Tensor:
    import tensorflow as tf

    shape = None if info.tensor_shape.unknown_rank else tuple(None if d.size < 0 else d.size for d in info.tensor_shape.dim)
    return contract.Tensor(key, tf.as_dtype(info.dtype).name, shape)


def read_meta_graph(path: str, tags: set[str]):
    """The MetaGraphDef of the SavedModel at `path` whose tags match (SignatureDefs for metadata)."""
    import tensorflow as tf
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    pb, pbtxt = os.path.join(path, "saved_model.pb"), os.path.join(path, "saved_model.pbtxt")
    if tf.io.gfile.exists(pb):
        with tf.io.gfile.GFile(pb, "rb") as f:
            sm.ParseFromString(f.read())
    elif tf.io.gfile.exists(pbtxt):
        with tf.io.gfile.GFile(pbtxt) as f:
            text_format.Parse(f.read(), sm)
    else:
        raise ValueError(f"SavedModel file does not exist at: {path}/{{saved_model.pbtxt|saved_model.pb}}")
    for mg in sm.meta_graphs:
        if set(mg.meta_info_def.tags) == tags:
            return mg
    found = [sorted(mg.meta_info_def.tags) for mg in sm.meta_graphs]
    raise ValueError(f"no MetaGraphDef with tags {sorted(tags)} in {path} (found {found}); see --saved_model_tags")


# Libraries of custom ops a SavedModel may use, imported (which registers their kernels) when a graph needs an op
# TensorFlow does not have: the stock tensorflow_model_server links tensorflow-text's ops in the same way.
OP_LIBRARIES = ("tensorflow_text",)


def register_ops(meta_graph, path: str) -> None:
    """Make every op of the MetaGraphDef runnable, importing op libraries on demand; a one-line error naming the
    missing ops otherwise."""
    import importlib

    from tensorflow.python.framework import op_def_registry

    def missing():
        return sorted({op.name for op in meta_graph.meta_info_def.stripped_op_list.op if op_def_registry.get(op.name) is None})

    for lib in OP_LIBRARIES:
        if not missing():
            return
        try:
            importlib.import_module(lib)
        except ImportError:
            continue
    if missing():
        raise ValueError(f"{path} uses ops this server does not have: {', '.join(missing())}")


def is_internal(signature_key: str) -> bool:
    """Signatures TF Serving neither lists nor runs (`__saved_model_init_op`, the TF2 init signature)."""
    return signature_key.startswith("__saved_model")


def model_threads(path: str) -> tuple[int, int]:
    """(intra-op, inter-op) threads a SavedModel (a local folder or a bucket URI) asks for in
    `assets.extra/session_config.pbtxt` (a ConfigProto text proto, written by the workloads' exports);
    (0, 0) when it has none. Inter-op -1: every op on the calling thread. A bad file fails the load."""
    import tensorflow as tf

    from tfcluster import storage
    from tfcluster.serving import protos

    f = storage.join(path, contract.SESSION_CONFIG_FILE)
    if not storage.exists(f):
        return 0, 0
    cfg = protos.parse_text(f, tf.compat.v1.ConfigProto, contract.SESSION_CONFIG_FILE)
    if cfg.intra_op_parallelism_threads < 0:
        raise ValueError(f"{contract.SESSION_CONFIG_FILE}: intra_op_parallelism_threads must be >= 0")
    return cfg.intra_op_parallelism_threads, cfg.inter_op_parallelism_threads


class Servable:
    """One loaded version of a model, run the way `tensorflow_model_server` runs it.

    The SavedModel is loaded into a session (the MetaGraphDef, its init/restore ops, its
    SignatureDefs), as TF Serving's SavedModelBundle does, for TF1 and TF2 SavedModels
    alike; a request feeds each input tensor in place of the signature's placeholder and
    fetches the signature's outputs. The signature's declared shapes are not enforced
    here: what the graph accepts is served, and what it rejects comes back as the graph's
    own error (INVALID_ARGUMENT for a bad shape). A model whose graph reads a variable
    its checkpoint does not restore fails here as it would in TF Serving.
    """

    def __init__(self, name: str, version: int, path: str, tags: set[str], session_config=None,
                 model_intra_op: bool = False, model_inter_op: bool = False):
        import tensorflow as tf

        self.name, self.version, self.path = name, version, path
        # the threads this version asked for in its assets.extra/session_config.pbtxt, where the server takes
        # them (model_intra_op, model_inter_op); 0: none asked, or the server's setting rules. Of inter-op
        # settings a session takes only -1 for itself (its runs on the calling thread): a positive one sizes
        # the process's one pool, in the first session only, so it is not taken from a model.
        intra, inter = model_threads(path) if model_intra_op or model_inter_op else (0, 0)
        self.intra_op_threads = intra if model_intra_op else 0
        self.inter_op_threads = inter if model_inter_op and inter < 0 else 0
        if self.intra_op_threads or self.inter_op_threads:
            own = tf.compat.v1.ConfigProto()
            if session_config is not None:
                own.CopyFrom(session_config)
            own.intra_op_parallelism_threads = self.intra_op_threads or own.intra_op_parallelism_threads
            own.inter_op_parallelism_threads = self.inter_op_threads or own.inter_op_parallelism_threads
            session_config = own
        self.meta_graph = read_meta_graph(path, tags)
        register_ops(self.meta_graph, path)
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=session_config)
        from tensorflow.python.saved_model import loader_impl  # tf.compat.v1.saved_model.load, without its deprecation notice

        with self.graph.as_default():
            loader_impl.SavedModelLoader(path).load(self.session, sorted(tags))
        self.session._extend_graph()  # the callables below run the graph as loaded
        self.signatures: dict[str, Signature] = {}
        for key, sdef in self.meta_graph.signature_def.items():
            if is_internal(key):
                continue
            infos = list(sdef.inputs.values()) + list(sdef.outputs.values())
            if any(i.WhichOneof("encoding") != "name" for i in infos):
                log.warning("signature %s of %s uses sparse or composite tensors; it is not served", key, path)
                continue
            self.signatures[key] = Signature(
                key, self._runner(sdef), sdef.method_name,
                {k: _tensor(k, v) for k, v in sdef.inputs.items()},
                {k: _tensor(k, v) for k, v in sdef.outputs.items()},
            )

    def _runner(self, sdef) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
        feeds = {k: self.graph.get_tensor_by_name(v.name)._as_tf_output() for k, v in sdef.inputs.items()}
        keys = list(sdef.outputs)
        fetches = [self.graph.get_tensor_by_name(sdef.outputs[k].name)._as_tf_output() for k in keys]
        session = self.session

        def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            # The session's own feed path (TF_SessionRun): no Python-side check of the
            # placeholder's declared shape, as in TF Serving's Session::Run.
            values = session._call_tf_sessionrun(None, {feeds[k]: v for k, v in inputs.items()}, fetches, [], None)
            return dict(zip(keys, values))

        return run

    @property
    def label(self) -> str:
        return f"{{name: {self.name} version: {self.version}}}"

    def signature(self, name: str) -> Signature:
        name = name or contract.DEFAULT_SIGNATURE
        sig = self.signatures.get(name)
        if sig is None:
            raise Failure(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{name}" not found. Model {self.name} version {self.version} has the '
                f"signatures: {', '.join(sorted(self.signatures)) or '(none)'}.",
            )
        return sig

    def check(self, sig: Signature, inputs: Mapping[str, np.ndarray]) -> None:
        check_inputs(f"model {self.name} version {self.version} signature {sig.name}", inputs, sig.inputs)

    def signature_def_map(self):
        from tensorflow_serving.apis import get_model_metadata_pb2

        m = get_model_metadata_pb2.SignatureDefMap()
        for k, v in self.meta_graph.signature_def.items():
            if not is_internal(k):
                m.signature_def[k].CopyFrom(v)
        return m


@dataclass
class VersionState:
    version: int
    path: str
    state: int = START
    error: tuple[grpc.StatusCode, str] | None = None
    servable: Servable | None = None
    fingerprint: str = ""
    attempts: int = 0
    last_attempt: float = 0.0


@dataclass
class Model:
    config: object  # tensorflow.serving.ModelConfig
    versions: dict[int, VersionState] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    warned_empty: bool = False


def aspired_versions(on_disk: list[int], policy) -> list[int]:
    """The versions a ServableVersionPolicy wants loaded, out of those on disk (ascending)."""
    kind = policy.WhichOneof("policy_choice") if policy is not None else None
    if kind == "all":
        return sorted(on_disk)
    if kind == "specific":
        return sorted(set(on_disk) & set(policy.specific.versions))
    n = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions > 0 else 1
    return sorted(on_disk)[-n:]


def fingerprint(path: str) -> str:
    """A digest of the names, sizes and mtimes of the files under `path` (detects a copy in progress)."""
    import tensorflow as tf

    from tfcluster import storage

    h = hashlib.sha1()
    if storage.is_uri(path):
        try:
            h.update(repr(storage.walk_files(path)).encode())
        except Exception as e:  # noqa: BLE001 - the bucket is unreachable for now
            h.update(repr(e).encode())
        return h.hexdigest()
    try:
        for root, _dirs, files in tf.io.gfile.walk(path):
            for f in sorted(files):
                st = tf.io.gfile.stat(os.path.join(root, f))
                h.update(f"{os.path.relpath(os.path.join(root, f), path)}:{st.length}:{st.mtime_nsec}\n".encode())
    except Exception as e:  # noqa: BLE001 - the folder vanished or is unreadable
        h.update(repr(e).encode())
    return h.hexdigest()


@dataclass
class Options:
    tags: set[str] = field(default_factory=lambda: {"serve"})
    max_num_load_retries: int = 5
    load_retry_interval_s: float = 60.0
    allow_labels_for_unavailable: bool = False
    warmup: Callable[[Servable], None] | None = None
    on_load: Callable[[str, str, bool], None] | None = None  # (model, path, ok)
    keep_history: int = 16
    session_config: object = None  # tf.compat.v1.ConfigProto for each version's session (thread pools)
    # a version's assets.extra/session_config.pbtxt sets its session's intra-op threads (each session owns
    # its pool only where TF_OVERRIDE_GLOBAL_THREADPOOL=1 was set before TensorFlow started: `tfcluster serve`)
    model_intra_op: bool = False
    # ... and its inter-op threads (-1: its runs on the calling thread), unless the server's flags set them
    model_inter_op: bool = False


class ModelManager:
    """Models from a ModelServerConfig, their versions on disk and in memory."""

    def __init__(self, options: Options):
        self.opts = options
        self.models: dict[str, Model] = {}
        self._lock = threading.RLock()  # guards models/versions/labels (never held while loading)
        self._poll_lock = threading.Lock()  # one reconcile at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- configuration -------------------------------------------------------------------
    def apply_config(self, cfg) -> None:
        """Adopt a ModelServerConfig: add/remove models, load/unload versions, set labels.

        Raises Failure (and changes nothing) when the config is invalid.
        """
        if cfg.WhichOneof("config") != "model_config_list":
            raise invalid("only model_config_list is supported in a ModelServerConfig")
        seen = set()
        for mc in cfg.model_config_list.config:
            if not mc.name:
                raise invalid("a model in the config has no name")
            if mc.name in seen:
                raise invalid(f"model {mc.name!r} appears twice in the config")
            seen.add(mc.name)
            if not mc.base_path:
                raise invalid(f"model {mc.name!r} has no base_path")
            if mc.model_platform not in ("", "tensorflow"):
                raise invalid(f"model {mc.name!r}: model_platform {mc.model_platform!r} is not supported (tensorflow)")
        with self._poll_lock:
            with self._lock:
                old = self.models
                new: dict[str, Model] = {}
                for mc in cfg.model_config_list.config:
                    m = old.get(mc.name)
                    if m is not None and m.config.base_path != mc.base_path:
                        m = None  # a new repository: start over
                    new[mc.name] = m or Model(config=mc)
                    new[mc.name].config = mc
                removed = [m for n, m in old.items() if n not in new or new[n] is not m]
                self.models = new
            for m in removed:
                for vs in list(m.versions.values()):
                    self._unload(m, vs)
            self._reconcile_all()
            self._set_labels(cfg)

    def _set_labels(self, cfg) -> None:
        with self._lock:
            new_labels = {}
            for mc in cfg.model_config_list.config:
                m = self.models[mc.name]
                labels = new_labels[mc.name] = dict(mc.version_labels)
                for label, v in labels.items():
                    vs = m.versions.get(v)
                    available = vs is not None and vs.state == AVAILABLE
                    if not available and not (self.opts.allow_labels_for_unavailable and m.labels.get(label) is None):
                        raise Failure(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"Request to assign label to version {v} of model {mc.name}, which is not currently "
                            f"available for inference (available: {self.available_versions(mc.name)})",
                        )
            for name, labels in new_labels.items():
                self.models[name].labels = labels

    # ---- polling -------------------------------------------------------------------------
    def start_polling(self, every_s: float) -> None:
        if every_s <= 0:
            return

        def loop():
            while not self._stop.wait(every_s):
                try:
                    with self._poll_lock:
                        self._reconcile_all()
                except Exception:  # noqa: BLE001 - keep polling whatever happens
                    log.exception("file-system poll failed")

        self._thread = threading.Thread(target=loop, name="fs-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _reconcile_all(self) -> None:
        with self._lock:
            models = list(self.models.items())
        for name, m in models:
            if self._stop.is_set():
                return
            self._reconcile(name, m)

    def _on_disk(self, m: Model) -> dict[int, str]:
        """Version -> its folder's path. As TF Serving reads a base path: every child folder whose
        name parses as a non-negative integer (`123`, `00000123`) is that version. In a bucket
        (s3://, gs://) a version counts once its SavedModel file is there (exports upload it last)."""
        from tfcluster import storage

        base = m.config.base_path
        try:
            entries = storage.listdir(base)
        except Exception as e:  # noqa: BLE001 - unreachable bucket: keep serving what is loaded
            if storage.is_uri(base):
                log.warning("Cannot list %s: %s", storage.display(base), e)
                return {vs.version: vs.path for vs in m.versions.values() if vs.state == AVAILABLE}
            entries = []
        found: dict[int, str] = {}
        for e in entries:
            if _VERSION_DIR.match(e):
                path = storage.join(base, e)
                if storage.is_uri(base) and int(e) not in m.versions and not storage.is_complete_version(path):
                    continue  # still uploading
                found.setdefault(int(e), path)  # "0123" and "123": the first in name order
        if not found and not m.warned_empty:
            log.warning("No versions of servable %s found under base path %s", m.config.name, base)
        m.warned_empty = not found
        return found

    def _reconcile(self, name: str, m: Model) -> None:
        folders = self._on_disk(m)
        on_disk = sorted(folders)
        aspired = aspired_versions(on_disk, m.config.model_version_policy if m.config.HasField("model_version_policy") else None)
        now = time.monotonic()
        for v in sorted(aspired, reverse=True):  # newest first
            vs = m.versions.get(v)
            path = folders[v]
            if vs is None or vs.state == END and vs.error is None:  # new (or unloaded earlier, aspired again)
                vs = VersionState(v, path)
                with self._lock:
                    m.versions[v] = vs
                self._load(m, vs)
            elif vs.state == END and vs.error is not None:
                fp = fingerprint(path)
                changed = fp != vs.fingerprint
                due = vs.attempts <= self.opts.max_num_load_retries and now - vs.last_attempt >= self.opts.load_retry_interval_s
                if changed or due:
                    if changed:
                        vs.attempts = 0
                    self._load(m, vs)
        with self._lock:
            any_aspired_available = any(m.versions.get(v) and m.versions[v].state == AVAILABLE for v in aspired)
            to_unload = [
                vs for v, vs in m.versions.items()
                if vs.state == AVAILABLE and v not in aspired and (any_aspired_available or not on_disk)
            ]
        for vs in to_unload:
            self._unload(m, vs)
        with self._lock:  # forget old END records beyond the history size
            ended = sorted(v for v, vs in m.versions.items() if vs.state == END and v not in aspired)
            for v in ended[: max(0, len(ended) - self.opts.keep_history)]:
                del m.versions[v]

    def _load(self, m: Model, vs: VersionState) -> None:
        from tfcluster import storage

        name = m.config.name
        vs.state, vs.error = LOADING, None
        vs.attempts += 1
        vs.last_attempt = time.monotonic()
        vs.fingerprint = fingerprint(vs.path)
        t0 = time.monotonic()
        log.info("Loading servable version {name: %s version: %d} from %s", name, vs.version, vs.path)
        try:
            # A version in a bucket is loaded from its node-cache copy (TensorFlow reads no s3://).
            servable = Servable(name, vs.version, storage.local_tree(vs.path), self.opts.tags, self.opts.session_config,
                                 self.opts.model_intra_op, self.opts.model_inter_op)
            if self.opts.warmup is not None:
                self.opts.warmup(servable)
        except Exception as e:  # noqa: BLE001 - any failure leaves the previous version serving
            msg = " ".join(str(e).split()) or type(e).__name__
            with self._lock:
                vs.state, vs.error = END, (grpc.StatusCode.UNKNOWN, msg)
                serving = self.available_versions(name)
            log.error(
                "Loading servable {name: %s version: %d} failed (attempt %d): %s%s", name, vs.version, vs.attempts, msg,
                f" -- version(s) {serving} keep serving" if serving else "",
            )
            if self.opts.on_load:
                self.opts.on_load(name, vs.path, False)
            return
        with self._lock:
            vs.servable, vs.state = servable, AVAILABLE
        asked = [f"{servable.intra_op_threads} intra-op thread(s)"] if servable.intra_op_threads else []
        if servable.inter_op_threads:
            asked.append("its ops on the calling thread")
        log.info("Successfully loaded servable version {name: %s version: %d} in %.2f s%s", name, vs.version, time.monotonic() - t0,
                 f", with {' and '.join(asked)} as its {contract.SESSION_CONFIG_FILE} asks" if asked else "")
        if self.opts.on_load:
            self.opts.on_load(name, vs.path, True)

    def _unload(self, m: Model, vs: VersionState) -> None:
        with self._lock:
            if vs.state != AVAILABLE:
                if vs.state != END:
                    vs.state = END
                return
            vs.state = UNLOADING
        log.info("Unloading servable version {name: %s version: %d}", m.config.name, vs.version)
        with self._lock:
            vs.servable, vs.state = None, END  # in-flight requests hold their own reference
        log.info("Done unloading servable version {name: %s version: %d}", m.config.name, vs.version)

    # ---- lookups -------------------------------------------------------------------------
    def available_versions(self, name: str) -> list[int]:
        with self._lock:
            m = self.models.get(name)
            return sorted(v for v, vs in m.versions.items() if vs.state == AVAILABLE) if m else []

    def _model(self, name: str, request: str) -> Model:
        if not name:
            raise invalid("the request's ModelSpec has no model name")
        m = self.models.get(name)
        if m is None:
            raise not_found(
                f"Servable not found for request: {request}; model {name!r} is not served here "
                f"(models: {', '.join(sorted(self.models)) or 'none'})"
            )
        return m

    def resolve(self, spec) -> Servable:
        """The servable a ModelSpec (name + version or version_label) asks for, else NOT_FOUND."""
        name = spec.name
        with self._lock:
            kind = spec.WhichOneof("version_choice")
            if kind == "version":
                v = spec.version.value
                m = self._model(name, f"Specific({name}, {v})")
            elif kind == "version_label":
                m = self._model(name, f"Labeled({name}, {spec.version_label})")
                if spec.version_label not in m.labels:
                    raise not_found(
                        f"Unrecognized servable version label: {spec.version_label} for model {name} "
                        f"(labels: {', '.join(f'{k}={v}' for k, v in sorted(m.labels.items())) or 'none'})"
                    )
                v = m.labels[spec.version_label]
            else:
                m = self._model(name, f"Latest({name})")
                avail = [v for v, vs in m.versions.items() if vs.state == AVAILABLE]
                if not avail:
                    raise not_found(f"Servable not found for request: Latest({name}); no version of {name} is available yet")
                v = max(avail)
            vs = m.versions.get(v)
            if vs is None or vs.state != AVAILABLE or vs.servable is None:
                raise not_found(
                    f"Servable not found for request: Specific({name}, {v}); available versions of {name}: "
                    f"{self.available_versions(name) or 'none'}"
                )
            return vs.servable

    def status(self, spec) -> list[VersionState]:
        """Version states for GetModelStatus: one version (or label) or all of them."""
        name = spec.name
        with self._lock:
            m = self._model(name, f"Latest({name})")
            kind = spec.WhichOneof("version_choice")
            if kind == "version_label":
                if spec.version_label not in m.labels:
                    raise not_found(f"Unrecognized servable version label: {spec.version_label} for model {name}")
                wanted = m.labels[spec.version_label]
            elif kind == "version":
                wanted = spec.version.value
            else:
                wanted = None
            states = [vs for v, vs in sorted(m.versions.items()) if wanted is None or v == wanted]
            if not states:
                what = f"version {wanted} of model {name}" if wanted is not None else f"any versions of model {name}"
                raise not_found(f"Could not find {what}")
            return [VersionState(vs.version, vs.path, vs.state, vs.error) for vs in states]

    def any_available(self, name: str | None = None) -> bool:
        with self._lock:
            names = [name] if name else list(self.models)
            return any(self.available_versions(n) for n in names if n in self.models)
