# The two README commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUITE ?= quickstart
ARGS ?=

.PHONY: run test validate regress clean help

help:
	@echo "make run    - create $(VENV), install flowgauge, run specs/suites/$(SUITE).yaml on CPU, print the leaderboard"
	@echo "make test   - create $(VENV), install flowgauge[test], run the whole test suite"
	@echo "make regress - run specs/suites/ci.yaml afresh and gate it against $(BASELINE) (exit 0 pass, 1 regressed, 2 cannot compare)"

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

# The regression gate: the CI suite run afresh into $(CANDIDATE), then compared with the
# committed baseline; the summary goes to the terminal and to compare.md / compare.html beside
# the candidate's records. GATE_ARGS passes options to `flowgauge compare`, e.g.
# GATE_ARGS="--timings skip" on a machine unlike the baseline's (a CI runner). WORKERS=1 keeps
# timings clean (a second worker would load the machine, and such timings are not judged).
BASELINE ?= results/baselines/ci
CANDIDATE ?= results/runs/regress
GATE_ARGS ?=
WORKERS ?= 1
regress: $(VENV)/.installed
	rm -rf $(CANDIDATE)
	$(BIN)/flowgauge run ci --results $(CANDIDATE) --workers $(WORKERS) --no-progress
	$(BIN)/flowgauge compare $(BASELINE) $(CANDIDATE) --out $(CANDIDATE)/compare.md --html $(CANDIDATE)/compare.html $(GATE_ARGS)

clean:
	rm -rf $(VENV) results/runs .pytest_cache
