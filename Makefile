# Two commands: `make run` and `make test`. Both create .venv if it is missing
# and install the pinned dependencies into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/mysisterdb up

test: $(STAMP)
	$(BIN)/ruff check api workers context core taskqueue mysisterdb tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check api workers context core taskqueue mysisterdb tests bench
	$(BIN)/mypy

# About 9 minutes on a 2-core box; the capacity table is written into docs/performance.md.
bench: $(STAMP)
	$(BIN)/python bench/context_bench.py
	$(BIN)/python bench/failure_bench.py
	$(BIN)/python bench/stream_bench.py
	$(BIN)/python bench/capacity_bench.py --write

clean:
	rm -rf $(VENV) data/*.rdb data/appendonly*
