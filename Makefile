# Two entry points (see README "Quick start"):
#   make reproduce   set up .venv, then run the whole default workflow (Snakemake)
#   make test        set up .venv, then run the test suite
# Both are idempotent: the venv is created and the project installed only when missing or stale.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CORES  ?= all
PYTEST_ARGS ?=

export MLFLOW_ENABLE_TELEMETRY ?= false
export DO_NOT_TRACK ?= 1

.PHONY: venv reproduce test smoke bench clean-results

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

reproduce: venv
	$(VENV)/bin/lsqbq bench quantizers

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

smoke: venv
	$(VENV)/bin/lsqbq train --config config/smoke.yaml
