# Two entry points that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on this disk; a bare `torch` would pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test bench bench-train setup clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m undiffuse demo --out runs/demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/samplers.py --write BENCHMARKS.md

# ~20 min (undiffuse 5 min vs the diffusers recipe 12 min) + ~35 min (recipe ablation)
bench-train: setup
	$(PY) benchmarks/train_digits.py --write BENCHMARKS.md
	$(PY) benchmarks/digits_recipe.py --write BENCHMARKS.md

clean:
	rm -rf $(VENV) runs
