# Two commands for a fresh clone: `make demo` and `make test`.
# Both install exactly the locked set in requirements.txt (pip with
# --require-hashes), so every machine runs the same versions. `make upgrade`
# refreshes the lock from pyproject.toml and runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := requirements.txt
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck check upgrade clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gateway serve --demo

# Two test processes: most tests wait on servers, sockets and timers, not the CPU,
# so the suite takes about half as long on this 2-core machine.
test: $(STAMP)
	$(BIN)/pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check gateway tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

upgrade: $(STAMP)
	$(BIN)/pip-compile --quiet --upgrade --extra dev --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links \
	  -o $(LOCK) pyproject.toml requirements/tools.in
	rm -f $(STAMP)
	$(MAKE) test

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
