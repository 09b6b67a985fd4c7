# Two commands: `make run` (a demo portal on http://127.0.0.1:9091) and `make test` (the whole suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/authportal: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: $(BIN)/authportal
	$(BIN)/authportal demo

test: $(BIN)/authportal
	./scripts/install-test-deps.sh
	$(BIN)/ruff check authportal tests
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(BIN)/authportal
	$(BIN)/python -m bench.verify
	$(BIN)/python -m bench.burst

clean:
	rm -rf $(VENV) build *.egg-info run test-artifacts
