"""Local paths and object storage (s3://, gs://) behind one set of calls, through `pyarrow.fs`.

TensorFlow 2.21 has no s3:// file system (tensorflow-io, which added one, stopped at TF 2.16),
and TF Serving lost its own in 2.7. So TensorFlow never reads a bucket here: a remote object is
fetched once into a node-local cache (`local_copy`, `local_tree`) and TensorFlow reads the copy.

* **URIs.** `s3://bucket/key` takes its endpoint, credentials and region from the standard AWS
  environment variables, as boto3 and the AWS CLI read them (`AWS_ENDPOINT_URL_S3` or
  `AWS_ENDPOINT_URL` for MinIO or a stand-in, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
  `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`, else `~/.aws` and workload identity).
  A URI with a query (`?endpoint_override=...`) or inline keys goes to pyarrow's own
  `FileSystem.from_uri`, as Ray Train's storage reads it. `gs://` uses pyarrow's GCS client
  (`GOOGLE_APPLICATION_CREDENTIALS`, workload identity; `STORAGE_EMULATOR_HOST` for an emulator).
* **The node cache** (`TFCLUSTER_CACHE_DIR`, default `~/.cache/tfcluster/objects`) keys each
  object by its URI, size and modification time: a restarted worker and later epochs read the
  cache, a changed object is fetched again. An entry is written under a temporary name and
  renamed, under a file lock, so concurrent workers on one node fetch it once and no reader
  ever sees half an object.
* **Errors** (missing bucket or object, refused credentials, unreachable endpoint) become one
  `UserError` line naming the URI and the cause; connection and request time-outs are short
  (seconds), so a bad endpoint fails fast instead of hanging.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import shutil
import threading
import uuid
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from tfcluster.errors import UserError

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 20.0
MAX_ATTEMPTS = 3
# Environment variables a Ray worker needs to reach the same buckets as the driver.
ENV_VARS = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_EC2_METADATA_DISABLED", "GOOGLE_APPLICATION_CREDENTIALS",
    "STORAGE_EMULATOR_HOST", "TFCLUSTER_CACHE_DIR",
)
# Files that make a folder a SavedModel: uploaded last, so a version is complete once one is there.
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_SECRET_KEYS = {"secret_key", "access_key", "session_token"}


def is_uri(path: str) -> bool:
    """Whether `path` names object storage (or any file system URI) rather than a local path."""
    return "://" in path and not path.startswith("file://")


def join(uri_or_path: str, *parts: str) -> str:
    """`os.path.join` for a local path or a URI whose query (`?endpoint_override=...`) stays at the end."""
    base, sep, query = uri_or_path.partition("?")
    if not is_uri(base):
        return os.path.join(uri_or_path, *parts)
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)]) + sep + query


def basename(uri_or_path: str) -> str:
    return os.path.basename(uri_or_path.partition("?")[0].rstrip("/"))


def display(uri: str) -> str:
    """`uri` without credentials (inline keys, secret query values), for messages and logs."""
    p = urlparse(uri)
    netloc = p.hostname or p.netloc.rpartition("@")[2]
    query = urlencode([(k, "***" if k in _SECRET_KEYS else v) for k, v in parse_qsl(p.query)])
    return urlunparse(p._replace(netloc=netloc, query=query))


# ---------------------------------------------------------------------------- file systems


_fs_cache: dict[tuple, Any] = {}
_fs_lock = threading.Lock()


def _aws_endpoint() -> tuple[str, str] | None:
    """(host:port, scheme) from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, as the AWS CLI reads them."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return None
    p = urlparse(url if "://" in url else f"https://{url}")
    return p.netloc, p.scheme or "https"


