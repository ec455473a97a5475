# Set-up and everyday commands. Everything installs into .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned here (pyproject declares ranges); these lie on the local disk.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
FMNIST_DIR := /usr/share/datasets/fashion-mnist
PRESET ?= fmnist
ARGS ?=

.PHONY: install train test test-fast lint clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[test,tensorboard,onnx,hub]'
	touch $@

install: $(VENV)/.installed

# Train the default model on Fashion-MNIST and report test accuracy.
train: install
	@bash scripts/ensure_fmnist.sh $(FMNIST_DIR)
	$(VENV)/bin/normfree train --preset $(PRESET) $(ARGS)

# Everything: tests/unit and tests/e2e (the CLI, subprocesses, training runs). CI runs this.
test: install
	$(PY) -m pytest -q $(ARGS)

# The unit tier alone, for the edit-test loop (about 2 minutes on 2 cores: README).
test-fast: install
	$(PY) -m pytest -q tests/unit $(ARGS)

lint: install
	$(VENV)/bin/ruff check normfree tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
