# aitasks: the AI task platform. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# checkov pins dependencies that conflict with the project lock: it lives in its own tools venv,
# with zizmor (the GitHub Actions workflow linter).
TOOLS   ?= .venv-tools
CHECKOV := $(TOOLS)/bin/checkov
ZIZMOR  := $(TOOLS)/bin/zizmor
# Arguments passed through to pytest, e.g. `make test PYTEST_ARGS="-k audit -x"`.
PYTEST_ARGS ?=
# Worker processes for `make test` (pytest-xdist, whole test files per worker): the cores, at most 4.
# `make test PYTEST_WORKERS=0` runs everything in one process (e.g. with a debugger).
PYTEST_WORKERS ?= $(shell n=$$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24" wheel setuptools
	# torch first, from the CPU wheel this machine provides (a plain PyPI resolve pulls CUDA builds).
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -c requirements.lock -e ".[dev]"
	@touch $(STAMP)

$(CHECKOV) $(ZIZMOR):
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --upgrade "pip>=24"
	$(TOOLS)/bin/pip install -q "checkov==3.3.30" "zizmor==1.32.0"

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "; printf "Targets:\n"} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: install
install: $(STAMP) ## Create the virtual environment and install the locked dependencies

.PHONY: demo
demo: $(STAMP) ## Run the main job end to end on embedded defaults (kfp.local, sqlite, local storage)
	$(PY) -m pipelines demo

.PHONY: demo-audio
demo-audio: $(STAMP) ## Run the audio-analysis pipeline on a generated catalog (kfp.local), with a summary
	$(PY) -m pipelines demo-audio

.PHONY: demo-cluster
demo-cluster: $(STAMP) ## Run reco-training as a cluster does: steps share no disk (GCS emulator, MLflow server, Postgres, Redis)
	$(PY) -m pipelines demo-cluster

.PHONY: test
test: $(STAMP) ## Run the default test suite (offline + local services; no slow or bench tests)
	$(PY) -m pytest -m "not slow and not bench" -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

.PHONY: test-slow
test-slow: $(STAMP) ## Run only the slow tests (kfp.local end-to-end runs, the whole recommender chain)
	$(PY) -m pytest -m "slow and not bench" $(PYTEST_ARGS)

.PHONY: test-all
test-all: test test-slow ## Run every test: `make test`, then the slow ones

# A subset of the benchmarks, e.g. `make bench BENCH_ONLY=audio,ann` (`python -m bench --list` names them).
BENCH_ONLY ?=

.PHONY: bench
bench: $(STAMP) ## Run the benchmarks with progress; prints a table and writes bench/results/latest.json
	$(PY) -m bench $(if $(BENCH_ONLY),--only $(BENCH_ONLY))

.PHONY: bench-report
bench-report: $(STAMP) ## Render bench/results/report.{html,md} (figures + plots) from latest.json
	$(PY) -m bench report

.PHONY: bench-reference
bench-reference: $(STAMP) ## Copy latest.json into the committed snapshot bench/results/reference.json
	$(PY) -m bench reference

.PHONY: scale
scale: $(STAMP) ## Render the capacity model docs/{en,fr,de}/scale.md from reference.json + bench/volumes.yaml
	$(PY) -m bench scale

.PHONY: bench-audio
bench-audio: $(STAMP) ## Audio analysis bench alone (per-stage ms, ratios to decode and naive librosa, pool), JSON on stdout
	$(PY) -m bench.audio

.PHONY: compile
compile: $(STAMP) ## Compile every pipeline to pipelines/compiled/*.yaml
	$(PY) -m pipelines compile

.PHONY: check
check: $(STAMP) ## Fail when committed pipeline YAML, rendered task docs or the capacity model are stale
	$(PY) -m pipelines check
	$(PY) -m aitasks.cli docs --check
	$(PY) -m bench scale --check

.PHONY: docs
docs: $(STAMP) ## Render docs/{en,fr,de}/tasks.md from the task registry
	$(PY) -m aitasks.cli docs

.PHONY: lint
lint: $(STAMP) $(CHECKOV) $(ZIZMOR) ## ruff, mypy, hadolint, zizmor, manifests rendered and checked (kubernetes-validate, checkov)
	$(VENV)/bin/ruff check src components pipelines tests bench
	$(VENV)/bin/ruff format --check src components pipelines tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint --config images/.hadolint.yaml images/*/Dockerfile
	$(ZIZMOR) --offline --persona=pedantic .github/workflows/
	@mkdir -p build/manifests
	kubectl kustomize manifests/overlays/dev > build/manifests/dev.yaml
	kubectl kustomize manifests/overlays/prod > build/manifests/prod.yaml
	kubectl kustomize manifests/runs/standalone/dev > build/manifests/runs-standalone-dev.yaml
	kubectl kustomize manifests/runs/standalone/prod > build/manifests/runs-standalone-prod.yaml
	kubectl kustomize manifests/runs/multi-user/dev > build/manifests/runs-multi-user-dev.yaml
	kubectl kustomize manifests/runs/multi-user/prod > build/manifests/runs-multi-user-prod.yaml
	$(CHECKOV) --config-file manifests/.checkov.yaml -d build/manifests
	$(PY) -m tests.manifests.digests
	$(PY) -m pytest -q -p no:cacheprovider tests/manifests tests/images

.PHONY: format
format: $(STAMP) ## Apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix -q src components pipelines tests bench
	$(VENV)/bin/ruff format -q src components pipelines tests bench

.PHONY: lock
lock: ## Re-resolve requirements.lock in a clean throwaway venv (torch pinned to the CPU build)
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install -q --upgrade pip && .lockenv/bin/pip install -q "torch==2.13.0" && .lockenv/bin/pip install -q ".[dev]"
	.lockenv/bin/pip freeze --exclude-editable | grep -v '^aitasks' | sed -e 's/+cpu$$//' > requirements.lock
	rm -rf .lockenv

.PHONY: clean
clean: ## Remove the venv, caches and demo outputs
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .demo local_outputs build *.egg-info src/*.egg-info
