# Entry points (see README "Quick start"):
#   make reproduce   set up .venv, `dvc pull` data + trained checkpoints, run the whole default workflow
#   make test        set up .venv, `dvc pull` the data, run the test suite
#   make retrain     like reproduce, but retrain every model from scratch
# All are idempotent: the venv is created and the project installed only when missing or stale.
# Everything comes from the package registry and from the DVC store committed in this repository (dvc-store/).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CORES  ?= all
PYTEST_ARGS ?= -n 2

export MLFLOW_ENABLE_TELEMETRY ?= false
export DO_NOT_TRACK ?= 1

.PHONY: venv data pull reproduce retrain test smoke mlflow-ui

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

data: venv          # raw Fashion-MNIST from the DVC store (offline)
	$(VENV)/bin/dvc pull --quiet fashion_mnist

pull: venv          # data and the default profile's trained checkpoints
	$(VENV)/bin/dvc pull --quiet

reproduce: pull
	$(VENV)/bin/snakemake --cores $(CORES)

retrain: data
	$(VENV)/bin/snakemake --cores $(CORES) --forcerun train

test: data
	$(PY) -m pytest $(PYTEST_ARGS)

smoke: data
	$(VENV)/bin/lsqbq train --config config/smoke.yaml

mlflow-ui: venv
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000
