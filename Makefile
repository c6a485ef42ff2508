# temponas — the two commands users need are `make search` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export PYTHONDONTWRITEBYTECODE ?= 1

.PHONY: setup search test bench clean

setup: $(STAMP)

# torch is installed first and alone: the exact pin takes the CPU wheel; a looser
# requirement would pull a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# a second `make search` continues (or just re-reports) the run instead of refusing it
search: setup
	$(BIN)/temponas search experiments/configs/default.yaml $$(test -f runs/default/run.json && echo --resume)

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/latency_accuracy.py --json
	$(BIN)/python benchmarks/proxy_fidelity.py --json
	$(BIN)/python benchmarks/search_efficiency.py --json
	$(BIN)/python benchmarks/overhead.py --json
	$(BIN)/python benchmarks/memory_model.py --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
