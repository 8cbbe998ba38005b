# rankmix: `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SCALE ?= tiny
ARGS ?=
JOBS ?= 2
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled

TABLE ?=
ROW ?=
ROWS ?= all
WIDTH ?= reduced

.PHONY: help setup lock setup-latest run rehearse rate export show-row test test-fast test-kernels test-cluster bench-kernels bench-e2e kernels-compile gpu-check lint list-tables check-results compare figures sync-wandb clean

help: ## list the targets with one line each
	@grep -hE '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## create .venv/ in the repo and install rankmix with its test tools, exactly as requirements.lock pins them

# The lock pins every package `make setup` installs, hashed. It is compiled from pyproject.toml's ranges by uv with
# --exclude-newer $(LOCK_DATE): the same lock on any later date. Bump on purpose: `make setup-latest` first (the
# newest releases the ranges allow, tests run there), then `make lock LOCK_DATE=<now>`.
LOCK := requirements.lock
LOCK_DATE ?= 2026-12-01T12:00:00Z
PIP_VERSION := 26.3
# installed without its declared dependencies (pyproject.toml says why)
LMMS_EVAL := lmms-eval==0.7.3
UV_COMPILE = pip compile --universal --python-version 3.11 --exclude-newer $(LOCK_DATE) --generate-hashes --quiet

$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet pip==$(PIP_VERSION)
	$(VENV)/bin/pip install --no-deps --require-hashes -r $(LOCK)   # torch and torchvision come from the local wheels where pip's config has them
	$(VENV)/bin/pip install --no-deps --no-build-isolation -e .     # rankmix itself, built with the lock's setuptools
	scripts/system-deps.sh   # Debian packages the tests and the sandbox need (bubblewrap, chromium): installed as root, else one line naming the command
	touch $@

lock: $(VENV)/.installed ## regenerate requirements.lock from pyproject.toml's ranges as of LOCK_DATE (uv, hashed)
	$(VENV)/bin/uv $(UV_COMPILE) --upgrade pyproject.toml --extra dev -o $(LOCK)
	@# lmms-eval is installed without its declared dependencies (pyproject.toml says why): its own hashed pin
	echo '$(LMMS_EVAL)' | $(VENV)/bin/uv $(UV_COMPILE) --no-deps --no-header - >> $(LOCK)

LATEST := .venv-latest

setup-latest: ## a separate .venv-latest/ with the newest releases pyproject.toml's ranges allow, then the tests there (before a lock bump)
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST)/bin/pip install --no-deps '$(LMMS_EVAL)'
	$(LATEST)/bin/pip freeze --exclude-editable > $(LATEST)/freeze.txt
	@echo "newest versions: $(LATEST)/freeze.txt"
	$(MAKE) test PY=$(LATEST)/bin/python

run: ## train the embedded default (LoRA, tiny Llama, generated tasks, CPU); prints the results path
	$(PY) -m rankmix.train $(ARGS)

test: ## run the test suite (offline, wandb disabled), JOBS=2 test processes side by side (JOBS=0: one)
	$(OFFLINE) $(PY) -m pytest -n $(JOBS) --dist worksteal $(ARGS)

test-fast: ## the tests without the end-to-end training runs
	$(OFFLINE) $(PY) -m pytest -n $(JOBS) --dist worksteal -m "not slow" $(ARGS)

lint: ## ruff on the package, scripts, kernels and tests
	$(VENV)/bin/ruff check src scripts kernels tests

list-tables: ## every reproducible table and its status (never run / tiny / paper), naming runs that predate their config
	@$(PY) -m rankmix.tables list

check-results: ## fail (exit 1), naming them, when a committed result predates its row's config or a run failed (CI's fast check)
	@$(PY) -m rankmix.tables list --check

METRIC ?= test/em
X ?= method.r
compare: ## plot METRIC against a swept key X per method → results/<TABLE>/compare-*.{png,csv}: make compare TABLE=default METRIC=test/em X=method.r
	$(PY) -m rankmix.tables compare $(TABLE) --metric $(METRIC) --x $(X)

