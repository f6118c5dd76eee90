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
PYTEST_ARGS ?= -n 2 --dist loadscope --no-loadscope-reorder

# MLflow 3 phones home unless told not to; nothing here may touch the network at run time.
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= true

.PHONY: venv lock data pull reproduce retrain test smoke report mlflow-ui mlflow-ui-local

# Exact versions that pass the suite (x86_64 Linux, Python 3.11): `make lock` refreshes the file from a fresh
# venv. Elsewhere the ranges in pyproject.toml apply.
LOCK   := requirements/lock-linux-x86_64.txt
ifeq ($(shell uname -sm),Linux x86_64)
LOCK_ARGS := -r $(LOCK)
endif

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet $(LOCK_ARGS) -e ".[pipeline,dev,peers]"
	@touch $(STAMP)

# The C++ engine (lsqbq/csrc) is compiled here, once per change of its sources, rather than by the first job or test
# that needs it (about 20 s on 2 cores). A failed build is only reported: lsqbq then runs its pure-torch code.
NATIVE_STAMP := $(VENV)/.native-built
$(NATIVE_STAMP): $(STAMP) $(wildcard lsqbq/csrc/*.cpp lsqbq/csrc/*.h) lsqbq/_native.py
	$(PY) -c "import lsqbq._native as n; n.load() or print('lsqbq: C++ engine not built; the pure-torch code runs')"
	@touch $(NATIVE_STAMP)

venv: $(STAMP) $(NATIVE_STAMP)

lock:               # re-resolve every dependency in a scratch venv and write $(LOCK)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade "pip>=24"
	.lock-venv/bin/python -m pip install --quiet -e ".[pipeline,dev,peers]"
	mkdir -p requirements
	{ echo "# make lock: exact versions of lsqbq[pipeline,dev,peers] (x86_64 Linux, Python 3.11)"; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable --all | grep -v '^\(pip\|setuptools\)=='; } > $(LOCK)
	rm -rf .lock-venv

data: venv          # raw Fashion-MNIST from the DVC store (offline)
	$(VENV)/bin/dvc pull --quiet fashion_mnist

pull: venv          # data and the default profile's trained checkpoints
	$(VENV)/bin/dvc pull --quiet

reproduce: pull
	$(VENV)/bin/snakemake --cores $(CORES)

retrain: data       # every model from scratch (--forcerun train would redo the teachers only: students read
	$(VENV)/bin/snakemake --cores $(CORES) --forceall train_all   # their teacher as an ancient() input), then the rest
	$(VENV)/bin/snakemake --cores $(CORES) --forcerun bench_models

test: data
	$(PY) -m pytest $(PYTEST_ARGS)

smoke: data
	$(VENV)/bin/lsqbq train --config config/smoke.yaml

# One HTML page with every table and figure. Outputs restored by `dvc pull` have no Snakemake run record; instead
# of one warning per such file, one line says how many.
report: venv
	$(VENV)/bin/snakemake --report results/report.html 2>&1 | awk '/^Missing metadata for file/ {n++; next} {print} \
	  END {if (n) print n " outputs have no Snakemake run record (restored by dvc pull): shown without run details"}'

mlflow-ui: venv     # the published store (the workflow's runs, pulled with DVC)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

mlflow-ui-local: venv   # runs made by hand: smoke, benchmarks, your own trainings
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlruns-local/mlflow.db --host 127.0.0.1 --port 5001
