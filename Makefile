# Set up a virtual environment in .venv and run the demo or the tests from it.
#
#   make demo                      set up .venv, train a tiny RMT on the CPU, evaluate it, print a table
#                                  (into runs/demo; an earlier demo there is moved aside to runs/demo.old-N)
#   make demo DEMO_ARGS=--quick    the same, shorter
#   make test                      set up .venv and run the test suite
#   make clean                     remove .venv and build junk
#
# Torch: an existing torch in .venv is kept as it is (install your own CUDA/ROCm build into .venv first
# if you want one). Otherwise a machine where `nvidia-smi -L` succeeds gets `torch>=2.4` from the index,
# and any other machine gets the CPU build torch==2.13.0.

PY ?= python3
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
VENV_PY := $(VENV)/bin/python
PIP := $(VENV_PY) -m pip
STAMP := $(VENV)/.installed
DEMO_ARGS ?=
TORCH_CPU ?= torch==2.13.0
TORCH_GPU ?= torch>=2.4

.PHONY: all venv .venv demo test clean
.DEFAULT_GOAL := test

all: test

# `make .venv` / `make venv`: bring the environment up to date (the stamp file does the tracking).
venv .venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x $(VENV_PY) ]; then \
		echo "creating $(VENV) with $(PY)"; \
		$(PY) -m venv $(VENV); \
	fi
	@if $(VENV_PY) -c 'import torch' >/dev/null 2>&1; then \
		echo "keeping the torch already in $(VENV): $$($(VENV_PY) -c 'import torch; print(torch.__version__)')"; \
	elif nvidia-smi -L >/dev/null 2>&1; then \
		echo "GPU found: installing '$(TORCH_GPU)' into $(VENV) (a large download)"; \
		$(PIP) install --disable-pip-version-check '$(TORCH_GPU)'; \
	else \
		echo "no GPU found: installing the CPU build $(TORCH_CPU) into $(VENV)"; \
		$(PIP) install -q --disable-pip-version-check '$(TORCH_CPU)'; \
	fi
	@echo "installing rmt (editable) and its dependencies into $(VENV)"
	@# The integration extras (hf, eval, faiss) too, so their tests run; pinning torch to the one already in
	@# $(VENV) stops any of them from swapping it for another build.
	@$(VENV_PY) -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' > $(VENV)/torch-pin.txt
	@$(PIP) install -q --disable-pip-version-check -c $(VENV)/torch-pin.txt -e '.[test,hf,eval,faiss]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rmt demo --overwrite $(DEMO_ARGS)

# pytest is already quiet through pyproject's addopts (-q); a second -q would drop the closing
# 'N passed' line that people and CI read.
test: $(STAMP)
	$(VENV_PY) -m pytest

clean:
	rm -rf $(VENV) build dist .pytest_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