rehearse: ## every table's rows at scale=paper on stand-ins of the real backbones and real-layout data, 2 steps each → results/rehearse/<device>.md; ROWS=one|family, WIDTH=full (real widths, for a GPU)
	$(OFFLINE) $(PY) -m rankmix.rehearsal --rows $(ROWS) --width $(WIDTH) $(ARGS)

SEEDS ?=
reproduce-table-%: ## run table <id>'s multirun (its rows: conf/experiment/<id>/ or conf/table/<id>.yaml; missing/stale runs only), then write results/<id>/table.md; SCALE=paper for the paper's setting; SEEDS=n: seeds 0..n-1, mean ± std per cell
	$(PY) -m rankmix.tables reproduce $* scale=$(SCALE) $(if $(SEEDS),seed=$(shell seq -s, 0 $$(($(SEEDS)-1)))) $(ARGS)

rate: ## the blind rating page of a table's two methods for one rater: make rate TABLE=moslora-6 RATER=ann (answers → results/<table>/ratings/<rater>.csv)
	$(PY) -m rankmix.rating serve $(TABLE) --rater $(RATER)

RUN ?=
OUT ?= $(RUN)/export
export: ## write a finished run for peft / transformers / lm-eval: make export RUN=runs/<table>/<run-key> [OUT=<folder>] (default RUN/export)
	@test -n "$(RUN)" || { echo "rankmix: error: RUN is not set; give a run's folder: make export RUN=runs/default/default" >&2; exit 2; }
	$(OFFLINE) $(PY) -m rankmix.export $(RUN) $(OUT) $(ARGS)

show-row: ## print one row's fully resolved config: make show-row TABLE=smora-1 ROW=lora_64 SCALE=paper
	@$(PY) -m rankmix.tables show $(TABLE) $(ROW) scale=$(SCALE) $(ARGS)

table-%: ## rebuild results/<id>/table.{md,csv} from the run JSONs already there
	$(PY) -m rankmix.tables build $*

reproduce-figure-%: ## draw figure <paper>-fig<id> from its table's saved runs → results/<id>/figure.{png,csv}, caption.md
	$(PY) -m rankmix.figures build $*

figures: ## every figure from the runs already made (then results/README.md, the index)
	$(PY) -m rankmix.figures build all

bench-kernels: ## time SMoRA's sparse path (Triton vs PyTorch variants) → results/bench/kernels-<device>.{csv,md}
	$(PY) -m rankmix.kernels.bench $(ARGS)

bench-e2e: ## time to the first generated token (and its peak memory on CUDA) per SMoRA backend → results/bench/e2e-<device>.{csv,md}
	$(OFFLINE) $(PY) -m rankmix.kernels.bench_e2e $(ARGS)

test-kernels: ## the Triton kernel tests (interpreter on CPU, compiled on a GPU; compiled for sm_80/sm_90 here), then kernels-compile's full matrix
	$(OFFLINE) $(PY) -m pytest -m "triton_interpreter or triton_compile" $(ARGS)
	$(PY) -m rankmix.kernels.compile_report

kernels-compile: ## every Triton kernel compiled for sm_80 and sm_90 without a GPU, every autotuning config → results/bench/kernels-compile.{md,csv}
	$(PY) -m rankmix.kernels.compile_report $(ARGS)

DRY ?=
gpu-check: ## one command for a lent GPU (≤ 8 min on an H100, each part time-boxed) → results/bench/*-<gpu>.{md,csv}; DRY=1: the same parts on the CPU
	$(OFFLINE) $(PY) -m rankmix.kernels.gpu_check $(if $(DRY),--dry) $(ARGS)

test-cluster: ## the cluster-path tests only: a submitit sweep, SLURM preemption and requeue, srun-style ranks
	$(OFFLINE) $(PY) -m pytest -m cluster $(ARGS)

sync-wandb: ## upload offline wandb runs (needs network and `wandb login`)
	$(VENV)/bin/wandb sync runs/*/*/wandb/offline-run-*

clean: ## remove run folders and caches (keeps results/)
	rm -rf runs .cache .pytest_cache .ruff_cache
