# `make run` installs what running needs (`pip install -e .`) and starts everything;
# `make test`, `make lint`, `make bench` and `make install` add the dev extras (pytest,
# Playwright, schemathesis, mypy, ruff, hypothesis: ~900 MB). Each creates .venv if it is
# missing; a stamp per install level re-runs pip when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
WHEELHOUSE := $(VENV)/wheelhouse

.DEFAULT_GOAL := install
.PHONY: run test lint bench bench-scale install image clean

# The virtualenv is made while this file is read, when a goal needs it and it is missing
# (no pip in it: also a venv left half-made), so that a Python that cannot make one stops
# make with one line saying why. Debian/Ubuntu ship venv's pip bootstrap (ensurepip) in a
# package of its own, python3-venv; without it `python3 -m venv` prints a paragraph and
# leaves a venv without pip behind, which is removed here.
ifeq ($(wildcard $(BIN)/pip),)
ifneq ($(filter-out clean,$(or $(MAKECMDGOALS),$(.DEFAULT_GOAL))),)
VENV_ERROR := $(shell out=$$($(PYTHON) -m venv $(VENV) 2>&1) && exit 0; rm -rf $(VENV); \
  case "$$out" in (*ensurepip*) \
    pkg=$$(printf '%s\n' "$$out" | sed -n 's/.*apt install \([^ ]*-venv\).*/\1/p' | head -n 1); \
    echo "$(PYTHON) cannot create a virtualenv, its ensurepip is missing: sudo apt install $${pkg:-python3-venv} (Debian/Ubuntu), then run make again";; \
  (*) echo "$(PYTHON) -m venv $(VENV) failed: $$out";; esac)
ifneq ($(VENV_ERROR),)
$(error $(VENV_ERROR))
endif
endif
endif

$(STAMP): pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

# The wheelhouse: the production install's wheels (and its build backend's), for
# tests/test_install.py, which installs from it with --no-index (tests reach no network).
$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -rf $(WHEELHOUSE)
	$(BIN)/python -m pip download --quiet --dest $(WHEELHOUSE) . \
	  $$($(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'])")
	touch $(DEV_STAMP)

install: $(DEV_STAMP)

run: $(STAMP)
	$(BIN)/mysisterdb up

# The compose tests' image, built before the compose tests (`make test` runs it in a lane the
# docker lane waits for) rather than by the first of them: its pip reaches the package index
# (a test reaches nothing but loopback). The tests' `up --build` then finds every layer in
# Docker's cache. Built by compose, as the tests build: compose builds with
# BuildKit, whose cache a plain `docker build` does not fill where buildx is missing (Debian's
# docker.io, as CI has): it falls back to the legacy builder, and the first compose test then
# built every layer again (155 s of a run here). Without Docker, nothing (the compose tests skip, or fail
# under MYSISTERDB_TEST_REQUIRE_DOCKER=1 as CI sets it).
image:
	@if docker info >/dev/null 2>&1; then \
	  echo "docker compose build: the compose tests' image"; \
	  MYSISTERDB_IMAGE_TAG=tests docker compose -p mysisterdb-image -f docker-compose.yml build --quiet api; \
	else echo "no Docker: the compose tests' image is not built"; fi

# Lint, types and the image run as lanes beside the tests (tests/lanes.py, --checks).
test: $(DEV_STAMP)
	$(BIN)/python -m tests.lanes --checks $(ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check api workers context core taskqueue mysisterdb tests bench
	$(BIN)/mypy

# About 20 minutes on a 2-core box; the capacity table is written into docs/performance.md.
bench: $(DEV_STAMP)
	$(BIN)/python bench/context_bench.py
	$(BIN)/python bench/failure_bench.py
	$(BIN)/python bench/stream_bench.py
	$(BIN)/python bench/burst_bench.py
	$(BIN)/python bench/cost_bench.py --baseline-env MYSISTERDB_STREAM_WRITE_INTERVAL_S=0
	$(BIN)/python bench/capacity_bench.py --write

# Compose's single, scaled and HA stacks under the same load, and a failover (needs Docker).
bench-scale: $(DEV_STAMP)
	$(BIN)/python bench/scale_bench.py

clean:
	rm -rf $(VENV) data/*.rdb data/appendonly*