def _s3_from_env():
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = dict(connect_timeout=CONNECT_TIMEOUT_S, request_timeout=REQUEST_TIMEOUT_S,
                                  retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS))
    endpoint = _aws_endpoint()
    if endpoint:
        kwargs["endpoint_override"], kwargs["scheme"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ("us-east-1" if endpoint else "")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def _gcs_from_env():
    import datetime

    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = dict(retry_time_limit=datetime.timedelta(seconds=REQUEST_TIMEOUT_S))
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        p = urlparse(emulator if "://" in emulator else f"http://{emulator}")
        kwargs.update(endpoint_override=p.netloc, scheme=p.scheme, anonymous=True)
    return pafs.GcsFileSystem(**kwargs)


def filesystem(uri_or_path: str) -> tuple[Any, str]:
    """(pyarrow file system, path inside it) of a local path or a URI."""
    import pyarrow.fs as pafs

    if not is_uri(uri_or_path):
        path = uri_or_path[len("file://"):] if uri_or_path.startswith("file://") else uri_or_path
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    p = urlparse(uri_or_path)
    scheme = p.scheme.lower()
    if scheme in ("s3", "gs", "gcs") and not p.query and "@" not in p.netloc:
        env = (scheme, *(os.environ.get(k, "") for k in ENV_VARS))
        with _fs_lock:
            fs = _fs_cache.get(env)
            if fs is None:
                try:
                    fs = _fs_cache[env] = _s3_from_env() if scheme == "s3" else _gcs_from_env()
                except Exception as e:  # noqa: BLE001 - pyarrow raises OSError/ArrowException alike
                    raise UserError(f"{display(uri_or_path)}: {_cause(e)}") from None
        return fs, f"{p.netloc}{p.path}".rstrip("/")
    try:
        return pafs.FileSystem.from_uri(uri_or_path)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{display(uri_or_path)}: {_cause(e)}") from None


def _cause(e: BaseException) -> str:
    """The first informative line of a pyarrow/AWS error, with a hint for the common causes."""
    text = " ".join(str(e).split()) or type(e).__name__
    low = text.lower()
    hints = (
        (("nosuchbucket", "bucket does not exist", "the specified bucket does not exist"), "the bucket does not exist"),
        (("access_denied", "accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "forbidden", "http 403",
          "response code 403"), "access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the role)"),
        (("curlcode: 7", "couldn't connect", "could not connect", "connection refused", "curlcode: 28", "timed out",
          "timeout", "curlcode: 6", "could not resolve"), "cannot reach the storage endpoint"),
    )
    for needles, hint in hints:
        if any(n in low for n in needles):
            return f"{hint} ({text[:300]})"
    if isinstance(e, FileNotFoundError) or "path does not exist" in low or "not found" in low:
        return "no such file or object"
    return text[:400]


@contextlib.contextmanager
def _errors(uri: str) -> Iterator[None]:
    """pyarrow errors on `uri` as one UserError line."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{display(uri)}: {_cause(e)}") from None


# ---------------------------------------------------------------------------- reading


def info(uri_or_path: str):
    """pyarrow FileInfo of `uri_or_path`, or None when nothing is there."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri_or_path)
    with _errors(uri_or_path):
        i = fs.get_file_info(path)
    return None if i.type == pafs.FileType.NotFound else i


def exists(uri_or_path: str) -> bool:
    return info(uri_or_path) is not None


def isdir(uri_or_path: str) -> bool:
    import pyarrow.fs as pafs

    i = info(uri_or_path)
    return i is not None and i.type == pafs.FileType.Directory


def listdir(uri_or_path: str) -> list[str]:
    """Names of the entries directly under a folder (or prefix); [] when there is none."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri_or_path)
    with _errors(uri_or_path):
        found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(os.path.basename(i.path.rstrip("/")) for i in found)


def walk_files(uri_or_path: str) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every file under a folder, sorted."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri_or_path)
    with _errors(uri_or_path):
        found = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted((os.path.relpath(i.path, path), i.size or 0, i.mtime_ns or 0)
                  for i in found if i.type == pafs.FileType.File)


def has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def glob(pattern: str) -> list[str]:
    """Files matching a shell pattern (`*`, `?`, `[...]`, within one path component), sorted; local or URI."""
    import pyarrow.fs as pafs

    if not has_magic(pattern):
        i = info(pattern)
        return [pattern] if i is not None and i.type == pafs.FileType.File else []
    base_uri, sep, query = pattern.partition("?") if is_uri(pattern) else (pattern, "", "")
    parts = base_uri.split("/")
    first = next(i for i, part in enumerate(parts) if has_magic(part))
    root = "/".join(parts[:first]) or ("/" if first == 1 else "")
    fs, root_path = filesystem(root + sep + query if root else ".")
    depth = len(parts) - first
    with _errors(root or "."):
        found = fs.get_file_info(pafs.FileSelector(root_path, recursive=depth > 1, allow_not_found=True))
    out = []
    for i in found:
        if i.type != pafs.FileType.File:
            continue
        rel = os.path.relpath(i.path, root_path).split("/")
        if len(rel) == depth and all(fnmatch.fnmatchcase(r, p) for r, p in zip(rel, parts[first:])):
            out.append((root.rstrip("/") + "/" if root else "") + "/".join(rel) + sep + query)
    return sorted(out)


def read_bytes(uri_or_path: str) -> bytes:
    fs, path = filesystem(uri_or_path)
    with _errors(uri_or_path), fs.open_input_stream(path) as f:
        return f.read()


def missing_cause(uri: str) -> str:
    """Why nothing is at `uri`: its bucket does not exist, or the object does not."""
    p = urlparse(uri)
    if p.scheme in ("s3", "gs", "gcs") and p.path.strip("/"):
        bucket = urlunparse(p._replace(path=""))
        if info(bucket) is None:
            return f"the bucket {p.hostname or p.netloc.rpartition('@')[2]} does not exist"
    return "no such file or object"


def require_file(path: str, what: str = "file") -> str:
    """Return `path` when it exists (a local path, or a URI such as s3://, gs://), else a UserError."""
    if is_uri(path):
        if exists(path):
            return path
        raise UserError(f"{what} not found: {display(path)} ({missing_cause(path)})")
    if os.path.exists(path):
        return path
    raise UserError(f"{what} not found: {path}")


def write_bytes(uri_or_path: str, data: bytes) -> None:
    """Write a whole file, local (folders created) or an object."""
    if not is_uri(uri_or_path):
        os.makedirs(os.path.dirname(os.path.abspath(uri_or_path)), exist_ok=True)
        with open(uri_or_path, "wb") as f:
            f.write(data)
        return
    fs, path = filesystem(uri_or_path)
    with _errors(uri_or_path), fs.open_output_stream(path) as f:
        f.write(data)


# ---------------------------------------------------------------------------- the node cache


def cache_root() -> str:
    root = os.environ.get("TFCLUSTER_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "tfcluster", "objects")
    os.makedirs(root, exist_ok=True)
    return root


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    import fcntl

    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _key(*parts: object) -> str:
    endpoint = _aws_endpoint() or ("", "")
    return hashlib.sha256("\n".join(map(str, (*endpoint, *parts))).encode()).hexdigest()[:24]


def local_copy(uri_or_path: str) -> str:
    """A local path holding the bytes of `uri_or_path`: the path itself when it is local, else the
    node cache's copy of the object (fetched now unless the same object, same size and modification
    time, is already there). The cache file keeps the object's name, so `.gz` stays `.gz`."""
    if not is_uri(uri_or_path):
        return uri_or_path
    i = info(uri_or_path)
    if i is None:
        raise UserError(f"{display(uri_or_path)}: {missing_cause(uri_or_path)}")
    entry = os.path.join(cache_root(), f"{_key(display(uri_or_path), i.size, i.mtime_ns)}-{basename(uri_or_path)}")

    def fetch(part: str) -> None:
        fs, path = filesystem(uri_or_path)
        with _errors(uri_or_path), fs.open_input_stream(path) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    return _fill_once(entry, fetch)


def _fill_once(entry: str, fetch: Callable[[str], None]) -> str:
    """The cache entry `entry` (a file or folder), written by `fetch(part)` under a temporary name and
    renamed, under a file lock, unless it is there already: one fetch per node, never half an entry."""
    if os.path.exists(entry):
        return entry
    with _locked(entry):
        if not os.path.exists(entry):
            part = f"{entry}.part-{uuid.uuid4().hex[:8]}"
            try:
                fetch(part)
                os.replace(part, entry)
            finally:
                if os.path.isdir(part):
                    shutil.rmtree(part, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(part)
    return entry


def local_copies(uris: Iterable[str], threads: int = 8) -> list[str]:
    """`local_copy` of many objects, fetched in parallel, in order."""
    from concurrent.futures import ThreadPoolExecutor

    uris = list(uris)
    if not any(is_uri(u) for u in uris):
        return uris
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(local_copy, uris))


def local_tree(uri_or_path: str) -> str:
    """A local folder with the files under `uri_or_path` (a SavedModel version, say): the folder itself
    when local, else a whole copy in the node cache keyed by the listing (names, sizes, times)."""
    if not is_uri(uri_or_path):
        return uri_or_path
    files = walk_files(uri_or_path)
    if not files:
        raise UserError(f"{display(uri_or_path)}: no such folder or it is empty")
    entry = os.path.join(cache_root(), f"{_key(display(uri_or_path), *files)}-{basename(uri_or_path)}.d")
    return _fill_once(entry, lambda part: download_tree(uri_or_path, part))


# ---------------------------------------------------------------------------- copying folders


def download_tree(uri_or_path: str, local_dir: str) -> None:
    """Copy the files under `uri_or_path` into `local_dir` (created)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri_or_path)
    os.makedirs(local_dir, exist_ok=True)
    with _errors(uri_or_path):
        pafs.copy_files(path, local_dir, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem(),
                        use_threads=True)


def upload_tree(local_dir: str, uri_or_path: str, last: tuple[str, ...] = SAVED_MODEL_FILES) -> None:
    """Copy the files of `local_dir` to `uri_or_path`, the top-level files named in `last` after all
    others: a reader that waits for those (a SavedModel's `saved_model.pb`) never sees half a folder.
    On failure whatever was written is removed again."""
    fs, path = filesystem(uri_or_path)
    files = sorted(os.path.relpath(os.path.join(root, f), local_dir) for root, _d, fs_ in os.walk(local_dir) for f in fs_)
    files.sort(key=lambda rel: rel in last)  # stable: `last` ones at the end
    try:
        with _errors(uri_or_path):
            for rel in files:
                dest = f"{path}/{rel}"
                if "/" in rel:
                    fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
                with open(os.path.join(local_dir, rel), "rb") as src, fs.open_output_stream(dest) as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.delete_dir(path)
        raise


def delete_tree(uri_or_path: str) -> None:
    fs, path = filesystem(uri_or_path)
    with _errors(uri_or_path):
        fs.delete_dir(path)


def is_complete_version(uri_or_path: str) -> bool:
    """Whether a model version folder holds its SavedModel file (uploaded last, so: all of it)."""
    names = set(listdir(uri_or_path))
    return any(n in names for n in SAVED_MODEL_FILES)


def worker_env() -> dict[str, str]:
    """The storage settings of this process that Ray workers on other nodes need too."""
    return {k: os.environ[k] for k in ENV_VARS if os.environ.get(k)}
