# rvbench: `make bench` and `make test` do all set-up on a fresh machine.
#   make bench [GPU=0|1|cuda|cpu|0,1,2,3|all] [PRESET=smoke|cpu|gpu|gpu-full|full]   sweep on the best device present
#   make gpu-check [GPU=0]                                GPU self-checks (timing, profile, memory, compile, power)
#   make gpu-validate [GPU=0] [OUT=dir]                   what a GPU reservation runs first: checks, smoke, timm loop (8 min)
#   make scale [ARCH=resnet50]                            data-parallel training scaling, 1..N GPUs, torchrun
#   make serve [ARCH=resnet50] [GPU=0] [SLO_MS=15]        latency under load: SingleStream, Server, Offline
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

# GPU= selects the device: empty = best present (cuda:0, else the CPU preset), cpu, cuda (= cuda:0),
# or a CUDA index.
ifeq ($(strip $(GPU)),)
DEVICE := auto
else ifeq ($(strip $(GPU)),cpu)
DEVICE := cpu
else ifeq ($(strip $(GPU)),cuda)
DEVICE := cuda:0
else
DEVICE := cuda:$(strip $(GPU))
endif
# ... and for `make bench` also several GPUs at once: GPU=0,1,2,3 (--devices cuda:0,...) or all (every GPU).
comma := ,
ifeq ($(strip $(GPU)),all)
RUN_DEVICES := --devices all
else ifneq ($(findstring $(comma),$(GPU)),)
RUN_DEVICES := --devices $(subst $(eval) ,$(comma),$(addprefix cuda:,$(subst $(comma), ,$(strip $(GPU)))))
else
RUN_DEVICES := --device $(DEVICE)
endif

.PHONY: bench test browser gate gate-baseline gate-ab gpu-check gpu-validate counts scale serve transfer-demo

# Re-installs only when pyproject.toml changes (the stamp is older than it).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

bench: $(SETUP)
	$(PY) -m bench run $(RUN_DEVICES) $(if $(strip $(PRESET)),--preset $(PRESET))

# The report's browser test needs Debian's chromium; install it when missing (root or sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "make: installing Debian's chromium for the browser test"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" = none ]; then echo "make: not root and no sudo: cannot install chromium; the browser test will skip"; \
	  else $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	    || echo "make: apt-get could not install chromium; the browser test will skip"; fi; }

# Benchmarks run one step each here (--benchmark-disable); the ratio gates run in full (timed in
# process CPU time, so the second worker does not move them). Two xdist workers, one thread each
# (tests/conftest.py), keep both cores busy while a test waits on the processes it started. An interpreter
# given as PYTHON= without pytest-xdist runs them one at a time. Tests marked `alone` run afterwards, one at a
# time: they compare separate runs made minutes apart, which even process CPU time cannot shield from a busy
# sibling core (the history over six commits measured one run 35% slow beside the parallel suite).
test: $(SETUP) browser
	$(PY) -m pytest -q $$($(PY) -c 'import xdist; print("-n 2 --dist loadgroup")' 2>/dev/null) tests --benchmark-disable -m "not alone"
	$(PY) -m pytest -q tests --benchmark-disable -m alone

# After an intended change to a model, regenerate the deterministic gate's expected counts.
counts: $(SETUP)
	$(PY) -c "from bench.counting.flops import write_expected_counts; write_expected_counts()"

# Baseline gate: step times against the baseline committed for this machine class
# (cpu-<N>core, or the GPU's name). Meaningful on a quiet, dedicated machine only.
GATE_DEVICE ?= cpu
GATE_MACHINE ?= $(if $(filter cpu,$(GATE_DEVICE)),cpu-$(shell nproc)core,$(shell nvidia-smi -i $(patsubst cuda:%,%,$(patsubst cuda,cuda:0,$(GATE_DEVICE))) --query-gpu=name --format=csv,noheader | tr -cs 'A-Za-z0-9' '-' | tr 'A-Z' 'a-z' | sed 's/-*$$//'))
GATE_STORE := tests/benchmarks/baselines/$(GATE_MACHINE)
GATE_PYTEST := $(PY) -m pytest -q tests/benchmarks/test_speed.py --device $(GATE_DEVICE) \
  --benchmark-storage=file://$(GATE_STORE) $(if $(filter cpu,$(GATE_DEVICE)),--benchmark-timer=time.process_time)

gate: $(SETUP)
	@id=$$($(PY) -c 'from pytest_benchmark.utils import get_machine_id; print(get_machine_id())'); \
	ls $(GATE_STORE)/$$id/[0-9][0-9][0-9][0-9]_*.json >/dev/null 2>&1 || { echo "make gate: no baseline in $(GATE_STORE)/$$id; run 'make gate-baseline GATE_DEVICE=$(GATE_DEVICE)' on this machine class and commit it" >&2; exit 2; }
	$(GATE_PYTEST) --benchmark-compare --benchmark-compare-fail=median:25%

gate-baseline: $(SETUP)
	$(GATE_PYTEST) --benchmark-save=baseline

# A/B gate across commits (asv continuous style): this tree against BASE on this machine, same job,
# alternating fresh processes; fails only on a significant slowdown beyond 10% (tests/benchmarks/gate_ab.py).
BASE ?= HEAD~1
gate-ab: $(SETUP)
	$(PY) tests/benchmarks/gate_ab.py --base $(BASE) --device $(if $(filter auto,$(DEVICE)),cpu,$(DEVICE))

# Data-parallel training scaling of one arch under torchrun, 1, 2, 4, ... GPUs of this node (rvbench scale).
ARCH ?= resnet50
scale: $(SETUP)
	$(PY) -m bench scale $(ARCH)

# Latency under load (rvbench serve): MLPerf's SingleStream, Server (the highest Poisson QPS whose p99 meets
# SLO_MS, at three dynamic-batcher settings) and Offline scenarios, every implementation of ARCH, on the best device.
SLO_MS ?= 15
serve: $(SETUP)
	$(PY) -m bench serve $(ARCH) --device $(DEVICE) --slo-ms $(SLO_MS)

# The GPU self-checks (rvbench gpu-check): about 4 minutes on one H100; exits 2 without CUDA.
gpu-check: $(SETUP)
	$(PY) -m bench gpu-check --device $(if $(filter auto,$(DEVICE)),cuda:0,$(DEVICE))

# What a short GPU reservation runs first (rvbench gpu-validate): gpu-check, the gpu-smoke sweep and timm's
# loop over it, each part and check stopped at its budget, all within 8 minutes; OUT= receives exactly three
# files (gpu-validate.json, .txt and a .tar.gz of the work). Exits 2 without CUDA.
OUT ?=
gpu-validate: $(SETUP)
	$(PY) -m bench gpu-validate --device $(if $(filter auto,$(DEVICE)),cuda:0,$(DEVICE)) $(if $(strip $(OUT)),--out $(OUT))

# Time to accuracy on the CPU (rvbench transfer): the procedural 10-class set, written as an ImageFolder and as
# CIFAR-10 batches (in reports/runs/, which git ignores), then linear probe and full fine-tuning of vit_tiny, rv vs
# timm, and the report (reports/latest).
DEMO_DATA := reports/runs/transfer-demo-data
transfer-demo: $(SETUP)
	$(PY) -c "from bench.data.procedural import write_demo_data; write_demo_data('$(DEMO_DATA)', 800, 200)"
	$(PY) -m bench transfer vit_tiny_patch16_224 --data $(DEMO_DATA)/cifar-10-batches-py --impls rv,timm \
	  --strategy linear,full --epochs 3 --image-size 32 --batch-size 32 --target-acc 0.5 --device cpu
