# Two commands do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint bench install clean

$(STAMP): pyproject.toml setup.py tinyformer/tokenizer/_bpe.c tinyformer/model/_kernels.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel, so nothing pulls the CUDA stack.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tinyformer demo

test: $(STAMP)
	$(PY) -m ruff check tinyformer tests bench
	$(PY) -m pytest -q -n auto

test-all: $(STAMP)
	$(PY) -m pytest -q -n auto -m ''

lint: $(STAMP)
	$(PY) -m ruff check tinyformer tests bench

clean:
	rm -rf $(VENV) build *.egg-info tinyformer/*.so tinyformer/**/*.so
