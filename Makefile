# Two commands matter on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test bench gpu-check demo lint lock clean

setup: $(STAMP)

# The CPU torch 2.13.0 is pinned only here, and only when no torch is present, so that the
# package's own range keeps a GPU user's CUDA torch. Every other test dependency comes from
# constraints.txt (the versions the suite passed with; `make lock` refreshes it).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Lint first: a long line, an unused import or an upward import fails `make test`, and so CI.
# Two pytest workers (TEST_WORKERS), each module on one worker so that its fixtures are built
# once; each worker computes on one thread and waits passively, so that the two share two cores
# instead of spinning against each other. The slowest 30 tests are listed at the end (the aim:
# the suite under 15 minutes on 2 cores).
TEST_WORKERS ?= 2
test: lint
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE \
	  $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=30

# Prints the table; `make bench BENCH_ARGS=--record` also writes benchmarks/results/ and RESULTS.md.
bench: setup
	$(PY) -m benchmarks.bench_kernels $(BENCH_ARGS)

# On a CUDA machine: kernel tests natively, bench, native report, end-to-end OLMo-2-1B-shaped run
# (< 8 min on H100/H200); results under benchmarks/results/. `--dry-run` checks it on CPU.
gpu-check: setup
	$(PY) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

demo: setup
	$(VENV)/bin/answerdist demo

# ruff, then import-linter's contracts (pyproject.toml): imports run only downward.
lint: setup
	$(PY) -m ruff check answerdist benchmarks tests
	$(VENV)/bin/lint-imports --no-cache

# Refresh constraints.txt: the newest releases the package's ranges allow, resolved in a fresh
# venv (torch, triton and CUDA's packages left out: they come with the user's torch). Run
# `make test` after it and commit the file only if the suite passes.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q torch==2.13.0
	.lock-venv/bin/python -m pip install -q '.[test]'
	.lock-venv/bin/python -m pip freeze --exclude-editable \
	  | grep -v -i -E '^(answerdist|torch|triton|nvidia-[a-z0-9-]*|cuda-[a-z0-9-]*)( @|==)' \
	  > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) demo .pytest_cache
