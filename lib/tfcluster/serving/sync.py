"""`tfcluster sync-models SRC DST`: mirror the complete model versions of a bucket into a folder.

    tfcluster sync-models s3://models-bucket/models /models --models nmt,dcgan --interval 30

TensorFlow Serving lost its s3:// file system in 2.7 (tensorflow/serving#1963), so the chart's
`bucket` storage runs this command beside it: once as an init container (`--once`, so the server
starts with the models there) and then as a sidecar that keeps `DST` equal to the bucket while TF
Serving polls `DST` as it polls any model folder.

* `SRC` is a model repository, local or a URI: `<SRC>/<model>/<version>/` (with `--model_name`,
  `SRC` is one model's base path, `<SRC>/<version>/`).
* A version is copied only when complete (its `saved_model.pb` is there: exports upload it last),
  into `DST/<model>/.tmp-<version>-*` and renamed to `DST/<model>/<version>` once whole, so TF
  Serving never sees half a version.
* A version gone from the source is removed from `DST` (renamed to a hidden name, then deleted), so
  the server unloads it. A source that cannot be listed changes nothing in `DST`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import time
import uuid

from tfcluster import storage
from tfcluster.errors import UserError, main_guard

log = logging.getLogger("tfcluster.sync")
_VERSION = re.compile(r"^\d+$")


def versions_in(names: list[str]) -> list[str]:
    return [n for n in names if _VERSION.match(n)]


def sync_model(src: str, dst: str) -> tuple[list[str], list[str]]:
    """Make `dst` (a local model folder) hold the complete versions under `src`; returns (added, removed)."""
    names = storage.listdir(src)
    if not names and storage.is_uri(src) and (cause := storage.missing_cause(src)).startswith("the bucket"):
        raise UserError(f"{storage.display(src)}: {cause}")  # not "no versions": that would empty dst
    os.makedirs(dst, exist_ok=True)
    wanted = [v for v in versions_in(names) if storage.is_complete_version(storage.join(src, v))]
    have = versions_in(os.listdir(dst))
    added, removed = [], []
    for v in wanted:
        if v in have:
            continue
        t0 = time.monotonic()
        tmp = os.path.join(dst, f".tmp-{v}-{uuid.uuid4().hex[:8]}")
        try:
            storage.download_tree(storage.join(src, v), tmp)
            os.rename(tmp, os.path.join(dst, v))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(os.path.join(dst, v)) for f in fs)
        log.info("synced %s/%s (%.1f MB) in %.1f s", storage.display(src), v, size / 1e6, time.monotonic() - t0)
        added.append(v)
    for v in have:
        if v not in wanted:
            gone = os.path.join(dst, f".removed-{v}-{uuid.uuid4().hex[:8]}")
            os.rename(os.path.join(dst, v), gone)
            shutil.rmtree(gone, ignore_errors=True)
            log.info("removed %s/%s (gone from the source)", dst, v)
            removed.append(v)
    return added, removed


def sync(src: str, dst: str, models: list[str] | None = None, model_name: str = "") -> dict[str, tuple[list[str], list[str]]]:
    """One pass over every model (or the one `model_name`); returns {model: (added, removed)}."""
    if model_name:
        return {model_name: sync_model(src, os.path.join(dst, model_name))}
    names = models or [n for n in storage.listdir(src) if not n.startswith(".") and storage.isdir(storage.join(src, n))]
    return {name: sync_model(storage.join(src, name), os.path.join(dst, name)) for name in names}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfcluster sync-models", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="model repository: a bucket URI (s3://, gs://) or a folder, <src>/<model>/<version>/")
    p.add_argument("dst", help="local folder the server polls, <dst>/<model>/<version>/")
    p.add_argument("--models", default="", help="comma-separated model names to mirror (default: every model under src)")
    p.add_argument("--model_name", default="", help="src is this one model's base path (<src>/<version>/)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between passes (as --file_system_poll_wait_seconds)")
    p.add_argument("--once", action="store_true", help="one pass, then exit (an init container)")
    return p


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sync-models %(message)s", stream=sys.stdout)
    models = [m for m in (x.strip() for x in args.models.split(",")) if m]
    log.info("mirroring %s -> %s every %g s", storage.display(args.src), args.dst, args.interval)
    while True:
        try:
            sync(args.src, args.dst, models, args.model_name)
        except UserError as e:
            if args.once:
                raise
            log.error("%s (nothing changed in %s; next try in %g s)", e, args.dst, args.interval)
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
