# Everything a fresh machine with Python 3.11+ and make needs: the virtualenv is built here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: all install demo test lint typecheck unit bench bench-quick soak clean test-mcp1

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

## The whole suite: lint, types, tests (unit and end-to-end over 127.0.0.1), then the
## end-to-end tests again against the mcp SDK 1.x (test-mcp1): both majors, every time.
test: lint typecheck unit test-mcp1

## The test suite again under Python 3.12 and 3.13, one virtualenv each (.venv-3.12,
## .venv-3.13). The interpreters: PYTHON312 / PYTHON313 if given, else python3.12 / python3.13
## on PATH, else the newest under pyenv's root. VERSION_TEST_ARGS picks the tests (all of them
## by default but the slow ones; -m "e2e and not slow" for the end-to-end ones only).
EXTRA_VERSIONS := 3.12 3.13
VERSION_TESTS := $(addprefix test-,$(EXTRA_VERSIONS))
VERSION_TEST_ARGS ?=
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo "$$HOME/.pyenv")
find_python = $(or $(shell python$(1) -c '' >/dev/null 2>&1 && echo python$(1)),$(shell ls -d $(PYENV_ROOT)/versions/$(1).*/bin/python$(1) 2>/dev/null | sort -V | tail -n 1))
PYTHON312 ?= $(call find_python,3.12)
PYTHON313 ?= $(call find_python,3.13)

.PHONY: test-versions $(VERSION_TESTS)
.PRECIOUS: .venv-%/.installed-dev
test-versions: $(VERSION_TESTS)

$(VERSION_TESTS): test-%: .venv-%/.installed-dev
	.venv-$*/bin/python -m pytest $(VERSION_TEST_ARGS)

.venv-%/.installed-dev: pyproject.toml
	@python='$(PYTHON$(subst .,,$*))'; \
	if [ -z "$$python" ] || ! "$$python" -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "$*".split("."))))' >/dev/null 2>&1; then \
		echo "error: no Python $* interpreter: install one (e.g. pyenv install $*) or pass PYTHON$(subst .,,$*)=/path/to/python$*" >&2; \
		exit 1; \
	fi; \
	echo "$$python -m venv .venv-$*"; \
	"$$python" -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-$*/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

## The end-to-end tests again against the `mcp` SDK 1.x (its client on httpx, its server), in
## .venv-mcp1: the development extras, then mcp pinned to MCP1_VERSION. Test modules that need
## mcp 2.x (the session pool, the example gateway) are skipped there, each with its reason.
MCP1_VERSION ?= 1.30.0
MCP1_TEST_ARGS ?= -m e2e
MCP1_VENV := .venv-mcp1

test-mcp1: $(MCP1_VENV)/.installed-dev
	$(MCP1_VENV)/bin/python -m pytest $(MCP1_TEST_ARGS)

$(MCP1_VENV)/.installed-dev: pyproject.toml Makefile
	$(PYTHON) -m venv $(MCP1_VENV)
	$(MCP1_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MCP1_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	@# pip warns that the dev extra asks for mcp 2.x: that is the point of this virtualenv.
	$(MCP1_VENV)/bin/python -m pip install --quiet 'mcp==$(MCP1_VERSION)' 2>&1 | grep -v "dependency resolver\|requires mcp" || true
	$(MCP1_VENV)/bin/python -m pip uninstall --quiet --yes mcp-types
	$(MCP1_VENV)/bin/python -c 'import importlib.metadata as m, sys; v = m.version("mcp"); print("mcp", v); sys.exit(v != "$(MCP1_VERSION)")'
	touch $@

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

## The slow tests, left out of `make test`: the soak (50 users at once through the gateway
## to a real MCP server: SOAK_REQUESTS requests on one process, then 30 % of that under
## `uvicorn --workers 2`) and the long fuzz (FUZZ_CASES generated bodies, half as many
## provider-data values and whole requests). The defaults take about 2 minutes;
## `make soak SOAK_REQUESTS=10000` is the full soak (about 8 more minutes).
SOAK_REQUESTS ?= 400
FUZZ_CASES ?= 100000
soak: $(STAMP)
	MCP_AUTH_SOAK_REQUESTS=$(SOAK_REQUESTS) MCP_AUTH_FUZZ_LONG_CASES=$(FUZZ_CASES) \
		$(BIN)/python -m pytest -m slow --durations=5

clean:
	rm -rf $(VENV) $(addprefix .venv-,$(EXTRA_VERSIONS)) $(MCP1_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage
