# Two commands matter on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test bench gpu-check demo lint clean

setup: $(STAMP)

# The CPU torch 2.13.0 is pinned only here, and only when no torch is present, so that the
# package's own range keeps a GPU user's CUDA torch.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Lint first: a long line or an unused import fails `make test`, and so CI.
test: lint
	$(PY) -m pytest -q

# Prints the table; `make bench BENCH_ARGS=--record` also writes benchmarks/results/ and RESULTS.md.
bench: setup
	$(PY) -m benchmarks.bench_kernels $(BENCH_ARGS)

# On a CUDA machine: kernel tests natively, bench, native report, end-to-end OLMo-2-1B-shaped run
# (< 8 min on H100/H200); results under benchmarks/results/. `--dry-run` checks it on CPU.
gpu-check: setup
	$(PY) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

demo: setup
	$(PY) -m lab.demo

lint: setup
	$(PY) -m ruff check engine kernels analysis lab benchmarks tests

clean:
	rm -rf $(VENV) demo .pytest_cache
