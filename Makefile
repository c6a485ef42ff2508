# temponas — the two commands users need are `make search` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the reliability suite's records (untracked) and the page rendered from them
RELIABILITY_RECORDS := .pytest_cache/temponas_reliability.json
# pytest-xdist: each test file whole on one worker process (its module-scoped Ray, run folder or
# converted model is built once). Three workers on 2 cores: about half of the suite's wall time
# is waiting (Ray start-up, subprocess searches, injected hangs and node losses), so a third
# worker fills it (same code at load 5-12: 253 s with -n 3, 316 s with -n 2).
# PYTEST_XDIST= runs everything in one process.
PYTEST_XDIST ?= -n 3 --dist loadfile
export RAY_USAGE_STATS_ENABLED ?= 0
export PYTHONDONTWRITEBYTECODE ?= 1

.PHONY: setup search test reliability-doc bench priors fitset-features clean

setup: $(STAMP)

# torch is installed first and alone: the exact pin takes the CPU wheel; a looser
# requirement would pull a multi-GB CUDA build. The dev extra plus hf (diffusers, transformers)
# and video (PyAV) are everything the tests need; the core install stays without them.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,hf,video]'
	touch $(STAMP)

# a second `make search` continues (or just re-reports) the run instead of refusing it
search: setup
	$(BIN)/temponas search experiments/configs/default.yaml $$(test -f runs/default/run.json && echo --resume)

# lint first, so the last line is pytest's summary; tests never write tracked files
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_XDIST)

# docs/reliability.md: run the reliability suite, then render the records it collected (a
# failing scenario shows up in the table as FAILED, and the target still fails)
reliability-doc: setup
	rm -f $(RELIABILITY_RECORDS)
	TEMPONAS_RELIABILITY_RECORDS=$(RELIABILITY_RECORDS) $(BIN)/python -m pytest $(PYTEST_XDIST) tests/reliability; rc=$$?; \
	$(BIN)/python tools/reliability_table.py $(RELIABILITY_RECORDS) docs/reliability.md && exit $$rc

bench: setup
	$(BIN)/python benchmarks/latency_accuracy.py --json
	$(BIN)/python benchmarks/prior_transfer.py --json
	$(BIN)/python benchmarks/proxy_fidelity.py --json
	$(BIN)/python benchmarks/search_efficiency.py --json
	$(BIN)/python benchmarks/multifidelity.py --json
	$(BIN)/python benchmarks/overhead.py --json
	$(BIN)/python benchmarks/memory_model.py --json
	$(BIN)/python benchmarks/your_model_e2e.py --json

# The shipped Apple device priors, refitted from the committed fit set (a few minutes).
priors: setup
	$(BIN)/temponas latency build-priors

# One-time: Core ML features of the fit set's networks (timm, torchvision, open_clip,
# transformers). PyPI's torchvision does not import beside the CPU torch wheel, so this step has
# its own environment (torch 2.14.1 + torchvision 0.29.1, ~5.5 GB); its output, the committed
# latency_models/ane/data/{programs,ops}.csv, is all the fit needs. Resumes from .cache/.
FITSET_VENV := .venv-fitset
fitset-features:
	test -x $(FITSET_VENV)/bin/python || $(PY) -m venv $(FITSET_VENV)
	$(FITSET_VENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(FITSET_VENV)/bin/python -m pip install -q timm==1.0.31 coremltools==9.0 numpy==2.3.5 \
	    open_clip_torch==3.3.0 transformers==5.24.0 pyyaml tqdm scipy
	PYTHONPATH=. nice -n 10 $(FITSET_VENV)/bin/python -m latency_models.ane.extract

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
