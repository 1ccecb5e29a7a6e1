"""Multi30k task 1 (raw captions, en/de) for the demo and benchmarks, found or fetched.

`locate()` returns a folder holding `{train,val,test_2016_flickr}.{en,de}.gz`, in order:
the folder given (e.g. `../shared/data/multi30k` beside a checkout), the user cache
(`$XDG_CACHE_HOME/tfcluster/multi30k`, default `~/.cache/tfcluster/multi30k`), or a
download from the dataset's public repository into that cache. Every downloaded file is
checked against the SHA-256 of its uncompressed text before it is moved into place, so
the cache never holds a partial or altered file. Without a network it says so in one
line (FetchError) and the caller falls back to another corpus.

`TFCLUSTER_MULTI30K_URL` replaces the download address (a mirror, or a local server).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request

BASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
URL_ENV = "TFCLUSTER_MULTI30K_URL"

# SHA-256 of each file's uncompressed text (29,000 / 1,014 / 1,000 lines), independent of
# how the .gz was compressed.
FILES = {
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "test_2016_flickr.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test_2016_flickr.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
}


class FetchError(Exception):
    """The download failed or a file did not match its checksum."""


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfcluster", "multi30k")


def text_sha256(path: str) -> str:
    h = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def present(folder: str | None) -> bool:
    return bool(folder) and all(os.path.isfile(os.path.join(folder, f"{name}.gz")) for name in FILES)


def fetch(dest: str, base_url: str | None = None, timeout_s: float = 20.0) -> str:
    """Download every file into `dest`, each checked before it is renamed into place."""
    base_url = base_url or os.environ.get(URL_ENV) or BASE_URL
    if not base_url.endswith("/"):
        base_url += "/"
    os.makedirs(dest, exist_ok=True)
    for name, digest in FILES.items():
        final = os.path.join(dest, f"{name}.gz")
        if os.path.isfile(final) and _matches(final, digest):
            continue
        url = f"{base_url}{name}.gz"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as r:
                shutil.copyfileobj(r, out)
            if not _matches(tmp, digest):
                raise FetchError(f"{url} does not match its SHA-256 checksum")
            os.replace(tmp, final)
        except (OSError, urllib.error.URLError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise FetchError(f"cannot download {url}: {reason}") from None
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return dest


def _matches(path: str, digest: str) -> bool:
    try:
        return text_sha256(path) == digest
    except (OSError, EOFError, gzip.BadGzipFile):
        return False


def locate(folder: str | None = None, *, download: bool = True) -> str:
    """A folder with the Multi30k files: `folder`, the cache, or a fresh download into the cache.

    Raises FetchError (one line: what was tried and why it failed) when none can be had.
    """
    if present(folder):
        return folder
    cache = cache_dir()
    if present(cache) and all(_matches(os.path.join(cache, f"{n}.gz"), d) for n, d in FILES.items()):
        return cache
    if not download:
        raise FetchError(f"not in {folder or '(no folder given)'} nor in {cache}")
    return fetch(cache)
