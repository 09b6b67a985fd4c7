# Two commands: `make run` (a demo portal on http://127.0.0.1:9091) and `make test` (lint, then the whole suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The versions every dependency was tested with; setup.cfg keeps the ranges a user's install may pick from.
CONSTRAINTS := constraints.txt
# The suite runs in two processes (pytest-xdist): each test starts its own servers on free ports in its own temp dir.
TEST_WORKERS ?= 2

.PHONY: run test lint constraints bench clean

$(BIN)/authportal: setup.cfg pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

run: $(BIN)/authportal
	$(BIN)/authportal demo

lint: $(BIN)/authportal
	$(BIN)/ruff check authportal tests bench
	$(BIN)/mypy

test: lint
	./scripts/install-test-deps.sh
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The newest versions setup.cfg allows, resolved in a throwaway venv, become the tested set:
# run `make test` with them (the venv above reinstalls from the new file), then commit constraints.txt.
constraints:
	rm -rf build/constraints-venv
	$(PYTHON) -m venv build/constraints-venv
	build/constraints-venv/bin/pip install -q --upgrade pip
	build/constraints-venv/bin/pip install -q -e '.[dev]'
	{ echo "# Tested versions of every dependency, runtime and dev (make constraints rewrites this file)."; \
	  echo "# make and CI install with: pip install -c constraints.txt -e '.[dev]'"; \
	  build/constraints-venv/bin/pip freeze --exclude-editable; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf build/constraints-venv

bench: $(BIN)/authportal
	$(BIN)/python -m bench.verify
	$(BIN)/python -m bench.burst

clean:
	rm -rf $(VENV) build *.egg-info run test-artifacts
