# Two commands do everything: `make demo` (trace a prompt, write a figure to figures/) and `make test`.
# Both create .venv on first use. torch is installed first, pinned to the CPU build these machines carry,
# so that pip does not pull a multi-GB CUDA build; any recent torch works if you install it yourself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed


.PHONY: demo test test-oldest test-browser setup clean train-toy gates bench figures

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

# The capture tests (every family's trace, attention, previews, loading) against the OLDEST diffusers and
# transformers pyproject.toml allows, in a venv of their own: tools in this field break when diffusers moves,
# and `make test` already runs against the newest release pip finds. The floors are read from pyproject.toml.
OLDEST_VENV := .venv-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.installed
OLDEST_PINS = $(shell $(PYTHON) -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print(' '.join(d.replace('>=', '==') for d in deps if d.startswith(('diffusers>=', 'transformers>='))))")
OLDEST_TESTS := tests/test_families.py tests/test_attention.py tests/test_attention_families.py tests/test_trace.py \
	tests/test_decode.py tests/test_models.py tests/test_toy_folder.py

$(OLDEST_STAMP): pyproject.toml
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(OLDEST_VENV)/bin/python -c "import torch" 2>/dev/null || $(OLDEST_VENV)/bin/python -m pip install -q torch==2.13.0 \
		|| $(OLDEST_VENV)/bin/python -m pip install -q torch
	$(OLDEST_VENV)/bin/python -m pip install -q -e ".[test]" $(OLDEST_PINS)
	touch $(OLDEST_STAMP)

test-oldest: $(OLDEST_STAMP)
	$(OLDEST_VENV)/bin/python -c "import diffusers, transformers; print('oldest allowed: diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
	$(OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider $(OLDEST_TESTS)

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
	rm -rf $(VENV) $(OLDEST_VENV) .pytest_cache
