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

# Two worker processes, whole files each (so a file's servers and fixtures start once): the
# suite waits on subprocesses (servers, trainers, Chromium) as much as it computes. The slowest
# 30 are listed at the end: the whole suite should stay within ~15 minutes on 2 cores.
test: setup
	$(VENV)/bin/lint-imports
	NERFT_TEST_PREBUILD=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=30

# One demo everywhere: the MSRA slice and recipe (nerft/recipes/demo-cpu.yaml) that `nerft demo` fetches
# and uses by itself, whatever corpora this machine has. Extra options go through DEMO_ARGS,
# e.g. make demo DEMO_ARGS="--data my_corpus.jsonl".
demo: setup
	$(VENV)/bin/nerft demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
