# Everything a fresh machine with Python 3.11+ and make needs: the virtualenv is built here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: all install demo test lint typecheck unit bench bench-quick soak clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job: a real MCP server and a gateway on 127.0.0.1, two callers, then exit 0.
demo: $(STAMP)
	$(BIN)/python -m examples.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest --cov --cov-report=term

## The whole suite: lint, types, tests (unit and end-to-end over 127.0.0.1).
test: lint typecheck unit

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

## One table of ratios against the targets: in-process, memory, instructions per request
## (with valgrind), HTTP (wrk if installed, else a bounded asyncio client), MCP session
## reuse. About 5 minutes; bench-quick about 2.
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python benchmarks/bench_sessions.py

bench-quick: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run_all.py --quick
	$(BIN)/python benchmarks/bench_sessions.py --quick

## The full soak: 10,000 requests from 50 users (body, header, per-server header, 10 %
## malformed) through the gateway to the real MCP server; then 3,000 under 2 workers.
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py
	$(BIN)/python benchmarks/soak.py --workers 2 --requests 3000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage
