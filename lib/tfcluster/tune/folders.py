"""A sweep trial's run folder in the experiment's storage: where it works, what it copies up, what it reads.

Local or NFS storage: the trial works in its folder there. A URI (s3://, gs://): it works in its node's
scratch folder and copies the run's files (config.json, metrics.jsonl, vocabularies, best/) up at each
evaluation; the driver's prepared files (vocabularies, image index) come from `<experiment>/prepared`.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from tfcluster import config as config_mod
from tfcluster import runs

SHARED_DIR = "prepared"  # driver-side prepare() output (e.g. vocabularies), copied into each trial
RUN_DIR = "run"  # the trial's out_dir inside its Tune trial folder


def restore_into(checkpoint, out_dir: str) -> None:
    """Make a Tune checkpoint (resume, or PBT's exploit) the trial's out_dir/ckpt."""
    dest = runs.folder(out_dir, "last")
    with checkpoint.as_directory() as src:
        if os.path.exists(dest):
            shutil.rmtree(dest)
        shutil.copytree(src, dest)


class TrialFolder:
    """A trial's run folder in the experiment's storage.

    Local or NFS storage: out_dir is that folder. A URI (s3://, gs://): out_dir is the trial's
    working folder on its node, and `sync` copies the run's files (config.json, metrics.jsonl,
    vocabularies, best/; not ckpt/, which Tune keeps in storage itself) to the storage folder.
    """

    def __init__(self, storage, storage_uri: str) -> None:  # Ray's StorageContext, and the sweep's --storage_path
        import pyarrow.fs

        self.fs = storage.storage_filesystem
        self.path = "/".join([storage.trial_fs_path, RUN_DIR])
        self.remote = not isinstance(self.fs, pyarrow.fs.LocalFileSystem)
        self.out_dir = os.path.join(storage.trial_working_directory, RUN_DIR) if self.remote else self.path
        self.uri = runs.join(storage_uri, storage.experiment_dir_name, storage.trial_dir_name)
        self.experiment = storage.experiment_fs_path

    def sync(self) -> None:
        if not self.remote:
            return
        import pyarrow.fs

        self.fs.create_dir(self.path, recursive=True)
        for name in os.listdir(self.out_dir):
            src = os.path.join(self.out_dir, name)
            if os.path.isfile(src) and not name.startswith("."):
                pyarrow.fs.copy_files(src, f"{self.path}/{name}", source_filesystem=pyarrow.fs.LocalFileSystem(),
                                      destination_filesystem=self.fs)
        best = runs.folder(self.out_dir, "best")
        if os.path.isdir(best):
            runs.upload_dir(best, self.fs, f"{self.path}/{runs.BEST_DIR}")

    def copy_prepared(self, shared_dir: str) -> None:
        """The driver's prepared files (vocabularies, image index) into out_dir, from storage."""
        src = shared_dir
        if self.remote:
            src = os.path.join(os.path.dirname(self.out_dir), SHARED_DIR)
            if not os.path.isdir(src):
                runs.download_dir(self.fs, f"{self.experiment}/{SHARED_DIR}", src)
        for name in os.listdir(src):
            s, d = os.path.join(src, name), os.path.join(self.out_dir, name)
            if os.path.isfile(s) and not os.path.exists(d) and name != config_mod.CONFIG_FILE:
                shutil.copy(s, d)


def in_trial(values: dict[str, Any], shared_dir: str, out_dir: str) -> dict[str, Any]:
    """Settings that name a prepared file point at the trial's own copy."""
    prefix = shared_dir.rstrip("/") + "/"
    return {k: out_dir + "/" + v[len(prefix):] if isinstance(v, str) and v.startswith(prefix) else v
            for k, v in values.items()}
