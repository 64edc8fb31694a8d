PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.yml

.PHONY: run test install chromium bench clean

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

test: install chromium
	$(BIN)/python -m pytest -q

# The console's browser tests drive Debian's Chromium (Playwright cannot
# download its own browser here); installing it needs root.
chromium:
	@test -x /usr/bin/chromium || { apt-get update && apt-get install -y chromium; } >/dev/null 2>&1 || true
	@test -x /usr/bin/chromium || { echo "make test: /usr/bin/chromium is missing and could not be installed; run 'apt-get install -y chromium' as root" >&2; exit 1; }

# wrk comes from Debian's packages; BENCH_ARGS=--quick for a smoke run.
bench: install
	@command -v wrk >/dev/null 2>&1 || { apt-get update && apt-get install -y wrk; } >/dev/null 2>&1 || true
	@command -v wrk >/dev/null 2>&1 || { echo "make bench: wrk is missing and could not be installed; run 'apt-get install -y wrk' as root" >&2; exit 1; }
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
