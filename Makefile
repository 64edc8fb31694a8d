PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.yml

.PHONY: run test install clean

# Compat editable mode puts the repository root on sys.path, which is what lets
# twistd find twisted/plugins/kwp_plugin.py from any directory.
$(BIN)/twistd: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $@

install: $(BIN)/twistd

run: install
	$(BIN)/twistd -n kwp --config $(CONFIG)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
