# The two README commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUITE ?= quickstart
ARGS ?=

.PHONY: run test validate clean help

help:
	@echo "make run    - create $(VENV), install flowgauge, run specs/suites/$(SUITE).yaml on CPU, print the leaderboard"
	@echo "make test   - create $(VENV), install flowgauge[test], run the whole test suite"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "flowgauge needs Python 3.10 or newer")'
	$(PYTHON) -m venv $(VENV)

# Stamp files record which install the venv holds; they are redone when pyproject.toml changes.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml | $(VENV)/.browser
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

# Best effort, once: Debian's chromium for the HTML report's browser test, which skips
# (saying why) where it cannot be installed; the script never fails the build.
$(VENV)/.browser: | $(BIN)/python
	-@sh tests/install-browser.sh
	@touch $@

run: $(VENV)/.installed
	$(BIN)/flowgauge run $(SUITE) $(ARGS)

validate: $(VENV)/.installed
	$(BIN)/flowgauge validate specs/suites/*.yaml

# pytest exits 5 when it collects no test; make passes that non-zero status on, so CI fails.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n 2 $(ARGS)

clean:
	rm -rf $(VENV) results/runs .pytest_cache
