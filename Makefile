# Two entry points that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on this disk; a bare `torch` would pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Test-only reference for tests/test_kdiffusion_crosscheck.py, installed without its dependencies:
# only its sampling.py is read (tests/_kdiffusion.py); its torchvision would replace this torch.
K_DIFFUSION_SPEC ?= k-diffusion==0.1.1.post1

.PHONY: demo test test-slow bench bench-train setup browser speech clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps "$(K_DIFFUSION_SPEC)"
	touch $@

setup: $(VENV)/.installed $(VENV)/.browser $(VENV)/.speech

# Debian's headless Chromium and its driver for tests/test_browser.py (which skips without them).
# Best effort, never failing the setup: apt-get installs them when make runs as root; tried once
# per .venv (the stamp), and `sudo make browser` tries again.
$(VENV)/.browser: | $(VENV)/.installed
	-@$(MAKE) --no-print-directory browser
	@touch $@

browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "make browser: /usr/bin/chromium and /usr/bin/chromedriver are installed"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "make browser: installing chromium and chromium-driver with apt-get"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver) || echo "make browser: apt-get could not install chromium chromium-driver;" \
			"tests/test_browser.py will skip" >&2; \
	else \
		echo "make browser: installing chromium and chromium-driver needs root and apt-get (Debian);" \
			"tests/test_browser.py will skip until they are installed ('sudo make browser')" >&2; \
	fi

# Debian's speech engines espeak-ng and flite render the built-in `spoken-digits` dataset; its tests
# need them (they fail, naming this target, where they are missing). apt-get installs them when make
# runs as root; tried once per .venv (the stamp), and `sudo make speech` tries again.
$(VENV)/.speech: | $(VENV)/.installed
	-@$(MAKE) --no-print-directory speech
	@touch $@

speech:
	@if command -v espeak-ng >/dev/null 2>&1 && command -v flite >/dev/null 2>&1; then \
		echo "make speech: espeak-ng and flite are installed"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "make speech: installing espeak-ng and flite with apt-get"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			espeak-ng flite) || echo "make speech: apt-get could not install espeak-ng flite" >&2; \
	else \
		echo "make speech: spoken-digits needs espeak-ng and flite (Debian packages): run 'sudo make speech'" \
			"or 'sudo apt-get install espeak-ng flite'" >&2; \
	fi

demo: setup
	$(PY) -m undiffuse demo --out runs/demo

# The suite in under 15 minutes on a 2-core CPU; the tests marked slow (several processes, real
# kill -9 and signals, whole demos, compilation) run in `make test-slow`, and CI runs both.
test: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) benchmarks/samplers.py --write BENCHMARKS.md

# ~20 min (undiffuse 5 min vs the diffusers recipe 12 min) + ~35 min (recipe ablation)
bench-train: setup
	$(PY) benchmarks/train_digits.py --write BENCHMARKS.md
	$(PY) benchmarks/digits_recipe.py --write BENCHMARKS.md

clean:
	rm -rf $(VENV) runs
