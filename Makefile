# Two commands: `make demo` runs the main job, `make test` runs the tests. Both install first.
# VENV may point outside the checkout (CI caches it there, keyed by pyproject.toml).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEMO ?= /tmp/xmodal-demo

.PHONY: install test test-all demo clean

$(BIN)/.deps-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The editable install is redone every time: a cached VENV may come from another checkout.
install: $(BIN)/.deps-installed
	$(BIN)/python -m pip install --quiet --no-deps -e .

test: install
	$(BIN)/python -m pytest -q -m "not slow"

test-all: install
	$(BIN)/python -m pytest -q

# Generates a collection, indexes it with the bundled starter model, searches it with words and
# sounds, and writes $(DEMO)/report.html. Offline; under two minutes on two cores.
demo: install
	$(BIN)/xmodal demo --out $(DEMO)

clean:
	rm -rf $(VENV) build *.egg-info
