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

demo: install
	rm -rf $(DEMO)
	$(BIN)/xmodal data sample $(DEMO)/media
	$(BIN)/xmodal model init $(DEMO)/model --arch small
	$(BIN)/xmodal index $(DEMO)/media --db $(DEMO)/db --model $(DEMO)/model
	$(BIN)/xmodal index $(DEMO)/media --db $(DEMO)/db
	$(BIN)/xmodal search --image $(DEMO)/media/images/tricky-cmyk.jpg --db $(DEMO)/db -k 3
	$(BIN)/xmodal search --audio $(DEMO)/media/sounds/sound-0000.wav --db $(DEMO)/db -k 3
	$(BIN)/xmodal info --db $(DEMO)/db

clean:
	rm -rf $(VENV) build *.egg-info
