# Configuration (loaded and validated once), paths, wildcard constraints and the final targets; each stage's
# helpers live in rules/<stage>_helpers.smk.
#
# Path layout (OUT = config["output_root"], "." for the real profiles; the dataset itself lives in
# config["data_root"], DVC-tracked for Fashion-MNIST):
#   OUT/checkpoints/{dataset}/{model}/{x_quant}_{w_quant}/s{seed}/checkpoint.pt   (DVC-tracked, not in git)
#   OUT/results/train/{dataset}/{model}/{x_quant}_{w_quant}/s{seed}/metrics.json (committed)
#   OUT/results/evaluate/..., OUT/results/analysis/{dataset}/{model}/..., OUT/results/bench/kernels.csv,
#   OUT/results/tables/{dataset}/...,  OUT/logs/...,  OUT/benchmarks/...

import os
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate

from lsqbq.schemes import get_scheme, is_scheme_name, scheme_pattern
from lsqbq.workflow_store import is_published, store_uri

FP = get_scheme(None).name  # the teacher's scheme pair is (FP, FP)

REPO = Path(workflow.current_basedir).parent.parent  # this file is workflow/rules/common.smk
CONDA_ENV = "../../environment.yml"  # used with --software-deployment-method conda; else the current env


def _load_profile():
    """`--config profile=NAME` loads config/NAME.yaml over config/config.yaml; --config values still win."""
    cli = dict(workflow.config_settings.config)
    name = cli.get("profile")
    if not name or name == "default":
        return
    path = REPO / "config" / f"{name}.yaml"
    if not path.is_file():
        found = sorted(p.stem for p in (REPO / "config").glob("*.yaml"))
        raise WorkflowError(f"profile {name!r}: {path.relative_to(REPO)} not found; profiles: {', '.join(found)}")
    update_config(config, yaml.safe_load(path.read_text()) or {})
    update_config(config, cli)


def _coerce_cli_types():
    """`--config seeds=[0,1]` arrives as strings (YAML base loader); turn numeric list items into ints."""
    seeds = config.get("seeds")
    if isinstance(seeds, (int, str)):
        seeds = [seeds]
    if isinstance(seeds, list):
        config["seeds"] = [int(s) if isinstance(s, str) and s.lstrip("-").isdigit() else s for s in seeds]
    if isinstance(config.get("models"), str):
        config["models"] = [config["models"]]
    for key in ("threads", "gpus", "mem_mb", "runtime", "image_size"):
        v = config.get(key)
        if isinstance(v, str) and v.lstrip("-").isdigit():
            config[key] = int(v)


_load_profile()
_coerce_cli_types()


def _validate_config():
    """Check the config against the schema: one line per problem, naming the key; then fill defaults."""
    import jsonschema

    schema_path = REPO / "workflow" / "schemas" / "config.schema.yaml"
    schema = yaml.safe_load(schema_path.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(map(str, e.path)))
    if errors:
        lines = [f"{'.'.join(map(str, e.path)) or '(top level)'}: {e.message}" for e in errors]
        raise WorkflowError(
            "invalid workflow configuration (keys are documented in workflow/schemas/config.schema.yaml):\n  "
            + "\n  ".join(lines)
        )
    validate(config, schema_path)  # sets the schema's defaults


_validate_config()


def _check_config():
    missing = [m for m in config["models"] if m not in config["recipes"]]
    if missing:
        raise WorkflowError(
            f"invalid workflow configuration: models {missing} have no entry under 'recipes' "
            f"(known: {sorted(config['recipes'])})"
        )
    for m in config["models"]:
        for role in ("teacher", "student"):
            p = config["recipes"][m][role]
            if p is not None and not Path(p).is_file():
                raise WorkflowError(f"invalid workflow configuration: recipes.{m}.{role}: file {p} not found")
    seen = set()
    for s in config["students"]:
        pair = (s["x_quant"], s["w_quant"])
        if all(get_scheme(q).is_fp for q in pair):
            raise WorkflowError("invalid workflow configuration: students: fp/fp is the teacher, trained anyway")
        if pair in seen:
            raise WorkflowError(f"invalid workflow configuration: students: {pair[0]}/{pair[1]} listed twice")
        seen.add(pair)


_check_config()

OUT = Path(config["output_root"]).as_posix()  # "." or e.g. ".test"


def out(path):
    """`path` under the output root."""
    return path if OUT == "." else f"{OUT}/{path}"


DATASET = config["dataset_tag"] or config["dataset"]


def _hold_dvc_lock():
    """The main Snakemake process holds DVC's repository lock until it exits (lsqbq.dvc_lock): no `dvc pull` can
    replace files under running jobs, and no plan is made from half-pulled checkpoints."""
    from lsqbq.dvc_lock import DvcBusyError, hold

    if not workflow.is_main_process:
        return None
    try:
        return hold(REPO)
    except DvcBusyError as e:
        raise WorkflowError(str(e)) from None


DVC_LOCK = _hold_dvc_lock()
SEEDS = list(config["seeds"])
MODELS = list(config["models"])
STUDENTS = [(s["x_quant"], s["w_quant"]) for s in config["students"]]
STUDENT_SETS = {(s["x_quant"], s["w_quant"]): list(s.get("set", [])) for s in config["students"]}
SCHEMES = [(FP, FP), *STUDENTS]  # the teacher first
SEED0 = SEEDS[0]
ROW_SEEDS = config["row_seeds"]


