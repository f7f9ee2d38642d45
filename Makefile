# Two commands do all set-up on a fresh machine:
#   make demo   # creates .venv if missing, installs stmap, runs the end-to-end demo
#   make test   # creates .venv if missing, installs stmap[test], runs pytest
# torch is installed first and pinned (TORCH_SPEC) so that no install pulls GBs of CUDA wheels.
# Elsewhere pick a build with e.g. `make test TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu124`.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: demo test test-slow docs docs-check bench lint clean install

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.torch: | $(PY)
	$(PIP) install "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -e ".[test]"
	touch $@

$(VENV)/.installed-docs: pyproject.toml $(VENV)/.installed
	$(PIP) install -e ".[test,docs]"
	touch $@

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed
	$(PIP) install -e ".[test,bench]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/stmap demo --out stmap_demo

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS) -m slow

# Offline build: no intersphinx inventories (external references are not checked; Read the Docs checks them).
# Tutorials read data from $STMAP_DATA_DIR (default: ../shared/data next to this checkout).
# Then every page is checked in headless Chromium (docs-check); `make docs DOCS_CHECK=0` skips that.
DOCS_CHECK ?= 1
docs: $(VENV)/.installed-docs
	STMAP_DOCS_OFFLINE=$${STMAP_DOCS_OFFLINE-1} STMAP_DATA_DIR=$${STMAP_DATA_DIR:-$(CURDIR)/../shared/data} \
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html
	@if [ "$(DOCS_CHECK)" != "0" ]; then $(MAKE) --no-print-directory docs-check; fi

# Loads every built page in headless Chromium: fails on console errors, broken links/images, warnings in cell
# outputs; one screenshot per page in docs/_build/screenshots (needs `apt-get install -y chromium`).
docs-check:
	$(PY) docs/_ext/browser_check.py docs/_build/html --screenshots docs/_build/screenshots

bench: $(VENV)/.installed-bench
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

lint: $(VENV)/.installed
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(PY) -m mypy

clean:
	rm -rf $(VENV) docs/_build stmap_demo .pytest_cache
