PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.yml
# make run serves this machine only; LISTEN=tcp:8080 opens it to the network.
LISTEN ?= tcp:8080:interface=127.0.0.1

.PHONY: run test install chromium bench clean

# Compat editable mode puts the repository root on sys.path, which is what lets
# twistd find twisted/plugins/kwp_plugin.py from any directory.  This installs
# what running needs; the test extras come on top of it.
$(BIN)/twistd: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e . --config-settings editable_mode=compat
	touch $@

$(VENV)/.test-deps: $(BIN)/twistd
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $@

install: $(VENV)/.test-deps

run: $(BIN)/twistd
	$(BIN)/twistd -n kwp --config $(CONFIG) --listen $(LISTEN)

test: $(VENV)/.test-deps chromium
	$(BIN)/python -m pytest -q

# The console's browser tests drive Debian's Chromium (Playwright cannot
# download its own browser here); installing it needs root.
chromium:
	@test -x /usr/bin/chromium || { apt-get update && apt-get install -y chromium; } >/dev/null 2>&1 || true
	@test -x /usr/bin/chromium || { echo "make test: /usr/bin/chromium is missing and could not be installed; run 'apt-get install -y chromium' as root" >&2; exit 1; }

# wrk comes from Debian's packages; the FastAPI and Express peers install into
# bench/.venv-fastapi and bench/express/node_modules.  BENCH_ARGS=--quick for a
# smoke run.
BENCH_FASTAPI := bench/.venv-fastapi
BENCH_EXPRESS := bench/express/node_modules

$(BENCH_FASTAPI)/bin/uvicorn: bench/requirements-fastapi.txt
	$(PYTHON) -m venv $(BENCH_FASTAPI)
	$(BENCH_FASTAPI)/bin/pip install --quiet -r bench/requirements-fastapi.txt
	touch $@

# better-sqlite3 compiles its native module when no prebuilt one can be fetched (about a minute).
$(BENCH_EXPRESS)/.package-lock.json: bench/express/package.json bench/express/package-lock.json
	cd bench/express && npm ci --no-audit --no-fund
	touch $@

bench: install $(BENCH_FASTAPI)/bin/uvicorn $(BENCH_EXPRESS)/.package-lock.json
	@command -v wrk >/dev/null 2>&1 || { apt-get update && apt-get install -y wrk; } >/dev/null 2>&1 || true
	@command -v wrk >/dev/null 2>&1 || { echo "make bench: wrk is missing and could not be installed; run 'apt-get install -y wrk' as root" >&2; exit 1; }
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache $(BENCH_FASTAPI) $(BENCH_EXPRESS)
