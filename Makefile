# Two commands on a fresh machine: `make demo` and `make test`.
# Each installs what is missing (Debian packages, a .venv) and is quick when nothing is.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTHON ?= python3

.PHONY: demo test check setup bench clean

demo: $(STAMP)
	@scripts/ensure-system demo
	$(BIN)/coordscope demo

test: $(STAMP)
	@scripts/ensure-system test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest

check: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && $(BIN)/lint-imports --no-cache

setup: $(STAMP)

bench: $(STAMP)
	@scripts/ensure-system demo
	$(BIN)/python -m bench.keyspace
	$(BIN)/python -m bench.locks
	$(BIN)/python -m bench.idempotency
	$(BIN)/python -m bench.ordering
	$(BIN)/python -m bench.sessions
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.transactions
	$(BIN)/python -m bench.messaging

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
