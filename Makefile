# Two set-up commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DEMO_OUT ?= demo-out

.PHONY: demo test venv install install-test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(VENV)/bin/python

install: venv
	$(PIP) install -q -e .

install-test: venv
	$(PIP) install -q -e '.[test]'

demo: install
	$(VENV)/bin/freetumor demo --out $(DEMO_OUT)

test: install-test
	$(PY) -m pytest -n 2 -q

bench: install
	$(PY) benchmarks/bench_synthesis.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build dist src/*.egg-info
