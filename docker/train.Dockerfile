# syntax=docker/dockerfile:1.7
# tfcluster training image: Ray + TensorFlow + the tfcluster package and jobs/.
# Runs as Ray head and workers (docker/compose.yaml, KubeRay) and as a plain CLI.
#
#   docker build -f docker/train.Dockerfile -t tfcluster/train:0.1.0 .
#   docker build -f docker/train.Dockerfile --build-arg VARIANT=gpu -t tfcluster/train:0.1.0-gpu .
#   make image                                     # docker, else podman
#   make image BASE_IMAGE=localhost/debian:bookworm   # offline: a local base with its own python3.11
#   make image VARIANT=gpu BASE_IMAGE=localhost/debian:bookworm   # the GPU image, CUDA from pip wheels
#
# The GPU variant takes CUDA and cuDNN from TensorFlow's own pip wheels (`tensorflow[and-cuda]`,
# pinned in requirements-cuda.lock) on the same base as the CPU image; the host needs only the
# NVIDIA driver (the NVIDIA container toolkit or the Kubernetes device plugin mounts it). To build
# on NVIDIA's CUDA image instead: --build-arg GPU_BASE_IMAGE=nvidia/cuda:12.5.1-cudnn-runtime-ubuntu22.04
# --build-arg CUDA_FROM=base.
#
# Python packages come from requirements-runtime.lock (the runtime part of requirements.lock:
# tensorflow 2.21.0, ray 2.60.0, ...; no test tools), so the image runs exactly the versions
# the tests run.

# -- versions ------------------------------------------------------------------------
# cpu or gpu
ARG VARIANT=cpu
ARG UBUNTU_VERSION=22.04
# The CPU variant's base. Any Debian/Ubuntu image; with PYTHON_SOURCE=system it must have
# python3.11 and python3-venv (e.g. a debootstrapped Debian bookworm).
ARG BASE_IMAGE=ubuntu:${UBUNTU_VERSION}
# The GPU variant's base (default: the CPU variant's) and where its CUDA comes from: wheels
# (requirements-cuda.lock, TensorFlow 2.21's and-cuda extra) or base (an nvidia/cuda base image).
ARG GPU_BASE_IMAGE=${BASE_IMAGE}
ARG CUDA_FROM=wheels
# Where Python comes from: uv (a standalone CPython that uv downloads) or system (the base
# image's own python3.11, for builds without access to uv's downloads).
ARG PYTHON_SOURCE=uv
ARG PYTHON_VERSION=3.11.14
ARG UV_VERSION=0.9.26
ARG TFCLUSTER_UID=1000

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

FROM ${BASE_IMAGE} AS base-cpu

# GPU_BASE_IMAGE is a build argument (the CPU base or an nvidia/cuda tag), so no tag is pinned here.
# hadolint ignore=DL3006
FROM ${GPU_BASE_IMAGE} AS base-gpu
# What the NVIDIA container runtime reads to mount the driver and expose the devices.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# -- the base both stages share: a few OS packages ------------------------------------
# base-cpu or base-gpu, stages of this file (their images are tagged above).
# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8
# wget: KubeRay's health probes call it; tini: signal handling and zombie reaping for `ray start --block`.
# The OS packages follow the base image's release (its security updates); every Python package is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates wget tini \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

# -- Python: /opt/venv on a standalone CPython (uv) or on the base image's python3.11 ---
FROM base AS python-uv
ARG PYTHON_VERSION
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
RUN uv python install "${PYTHON_VERSION}" \
 && uv venv --seed --python "${PYTHON_VERSION}" /opt/venv

FROM base AS python-system
RUN python3.11 -m venv /opt/venv

# -- builder: the locked runtime packages and tfcluster into /opt/venv -------------------
# python-uv or python-system, stages of this file.
# hadolint ignore=DL3006
FROM python-${PYTHON_SOURCE} AS builder
# A CA bundle mounted for this build only (podman build -v), where the registries' HTTPS needs it.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements-runtime.lock ./
RUN /opt/venv/bin/python -m pip install -r requirements-runtime.lock
# The GPU variant: TensorFlow's CUDA and cuDNN wheels (TensorFlow finds them in site-packages/nvidia).
ARG VARIANT
ARG CUDA_FROM
COPY requirements-cuda.lock ./
RUN if [ "${VARIANT}" = gpu ] && [ "${CUDA_FROM}" = wheels ]; then \
      /opt/venv/bin/python -m pip install -r requirements-cuda.lock; \
    fi
COPY pyproject.toml README.md ./
COPY lib/ lib/
RUN /opt/venv/bin/python -m pip install --no-deps --no-build-isolation . \
 && mkdir -p /opt/python

# -- runtime ----------------------------------------------------------------------------
FROM base AS runtime
ARG TFCLUSTER_UID
RUN groupadd --gid "${TFCLUSTER_UID}" ray \
 && useradd --uid "${TFCLUSTER_UID}" --gid "${TFCLUSTER_UID}" --create-home --shell /bin/bash ray \
 && mkdir -p /mnt/models /mnt/work /mnt/storage \
 && chown ray:ray /mnt/models /mnt/work /mnt/storage
# /opt/python: uv's CPython (empty with PYTHON_SOURCE=system, where the base has python3.11)
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
# /app is the Ray jobs' working_dir: `python jobs/train_nmt.py ...` runs from here.
WORKDIR /app
COPY jobs/ jobs/
COPY lib/ lib/
COPY serving/ serving/
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2 \
    RAY_AUTH_MODE=token \
    RAY_USAGE_STATS_ENABLED=0
USER ${TFCLUSTER_UID}:${TFCLUSTER_UID}
ENTRYPOINT ["/usr/bin/tini", "--", "tfcluster"]
CMD ["--help"]
