# tfcluster: `make demo` runs the main job on the embedded default, `make test` runs the tests.
# Both create .venv from the pinned dependencies (requirements.lock) when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export KERAS_BACKEND := tensorflow
export TF_CPP_MIN_LOG_LEVEL := 3
export RAY_AUTH_MODE := token

.PHONY: venv test demo ray-up ray-down bench image results clean help

help:
	@echo "make demo      train NMT with ray job submit on a local Ray cluster, serve it, translate"
	@echo "make test      run the test suite"
	@echo "make ray-up    start a local Ray head (127.0.0.1, token auth, dashboard :8265)"
	@echo "make ray-down  stop it"
	@echo "make bench     run the benchmarks (JSON under bench/results/)"
	@echo "make results   rebuild the README's Results section from runs/ and bench/results/rl.json"
	@echo "make image     build tfcluster/train:<version> with docker, else podman (BASE_IMAGE=... for a local base,"
	@echo "               VARIANT=gpu for tfcluster/train:<version>-gpu with TensorFlow's CUDA wheels)"

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools==84.2.1"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@# Ray's CLI (`ray job submit`) authenticates only when RAY_AUTH_MODE=token is set.
	@grep -q RAY_AUTH_MODE $(BIN)/activate || echo 'export RAY_AUTH_MODE=token' >> $(BIN)/activate
	@touch $(STAMP)

S3STUB := $(VENV)/s3-stand-in

$(S3STUB)/.stamp: requirements-s3.lock $(STAMP)
	$(BIN)/python -m pip install --quiet --no-warn-conflicts --target $(S3STUB) -r requirements-s3.lock
	@touch $@

test: $(STAMP) $(S3STUB)/.stamp
	TFCLUSTER_S3_STAND_IN=$(abspath $(S3STUB)) $(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/tfcluster demo

ray-up: $(STAMP)
	$(BIN)/tfcluster cluster up

ray-down: $(STAMP)
	$(BIN)/tfcluster cluster down

DATA ?= ../shared/data
bench: $(STAMP)
	$(BIN)/python bench/nmt_train.py --data $(DATA)/multi30k
	$(BIN)/python bench/dcgan_train.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/rl.py --what all
	$(BIN)/python bench/sweep.py --data $(DATA)/multi30k

results: $(STAMP)
	$(BIN)/python bench/results.py

BASE_IMAGE ?=
VARIANT ?= cpu
image: $(STAMP)
	$(BIN)/python -m tfcluster.containers build --variant $(VARIANT) $(if $(BASE_IMAGE),--base_image $(BASE_IMAGE))

clean:
	rm -rf runs models demo .pytest_cache
