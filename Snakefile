# lsqbq replication workflow: data -> fp teachers -> quantized students (KD) -> evaluation -> analyses
# -> kernel benchmarks -> tables and figures. The entry point; each stage's rules live in workflow/rules/, the
# workflow profile in workflow/profiles/default (also reachable as profiles/default, where Snakemake looks for it
# beside this file).
#
#   snakemake --cores all                                   # default profile (config/config.yaml)
#   snakemake --cores all --configfile config/cifar100.yaml # a paper profile (or --config profile=cifar100)
#   snakemake --cores 2 --configfile config/test.yaml       # tiny end-to-end check (minutes)
#   snakemake --report results/report.html                  # HTML report of tables and figures
#
# See config/README.md for every profile and key.

import os
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("8.0")


configfile: "config/config.yaml"


# Jobs call the `lsqbq` and `torchrun` of the Python environment that runs Snakemake.
envvars:
    "PATH",


os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network calls from any job
os.environ.setdefault("DO_NOT_TRACK", "true")


include: "workflow/rules/common.smk"


# Every job (training, evaluation, analyses, benchmarks) logs to the workflow's store, never to the local one.
os.environ["MLFLOW_TRACKING_URI"] = MLFLOW_URI


envvars:
    "MLFLOW_TRACKING_URI",


include: "workflow/rules/train_helpers.smk"
include: "workflow/rules/analysis_helpers.smk"
include: "workflow/rules/tables_helpers.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/tables.smk"


report: "workflow/report/workflow.rst"


onstart:
    # Create the MLflow store's schema once, before parallel training jobs could race on it.
    if MLFLOW_URI.startswith("sqlite:///"):
        Path(MLFLOW_URI[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    shell(f"python -m lsqbq.tracking init --uri '{MLFLOW_URI}' > /dev/null")
    # Runs left RUNNING by jobs that died (kill -9, OOM, a full disk) are ended before new ones start.
    shell(f"python -m lsqbq.tracking stale --uri '{MLFLOW_URI}' --close >&2")


rule all:
    input:
        final_targets(),
    default_target: True
