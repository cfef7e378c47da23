# The two commands a newcomer runs (each sets up its own venv first):
#   make demo   - install, then run a whole kill against the built-in simulated exchange
#   make test   - install, then ruff, mypy --strict and the whole test suite
# `make bench` runs the benchmark suite and prints its table.
# Installs come from the hashed lock: requirements/dev.txt here, requirements/service.txt
# for a service (README "Run as a service"). Both are exported from uv.lock:
#   make lock        - after changing a dependency in pyproject.toml: re-resolve and re-export
#   make lock-check  - fails when pyproject.toml, uv.lock and the exports disagree (offline)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck pytest bench clean lock lock-check

$(BIN)/.installed: pyproject.toml requirements/dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "killswitch needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

EXPORT = $(BIN)/uv export --quiet --frozen --no-emit-project --format requirements-txt

lock: $(BIN)/.installed
	$(BIN)/uv lock
	$(EXPORT) --no-dev -o requirements/service.txt
	$(EXPORT) --extra dev -o requirements/dev.txt

lock-check: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests/test_packaging.py

demo: $(BIN)/.installed
	$(BIN)/killswitch demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

pytest: $(BIN)/.installed
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: $(BIN)/.installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
