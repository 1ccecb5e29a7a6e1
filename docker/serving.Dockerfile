# syntax=docker/dockerfile:1.7
# tfcluster serving image: the official TensorFlow Serving build with serving/*.config
# baked in, running as a non-root user, optionally with models baked in.
#
#   docker build -f docker/serving.Dockerfile -t tfcluster/serving:0.1.0 .
#   docker build -f docker/serving.Dockerfile --build-arg TF_SERVING_VARIANT=-gpu -t tfcluster/serving:0.1.0-gpu .
#   # bake a model repository (<model>/<version>/ folders) into the image:
#   docker build -f docker/serving.Dockerfile --build-context baked-models=models -t tfcluster/serving:0.1.0-nmt .

# -- versions ------------------------------------------------------------------------
# The TF Serving release that matches TensorFlow 2.21 used for training.
ARG TF_SERVING_VERSION=2.21.0
# "" for CPU, "-gpu" for the CUDA build
ARG TF_SERVING_VARIANT=""
ARG BUSYBOX_VERSION=1.37.0
ARG SERVING_UID=1000

# -- baked-models: empty unless replaced with `--build-context baked-models=<dir>` ------
FROM busybox:${BUSYBOX_VERSION} AS empty
RUN mkdir -p /empty

FROM scratch AS baked-models
COPY --from=empty /empty/ /

# -- runtime ----------------------------------------------------------------------------
FROM tensorflow/serving:${TF_SERVING_VERSION}${TF_SERVING_VARIANT} AS runtime
ARG SERVING_UID
RUN groupadd --system --gid "${SERVING_UID}" serving \
 && useradd --system --uid "${SERVING_UID}" --gid "${SERVING_UID}" --no-create-home --shell /usr/sbin/nologin serving \
 && mkdir -p /etc/tfserving/models /etc/tfserving/config /models
# models.config lists the models (base_path /models/<name>); the chart replaces it with a ConfigMap.
COPY serving/models.config /etc/tfserving/models/models.config
COPY serving/batching.config serving/monitoring.config /etc/tfserving/config/
COPY --from=baked-models --chown=${SERVING_UID}:${SERVING_UID} / /models/
USER ${SERVING_UID}:${SERVING_UID}
EXPOSE 8500 8501
ENTRYPOINT ["/usr/bin/tensorflow_model_server", \
            "--port=8500", \
            "--rest_api_port=8501", \
            "--model_config_file=/etc/tfserving/models/models.config", \
            "--model_config_file_poll_wait_seconds=30", \
            "--file_system_poll_wait_seconds=15", \
            "--enable_batching=true", \
            "--batching_parameters_file=/etc/tfserving/config/batching.config", \
            "--monitoring_config_file=/etc/tfserving/config/monitoring.config"]
