"""The GPU image builds here: docker/train.Dockerfile with VARIANT=gpu on the bootstrapped Debian base
(CUDA and cuDNN from TensorFlow's pip wheels, requirements-cuda.lock), then, inside it as uid 1000:
TensorFlow is a CUDA build, every CUDA/cuDNN library it loads on a GPU resolves and opens
(`python -m tfcluster.containers cuda-check`), and `tfcluster --help` runs. There is no GPU or
NVIDIA driver here, so the kernels themselves are not run.

Slow (an image build that downloads the CUDA wheels; the layers below them are the CPU image's):
marked `slow`; skipped with one line when this machine has no container engine.
"""

from __future__ import annotations

import json

import pytest

from tfcluster import containers

pytestmark = pytest.mark.slow

TAG = f"localhost/tfcluster/train:{containers.version()}-gpu-test"


@pytest.fixture(scope="module")
def gpu_image(engine, debian_base):
    return containers.build(TAG, base_image=debian_base, variant="gpu", eng=engine)


def test_the_gpu_image_has_tensorflows_cuda_libraries_and_runs_as_uid_1000(engine, gpu_image):
    def _run(*args, check=True):
        p = engine.run(*args, check=check)
        return p.returncode, p.stdout.decode(errors="replace")

    rc, out = _run("run", "--rm", "--entrypoint", "python", gpu_image, "-m", "tfcluster.containers", "cuda-check",
                   check=False)
    report = json.loads(out)
    assert rc == 0 and report["ok"], report
    assert report["built_with_cuda"] and report["cuda_version"].startswith("12.")
    assert all(path.startswith("/opt/venv/") for path in report["libraries"].values()), report["libraries"]
    assert report["gpus"] == [] and report["driver"].startswith("absent")  # no GPU on this machine
    assert "usage: tfcluster" in _run("run", "--rm", gpu_image, "--help")[1]
    assert _run("run", "--rm", "--entrypoint", "id", gpu_image, "-u")[1].strip() == "1000"
