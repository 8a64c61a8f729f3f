# iotwatch: `make run` (set up, then the whole pipeline on the synthetic smart home) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# the flow meter's kernels and the monitor's forest, compiled ahead of time (iotwatch flows
# and monitor then start without numba)
KERNELS := $(addprefix src/iotwatch/flowmeter/,_decode.py _ring.py _meter_kernels.py build_aot.py reader.py _jit.py engine.py flowtable.py reorder.py arrow_table.py) \
	src/iotwatch/monitor/_forest_kernel.py src/iotwatch/monitor/forest.py
KERNELS_STAMP := $(VENV)/.kernels
# Stage commands in dvc.yaml call `iotwatch`: put the project's venv first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false

.PHONY: help setup run test test-fast lint format params ui bench clean

help: ## list the commands people use
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) $(KERNELS_STAMP) ## create .venv with the pinned dependencies (torch 2.13.0 CPU)

# Bytecode is compiled once after the installs, on every core (pip compiles file by file on
# one: 149 s against 56 + 56 s here), src/ too (its modules are otherwise compiled again by
# every process where PYTHONDONTWRITEBYTECODE is set: ~0.2 s each); a few packages ship files
# that do not compile (Python 2 examples), which pip skips silently too.
$(STAMP): pyproject.toml requirements.lock
	@start=$$(date +%s); \
	$(PYTHON) -m venv $(VENV); \
	$(VENV)/bin/pip install -q --upgrade pip; \
	$(VENV)/bin/pip install -q --no-compile torch==2.13.0; \
	$(VENV)/bin/pip install -q --no-compile -c requirements.lock -e '.[dev]'; \
	$(VENV)/bin/python -m compileall -q -j 0 $(VENV)/lib src >/dev/null 2>&1 || true; \
	touch $(STAMP); \
	echo "setup: installed in $$(( $$(date +%s) - start )) s"

# without a C compiler this says so and the kernels stay JIT-compiled (same results, slower start)
$(KERNELS_STAMP): $(STAMP) $(KERNELS)
	@$(VENV)/bin/python -m iotwatch.flowmeter.build_aot || true
	@touch $(KERNELS_STAMP)

run: setup ## set up, then run the whole pipeline (dvc repro) on the default synthetic dataset
	@start=$$(date +%s); \
	iotwatch params --check >/dev/null || iotwatch params; \
	dvc repro; \
	echo "pipeline: done in $$(( $$(date +%s) - start )) s; report: reports/report.md, MLflow: make ui"

test: setup ## set up, then run every test
	pytest

test-fast: setup ## tests without the slow ones
	pytest -m "not slow"

lint: setup ## ruff lint and format check
	ruff check src tests bench
	ruff format --check src tests bench

format: setup ## ruff format and autofix
	ruff format src tests bench
	ruff check --fix src tests bench

params: setup ## compose conf/ into params.yaml (after editing conf/)
	iotwatch params

ui: setup ## MLflow UI on http://127.0.0.1:5000
	iotwatch ui

bench: setup ## speed benchmarks (flow meter, synthesizer); print figures
	python bench/bench_flows.py
	python bench/bench_synth.py

clean: ## remove pipeline outputs (keeps .venv and mlruns/)
	rm -rf data models reports outputs multirun .dvc/cache .dvc/tmp
