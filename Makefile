# Two commands matter on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test bench demo lint clean

setup: $(STAMP)

# The CPU torch 2.13.0 is pinned only here, and only when no torch is present, so that the
# package's own range keeps a GPU user's CUDA torch.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks.bench_kernels

demo: setup
	$(PY) -m lab.demo

lint: setup
	$(PY) -m ruff check engine kernels analysis lab benchmarks tests

clean:
	rm -rf $(VENV) demo .pytest_cache
