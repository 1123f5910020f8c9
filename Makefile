# rvbench: `make bench` and `make test` do all set-up on a fresh machine.
#   make bench [GPU=0|1|cpu] [PRESET=smoke|cpu|gpu|full]   sweep on the best device present
#   make test                                             unit tests + deterministic and ratio gates
#   make PYTHON=/path/to/python3 test                     use an interpreter that already has torch (no venv)
SHELL := /bin/bash
PYTHON ?=
GPU ?=
PRESET ?=
VENV := .venv

ifeq ($(strip $(PYTHON)),)
PY := $(VENV)/bin/python
SETUP := $(VENV)/.installed
else
PY := $(PYTHON)
SETUP :=
endif

# GPU= selects the device: empty = best present (cuda:0, else the CPU preset), cpu, or a CUDA index.
ifeq ($(strip $(GPU)),)
DEVICE := auto
else ifeq ($(strip $(GPU)),cpu)
DEVICE := cpu
else
DEVICE := cuda:$(strip $(GPU))
endif

.PHONY: bench test browser

# Re-installs only when pyproject.toml changes (the stamp is older than it).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

bench: $(SETUP)
	$(PY) -m bench run --device $(DEVICE) $(if $(strip $(PRESET)),--preset $(PRESET))

# The report's browser test needs Debian's chromium; install it when missing (root or sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "make: installing Debian's chromium for the browser test"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" = none ]; then echo "make: not root and no sudo: cannot install chromium; the browser test will skip"; \
	  else $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	    || echo "make: apt-get could not install chromium; the browser test will skip"; fi; }

test: $(SETUP) browser
	$(PY) -m pytest -q tests
