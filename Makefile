# The two commands of the README: `make demo` and `make test`.
# Both work from a fresh clone with only Python >= 3.10 and make: they build .venv themselves.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTAG := $(shell $(PYTHON) -c 'import sys; print("py%d%d" % sys.version_info[:2])' 2>/dev/null)
TOX_ENVS := $(PYTAG)-django52,lint,types
ifeq ($(CI),true)
TOX_ENVS := $(TOX_ENVS),pg
endif

.PHONY: demo test quick lint types bench soak postgres browser clean

$(BIN)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

## make demo: the example project on SQLite against the bundled fake Customer.io server
demo: $(BIN)/.installed
	$(BIN)/python example_project/demo.py $(ARGS)

## make test: the default interpreter's tox env, lint, types, and with CI=true PostgreSQL too (installs Chromium for the browser test when missing)
test: $(BIN)/.installed
	$(MAKE) browser
ifeq ($(CI),true)
	$(MAKE) postgres
endif
	$(BIN)/tox run -e $(TOX_ENVS)

## make quick: the test suite in .venv on SQLite, no tox (for development)
quick: $(BIN)/.installed
	$(BIN)/python -m pytest $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/tox run -e lint

types: $(BIN)/.installed
	$(BIN)/tox run -e types

## make bench: the benchmark suite: one table and benchmarks/RESULTS.md (ARGS="--quick": a short run)
bench: $(BIN)/.installed postgres
	$(BIN)/python -m benchmarks.run $(ARGS)

## make soak: chaos soak, real qcluster processes on PostgreSQL (ARGS="--seconds 600 --producers 4")
soak: $(BIN)/.installed postgres
	$(BIN)/python -m benchmarks.soak $(ARGS)

## start the local PostgreSQL cluster when it is down (CI machines)
postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { \
		command -v pg_ctlcluster >/dev/null && \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; }
	@pg_isready -h 127.0.0.1 -p 5432

## Debian's Chromium and ChromeDriver for the browser test (installed when missing and we are root)
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "chromium and chromedriver present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq || true) && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null && \
		echo "installed chromium and chromedriver"; \
	else \
		echo "chromium/chromedriver missing and cannot be installed here (the browser test will say so)"; \
	fi

clean:
	rm -rf $(VENV) .tox build dist *.egg-info
