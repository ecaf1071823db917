# Two set-up commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DEMO_OUT ?= demo-out

.PHONY: demo test venv torch install install-test install-docs docs docs-build bench clean browser

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(VENV)/bin/python

# PyTorch: keep a torch that is already there (e.g. your CUDA build). Otherwise, with an NVIDIA
# GPU, let pip choose; without one, pin the CPU build that this machine class has on disk
# (falling back to whatever pip finds).
torch: venv
	@$(PY) -c "import torch" 2>/dev/null || \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q torch; \
	  else $(PIP) install -q torch==2.13.0 || $(PIP) install -q torch; fi

install: torch
	$(PIP) install -q -e .

install-test: torch
	$(PIP) install -q -e '.[test]'

# The docs extra's tools alone: building the site reads src/ without importing it.
DOCS_TOOLS := 'mkdocs>=1.6' 'mkdocs-material>=9.5' 'mkdocstrings[python]>=0.26'
install-docs: venv
	$(PIP) install -q $(DOCS_TOOLS)

demo: install
	$(VENV)/bin/freetumor demo --out $(DEMO_OUT)

# Debian's Chromium for the reader-study browser test (skipped, with its reason, when absent).
browser:
	@command -v chromium >/dev/null 2>&1 || ( [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  ( DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    ( apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 ) ) ) || \
	  echo "note: chromium not installed; the browser test will be skipped"

test: install-test browser
	$(PY) -m pytest -n 2 -q

# The documentation site (mkdocs.yml, docs/): `make docs` serves it with live reload at
# http://127.0.0.1:8000; `make docs-build` builds it into site/, strictly (any warning fails).
docs: install-docs
	$(VENV)/bin/mkdocs serve

docs-build: install-docs
	$(VENV)/bin/mkdocs build --strict --site-dir site

bench: install
	$(PY) benchmarks/bench_synthesis.py
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build dist site src/*.egg-info
