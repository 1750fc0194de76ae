# Everything a fresh machine with Python 3.11+ and make needs: the virtualenv is built here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: all install demo test lint typecheck unit bench bench-quick soak clean

all: test

# pip's output goes to $(VENV)/pip.log (its tail is shown if it fails); a dot a second meanwhile.
$(STAMP): pyproject.toml
	@echo "Setting up $(VENV) (first run, or after pyproject.toml changed; about 30 s)"
	$(PYTHON) -m venv $(VENV)
	@( $(BIN)/python -m pip install --upgrade pip && \
	   $(BIN)/python -m pip install -e '.[dev]' ) > $(VENV)/pip.log 2>&1 & pid=$$!; \
	while kill -0 $$pid 2>/dev/null; do printf .; sleep 1; done; echo; \
	wait $$pid || { tail -n 40 $(VENV)/pip.log; echo "pip failed: see $(VENV)/pip.log"; exit 1; }
	touch $(STAMP)

install: $(STAMP)

## The main job: two real MCP servers and a gateway on 127.0.0.1, three callers (body,
## provider data, both), then exit 0 if each token reached only its own server.
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
