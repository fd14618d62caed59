# Two commands do everything: `make demo` (trace a prompt, write a figure to figures/) and `make test`.
# Both create .venv on first use. torch is installed first, pinned to the CPU build these machines carry,
# so that pip does not pull a multi-GB CUDA build; any recent torch works if you install it yourself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean train-toy gates bench figures

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
