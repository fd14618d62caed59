# Two commands do everything: `make demo` (trace a prompt, write a figure to figures/) and `make test`.
# Both create .venv on first use. torch is installed first, pinned to the CPU build these machines carry,
# so that pip does not pull a multi-GB CUDA build; any recent torch works if you install it yourself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-browser setup clean train-toy gates bench figures

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0 || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m sdexplore demo --out figures --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

# The notebooks with widgets, used in a real JupyterLab driven by headless Chromium (tests_browser/).
# Installs Debian's chromium when it is missing (no browser download: Playwright launches /usr/bin/chromium)
# and the browser extra (playwright) into the venv. Screenshots land in browser-screenshots/.
CHROMIUM := /usr/bin/chromium
BROWSER_STAMP := $(VENV)/.installed-browser
SUDO := $(shell [ "$$(id -u)" -ne 0 ] && command -v sudo)

$(CHROMIUM):
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium

$(BROWSER_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e ".[browser]"
	touch $(BROWSER_STAMP)

test-browser: $(BROWSER_STAMP) $(CHROMIUM)
	$(PY) -m pytest -q -p no:cacheprovider -o empty_parameter_set_mark=fail_at_collect tests_browser

train-toy: $(STAMP)
	$(PY) -m sdexplore.toy.train

gates: $(STAMP)
	$(PY) -m sdexplore.toy.gates

# Run every notebook top to bottom on the toy model: they rebuild figures/ (each PNG with its parameters) and are
# stored back with their outputs, so a reader sees the pictures on GitHub. Then the demo figure.
figures: $(STAMP)
	$(PY) -m sdexplore figures
	$(PY) -m sdexplore demo --out figures --overwrite

bench: $(STAMP)
	$(PY) benchmarks/bench_trace.py

clean:
	rm -rf $(VENV) .pytest_cache