def _check_row_seeds():
    """Rows of the configured models must exist; a model the profile does not train is skipped (profiles merge
    over config/config.yaml); its name is a model builder (the schema's enum, checked by _validate_config)."""
    known = [f"{x}/{w}" for x, w in SCHEMES]
    for model, rows in ROW_SEEDS.items():
        if model not in MODELS:
            continue
        for key in rows:
            x, sep, w = key.partition(chr(47))
            if key in known:
                continue
            if not sep or not (is_scheme_name(x) and is_scheme_name(w)):
                raise WorkflowError(f"invalid workflow configuration: row_seeds.{model}.{key}: not a row "
                                    f"(x_quant/w_quant with scheme names; configured: {', '.join(known)})")
            # a valid row this profile does not train (profiles merge over config/config.yaml): skipped


_check_row_seeds()


def seeds_of(model, pair):
    """The seeds of one row (model, (x_quant, w_quant)): `row_seeds` where it names the row, else `seeds`; the
    teacher's also hold every seed of its model's students."""
    own = ROW_SEEDS.get(model, {}).get(f"{pair[0]}/{pair[1]}")
    seeds = set(own if own is not None else SEEDS)
    if pair == (FP, FP):
        for student in STUDENTS:
            seeds |= set(seeds_of(model, student))
    return sorted(seeds)


# Only the default profile on its own data logs into the published, DVC-tracked store (lsqbq.workflow_store).
_PUBLISHED_PROFILE = yaml.safe_load((REPO / "config" / "config.yaml").read_text()) or {}
PUBLISHED = is_published(config, _PUBLISHED_PROFILE)
MLFLOW_URI = store_uri(config, _PUBLISHED_PROFILE)
MLFLOW_EXPERIMENT = config["mlflow"]["experiment"] or f"lsqbq-{config['profile']}-{DATASET}"


RUN = "{dataset}/{model}/{x_quant}_{w_quant}/s{seed}"
CHECKPOINT = out(f"checkpoints/{RUN}/checkpoint.pt")
TRAIN_METRICS = out(f"results/train/{RUN}/metrics.json")
TRAIN_CONFIG = out(f"results/train/{RUN}/config.yaml")
EVAL_METRICS = out(f"results/evaluate/{RUN}/metrics.json")
EVAL_PREDICTIONS = out(f"results/evaluate/{RUN}/predictions.npy")  # per-image predictions (lsqbq.predictions)
EVAL_BITWISE = out(f"results/evaluate/{RUN}/bitwise.json")  # the bitwise students' XNOR/popcount run
EVAL_RECORDED = out("logs/evaluate/{dataset}.mlflow.txt")  # every evaluation recorded in MLflow
# students whose activations and weights are both quantized: their evaluation also runs them bitwise
BITWISE_STUDENTS = [(x, w) for x, w in STUDENTS if not get_scheme(x).is_fp and not get_scheme(w).is_fp]
DATA_HASH = out("results/data/{dataset}/data_hash.txt")
ANALYSIS = out("results/analysis/{dataset}/{model}")
TABLES = out("results/tables/{dataset}")
KERNELS_CSV = out("results/bench/kernels.csv")

_SCHEME = scheme_pattern(anchored=False)  # the registry's names, nothing else


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    model=r"[a-z][a-z0-9_]*",
    x_quant=_SCHEME,
    w_quant=_SCHEME,
    seed=r"[0-9]+",


def scheme_alternation(names):
    """A wildcard constraint accepting exactly ``names`` (longest first; nothing when empty)."""
    import re

    return "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True)) or "(?!)"


def runs(pattern, models=None, schemes=None, seeds=None):
    """`pattern` expanded over the configured runs: (model, scheme pair) and each row's seeds (`seeds_of`), or the
    given `seeds` for every row."""
    return [
        pattern.format(dataset=DATASET, model=m, x_quant=x, w_quant=w, seed=s)
        for m in (models or MODELS)
        for (x, w) in (schemes or SCHEMES)
        for s in (seeds if seeds is not None else seeds_of(m, (x, w)))
    ]


def is_teacher(wc):
    return get_scheme(wc.x_quant).is_fp and get_scheme(wc.w_quant).is_fp


def all_cores():
    """Every core Snakemake may use (--cores), for jobs that must run alone; 1 when no --cores was given
    (--unlock, --report, ...), where no job runs."""
    try:
        return workflow.cores
    except WorkflowError:
        return 1


def bench_size():
    """The size option of every `lsqbq bench` job: `--smoke` (tiny shapes, one repeat), `--quick`, or none."""
    return "--smoke" if config["bench"]["smoke"] else "--quick" if config["bench"]["quick"] else ""


def final_targets():
    targets = [
        out(f"results/tables/{DATASET}/qat.md"),
        out(f"results/tables/{DATASET}/qat.csv"),
        out(f"results/tables/{DATASET}/qat_runs.csv"),
        out(f"results/tables/{DATASET}/claims.md"),
    ]
    if config["analysis"]["enabled"]:
        targets += [
            out(f"results/tables/{DATASET}/ptq.md"),
            out(f"results/tables/{DATASET}/error.md"),
            out(f"results/tables/{DATASET}/angles.png"),
            ANALYSIS_RECORDED.format(dataset=DATASET),
        ]
    if config["bench"]["kernels"]:
        targets.append(KERNELS_CSV)
    if config["bench"]["models"]:
        targets.append(out(f"results/tables/{DATASET}/pareto.png"))
    if config["bench"]["quantizers"]:
        targets.append(out("results/bench/quantizers.csv"))
    if config["bench"]["training"]:
        targets.append(out("results/bench/training.csv"))
    if config["bench"]["models"]:
        targets.append(out("results/bench/models.csv"))
    if config["bench"]["peers"]:
        targets.append(out("results/bench/peers.csv"))
    if config["evaluate_bitwise"]:
        targets += runs(EVAL_BITWISE, schemes=BITWISE_STUDENTS)
    if config["evaluate"]:
        targets.append(EVAL_RECORDED.format(dataset=DATASET))
    return targets
