"""Container images: which engine builds and runs them here, the training image build, a local base.

    python -m tfcluster.containers build [--base_image localhost/debian:bookworm] [--python_source system]
    python -m tfcluster.containers bootstrap-debian [--tag localhost/debian:bookworm]
    python -m tfcluster.containers engine          # prints the engine command line it would use

`make image` calls `build`; a rebuild that moves the tag removes the image it named before. The
engine is `docker` when its daemon answers, else `podman`.
Podman runs with `--cgroup-manager=cgroupfs` (hosts without systemd), `--runtime runc` when
runc is installed (crun cannot run in hybrid cgroup mode), and, unless CONTAINERS_CONF is set,
a containers.conf with no default ulimits (a container may not raise RLIMIT_NOFILE here).

Builds use the host network (the package registries the host reaches). With podman the host's
CA bundle is mounted read-only for the build's RUN steps only (`-v ...:ro`, `PIP_CERT` as a
build argument of the builder stage): no CA and no credential is baked into an image.
`bootstrap-debian` makes a Debian bookworm base with python3.11 (debootstrap, then
`podman import`), for machines that cannot pull a public base image.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib

from tfcluster.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
DEBIAN_BASE = "localhost/debian:bookworm"
# Free space a build needs in the engine's image store, about: the builder's venv, its copy in the
# runtime stage and the layer commit (the GPU variant's venv carries CUDA and cuDNN, ~5 GiB more).
BUILD_SPACE = {"cpu": 12 * 2**30, "gpu": 24 * 2**30}


def version() -> str:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["version"]


@dataclasses.dataclass(frozen=True)
class Engine:
    name: str  # docker or podman
    argv: tuple[str, ...]  # the command and its global flags
    env: dict[str, str]

    def cmd(self, *args: str) -> list[str]:
        return [*self.argv, *args]

    def run(self, *args: str, check: bool = True, capture: bool = True, timeout: float | None = None,
            stdin: bytes | None = None) -> subprocess.CompletedProcess:
        p = subprocess.run(self.cmd(*args), env={**os.environ, **self.env}, input=stdin,
                           capture_output=capture, timeout=timeout)
        if check and p.returncode != 0:
            err = (p.stderr or b"").decode(errors="replace").strip().splitlines()
            raise UserError(f"{self.name} {' '.join(args[:2])} failed: {err[-1] if err else p.returncode}")
        return p

    def has_image(self, ref: str) -> bool:
        return bool(self.image_id(ref))

    def image_id(self, ref: str) -> str:
        """The image id `ref` names now ('' when there is none)."""
        p = self.run("image", "inspect", "--format", "{{.Id}}", ref, check=False)
        return p.stdout.decode().strip() if p.returncode == 0 else ""

    def build(self, tag: str, *args: str, context: str, space: int = 0) -> None:
        """`build -t tag ARGS context`, output to the terminal. When the tag moves, the image it named before
        is removed (it is dangling then, and a training image's venv layer alone is gigabytes); a failed build
        says so when the image store has less than `space` bytes free."""
        before = self.image_id(tag)
        p = subprocess.run(self.cmd("build", "-t", tag, *args, context), env={**os.environ, **self.env})
        if p.returncode != 0:
            free = self.store_free_bytes()
            low = ("" if free is None or free >= space else
                   f"; the image store has {free / 2**30:.1f} GiB free and this build needs about "
                   f"{space / 2**30:.0f} GiB (free some: {self.name} image prune, {self.name} rmi)")
            raise UserError(f"{self.name} build of {tag} failed (exit {p.returncode}); its output is above{low}")
        if before and before != self.image_id(tag):
            gone = self.run("rmi", before, check=False).returncode == 0
            print(f"# {'removed' if gone else 'kept (in use)'} the image {tag} named before ({before[:12]})",
                  flush=True)

    def store_free_bytes(self) -> int | None:
        """Free space where the engine keeps its images (None when it does not say)."""
        fmt = "{{.DockerRootDir}}" if self.name == "docker" else "{{.Store.GraphRoot}}"
        p = self.run("info", "--format", fmt, check=False)
        root = p.stdout.decode().strip() if p.returncode == 0 else ""
        return shutil.disk_usage(root).free if root and os.path.isdir(root) else None


def _podman_conf() -> str:
    """A containers.conf with no default ulimits (written once, in the temp folder)."""
    path = os.path.join(tempfile.gettempdir(), "tfcluster-containers.conf")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("[containers]\ndefault_ulimits = []\n")
    return path


def engine(required: bool = True) -> Engine | None:
    """The container engine this machine has: docker when its daemon answers, else podman."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0:
        return Engine("docker", (docker,), {})
    podman = shutil.which("podman")
    if podman:
        argv = [podman, "--cgroup-manager=cgroupfs"]
        if shutil.which("runc"):
            argv += ["--runtime", "runc"]
        env = {} if os.environ.get("CONTAINERS_CONF") else {"CONTAINERS_CONF": _podman_conf()}
        return Engine("podman", tuple(argv), env)
    if required:
        raise UserError("no container engine: install docker (with its daemon running) or podman "
                        "(apt-get install podman runc)")
    return None


def build(tag: str = "", base_image: str = "", python_source: str = "", variant: str = "cpu",
          eng: Engine | None = None) -> str:
    """Build docker/train.Dockerfile as `tag` (default tfcluster/train:<version>); returns the tag."""
    eng = eng or engine()
    tag = tag or f"tfcluster/train:{version()}" + ("-gpu" if variant == "gpu" else "")
    # a given base is a local one, with its own python3.11; the public default gets uv's CPython
    python_source = python_source or ("system" if base_image else "uv")
    args = ["--network=host", "-f", os.path.join(ROOT, "docker", "train.Dockerfile"),
            "--build-arg", f"VARIANT={variant}", "--build-arg", f"PYTHON_SOURCE={python_source}"]
    if base_image:
        args += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if eng.name == "podman" and os.path.exists(HOST_CA):
        args += ["-v", f"{HOST_CA}:{HOST_CA}:ro", "--build-arg", f"PIP_CERT={HOST_CA}"]
    print(f"# building {tag} with {eng.name} (base {base_image or 'the default'}, python {python_source})", flush=True)
    eng.build(tag, *args, context=ROOT, space=BUILD_SPACE[variant])
    return tag


# What TensorFlow 2.21 dlopens on a GPU (stream executor, cuDNN, cuBLAS, cuFFT, cuSPARSE, cuSOLVER, cuRAND,
# NCCL for MultiWorkerMirroredStrategy's collectives): the sonames its CUDA 12 / cuDNN 9 build asks for.
CUDA_LIBRARIES = ("libcudart.so.12", "libcublas.so.12", "libcublasLt.so.12", "libcudnn.so.9", "libcufft.so.11",
                  "libcusparse.so.12", "libcusolver.so.11", "libcurand.so.10", "libnccl.so.2", "libnvJitLink.so.12",
                  "libcupti.so.12")


def cuda_check() -> dict:
    """TensorFlow's CUDA build and each library it loads on a GPU, found the way TensorFlow finds them (the
    RUNPATH of libtensorflow_framework: site-packages/nvidia/*/lib; else the system's loader path) and opened.
    The driver (libcuda.so.1) comes from the host with the GPU, so its absence is reported, not failed."""
    import ctypes
    import glob

    import tensorflow as tf

    site = os.path.dirname(os.path.dirname(tf.__file__))
    found: dict[str, str] = {}
    for lib in CUDA_LIBRARIES:
        candidates = sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", lib))) or [lib]
        try:
            ctypes.CDLL(candidates[0])
            found[lib] = candidates[0]
        except OSError as e:
            found[lib] = f"not loaded: {e}"
    try:
        ctypes.CDLL("libcuda.so.1")
        driver = "present"
    except OSError:
        driver = "absent (no NVIDIA driver on this host: TensorFlow runs on the CPU)"
    info = tf.sysconfig.get_build_info()
    ok = bool(tf.test.is_built_with_cuda()) and not any(v.startswith("not loaded") for v in found.values())
    return {"ok": ok, "tensorflow": tf.__version__, "built_with_cuda": tf.test.is_built_with_cuda(),
            "cuda_version": info.get("cuda_version"), "cudnn_version": info.get("cudnn_version"),
            "libraries": found, "driver": driver, "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 or one-line sources), else deb.debian.org."""
    for path in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        if not os.path.exists(path):
            continue
        for line in open(path):
            line = line.strip()
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
            if line.startswith("deb ") and "security" not in line:
                return [w for w in line.split() if "://" in w][0]
    return "http://deb.debian.org/debian"


def bootstrap_debian(tag: str = DEBIAN_BASE, eng: Engine | None = None) -> str:
    """A Debian bookworm base with python3.11 and python3-venv, imported as `tag` (skipped when present)."""
    eng = eng or engine()
    if eng.has_image(tag):
        return tag
    debootstrap = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if os.path.exists("/usr/sbin/debootstrap") else "")
    if not debootstrap:
        raise UserError("debootstrap is not installed (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="tfcluster-rootfs-") as rootfs:
        print(f"# debootstrap bookworm from {debian_mirror()} into {rootfs}", flush=True)
        subprocess.run([debootstrap, "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                        "bookworm", rootfs, debian_mirror()], check=True, capture_output=True)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        p = subprocess.run(eng.cmd("import", "-", tag), stdin=tar.stdout, env={**os.environ, **eng.env},
                           capture_output=True)
        tar.wait()
        if p.returncode != 0:
            raise UserError(f"{eng.name} import failed: {p.stderr.decode(errors='replace').strip()[-300:]}")
    return tag


def main(argv: list[str] | None = None) -> int:
    from tfcluster.errors import main_guard

    p = argparse.ArgumentParser(prog="python -m tfcluster.containers", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build docker/train.Dockerfile")
    b.add_argument("--tag", default="")
    b.add_argument("--base_image", default="", help="a local base (e.g. localhost/debian:bookworm); default: ubuntu:22.04")
    b.add_argument("--python_source", default="", choices=["", "uv", "system"],
                   help="uv (download CPython) or system (the base's python3.11); default: system with --base_image")
    b.add_argument("--variant", default="cpu", choices=["cpu", "gpu"])
    d = sub.add_parser("bootstrap-debian", help="make a local Debian bookworm base image")
    d.add_argument("--tag", default=DEBIAN_BASE)
    sub.add_parser("engine", help="print the engine command line")
    sub.add_parser("cuda-check", help="(inside the GPU image) TensorFlow's CUDA build and the CUDA/cuDNN libraries "
                                      "it loads, as JSON; exit 1 when one does not resolve")
    args = p.parse_args(argv)

    @main_guard
    def _main() -> int:
        if args.command == "build":
            print(build(args.tag, args.base_image, args.python_source, args.variant))
        elif args.command == "bootstrap-debian":
            print(bootstrap_debian(args.tag))
        elif args.command == "cuda-check":
            report = cuda_check()
            print(json.dumps(report, indent=1))
            return 0 if report["ok"] else 1
        else:
            eng = engine()
            print(" ".join(f"{k}={v}" for k, v in eng.env.items()), *eng.argv)
        return 0

    return _main()


if __name__ == "__main__":
    sys.exit(main())
