# syntax=docker/dockerfile:1.7
# tfcluster training image: Ray + TensorFlow + the tfcluster package and jobs/.
# Runs as Ray head and workers (docker/compose.yaml, KubeRay) and as a plain CLI.
#
#   docker build -f docker/train.Dockerfile -t tfcluster/train:0.1.0 .
#   docker build -f docker/train.Dockerfile --build-arg VARIANT=gpu -t tfcluster/train:0.1.0-gpu .
#
# Python packages come from requirements.lock (tensorflow 2.21.0, ray 2.60.0, ...), so the
# image runs exactly the versions the tests run.

# -- versions ------------------------------------------------------------------------
# cpu or gpu
ARG VARIANT=cpu
ARG UBUNTU_VERSION=22.04
# TensorFlow 2.21 is built against CUDA 12.5 and cuDNN 9 (tf.sysconfig.get_build_info()).
ARG CUDA_VERSION=12.5.1
ARG PYTHON_VERSION=3.11.14
ARG UV_VERSION=0.9.26
ARG TFCLUSTER_UID=1000

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

FROM ubuntu:${UBUNTU_VERSION} AS base-cpu

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION} AS base-gpu
# Let TensorFlow use the cuDNN/CUDA libraries of the base image.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# -- the base both stages share: a few OS packages ------------------------------------
FROM base-${VARIANT} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8
# wget: KubeRay's health probes call it; tini: signal handling and zombie reaping for `ray start --block`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates wget tini \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

# -- builder: a standalone CPython and a virtual environment with the locked packages ---
FROM base AS builder
ARG PYTHON_VERSION
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
RUN uv python install "${PYTHON_VERSION}" \
 && uv venv --python "${PYTHON_VERSION}" /opt/venv
WORKDIR /src
COPY requirements.lock ./
RUN uv pip install --python /opt/venv/bin/python -r requirements.lock
COPY pyproject.toml README.md ./
COPY lib/ lib/
RUN uv pip install --python /opt/venv/bin/python --no-deps .

# -- runtime ----------------------------------------------------------------------------
FROM base AS runtime
ARG TFCLUSTER_UID
RUN groupadd --gid "${TFCLUSTER_UID}" ray \
 && useradd --uid "${TFCLUSTER_UID}" --gid "${TFCLUSTER_UID}" --create-home --shell /bin/bash ray \
 && mkdir -p /mnt/models /mnt/work \
 && chown ray:ray /mnt/models /mnt/work
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
