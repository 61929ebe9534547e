# Two entry points a newcomer needs: `make demo` (the offline end-to-end demo) and `make test`.
# Both build the virtual environment first. torch is pinned to the CPU wheel before anything else
# so that no dependency can pull a CUDA build onto a CPU-only machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/nerft demo

clean:
	rm -rf $(VENV) .pytest_cache
