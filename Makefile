# One entry point for a newcomer: `make demo` and `make test` set everything up themselves.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WORKDIR ?= workdirs

.PHONY: demo test test-all bench assets clean-venv

# The venv is rebuilt only when the pins change; a second run reuses it.
$(STAMP): setup.cfg constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required; set PYTHON=/path/to/python3.11)"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

$(VENV): $(STAMP)

demo: $(STAMP)
	$(PY) -m sotalign_jax.demo --workdir $(WORKDIR)/demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench_cka.py

clean-venv:
	rm -rf $(VENV)
