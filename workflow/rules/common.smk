# Configuration helpers, wildcard constraints and the list of final targets.
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
        config["seeds"] = [int(s) if isinstance(s, str) and s.isdigit() else s for s in seeds]
    if isinstance(config.get("models"), str):
        config["models"] = [config["models"]]
    for key in ("threads", "gpus", "mem_mb", "runtime", "image_size"):
        v = config.get(key)
        if isinstance(v, str) and v.isdigit():
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
        if pair == ("fp", "fp"):
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
SEEDS = list(config["seeds"])
MODELS = list(config["models"])
STUDENTS = [(s["x_quant"], s["w_quant"]) for s in config["students"]]
STUDENT_SETS = {(s["x_quant"], s["w_quant"]): list(s.get("set", [])) for s in config["students"]}
SCHEMES = [("fp", "fp"), *STUDENTS]  # the teacher first
SEED0 = SEEDS[0]
MLFLOW_URI = config["mlflow"]["uri"] or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out('mlflow.db')}"
MLFLOW_EXPERIMENT = config["mlflow"]["experiment"] or f"lsqbq-{config['profile']}-{DATASET}"


RUN = "{dataset}/{model}/{x_quant}_{w_quant}/s{seed}"
CHECKPOINT = out(f"checkpoints/{RUN}/checkpoint.pt")
TRAIN_METRICS = out(f"results/train/{RUN}/metrics.json")
TRAIN_CONFIG = out(f"results/train/{RUN}/config.yaml")
EVAL_METRICS = out(f"results/evaluate/{RUN}/metrics.json")
DATA_HASH = out("results/data/{dataset}/data_hash.txt")
ANALYSIS = out("results/analysis/{dataset}/{model}")
TABLES = out("results/tables/{dataset}")
KERNELS_CSV = out("results/bench/kernels.csv")

_SCHEME = r"fp|ls-1|ls-2|ls-T|gf-[1-9][0-9]*"


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    model=r"[a-z][a-z0-9_]*",
    x_quant=_SCHEME,
    w_quant=_SCHEME,
    seed=r"[0-9]+",


def runs(pattern, models=None, schemes=None, seeds=None):
    """`pattern` expanded over the configured (model, scheme pair, seed) combinations."""
    return [
        pattern.format(dataset=DATASET, model=m, x_quant=x, w_quant=w, seed=s)
        for m in (models or MODELS)
        for (x, w) in (schemes or SCHEMES)
        for s in (seeds or SEEDS)
    ]


def is_teacher(wc):
    return wc.x_quant == "fp" and wc.w_quant == "fp"


def recipe(wc):
    """The training config file of this run (the teacher's for fp/fp, else the students'), or None."""
    return config["recipes"][wc.model]["teacher" if is_teacher(wc) else "student"]


def recipe_sets(wc):
    """The recipe's `--set` overrides: profile-wide, per model, per role, per student."""
    r = config["recipes"][wc.model]
    role = r.get("teacher_set", []) if is_teacher(wc) else r.get("student_set", [])
    return [*config["set"], *r.get("set", []), *role, *STUDENT_SETS.get((wc.x_quant, wc.w_quant), [])]


def teacher_checkpoint(wc):
    return CHECKPOINT.format(dataset=wc.dataset, model=wc.model, x_quant="fp", w_quant="fp", seed=wc.seed)


def train_inputs(wc):
    """Inputs of a training job. All are ancient(): a checkpoint restored by `dvc pull` is not retrained because
    its inputs happen to carry newer timestamps. Edits of the recipe are caught by the params trigger on
    recipe_fingerprint instead, and a retrained teacher still retrains its students (an upstream job ran)."""
    inputs = {"data": ancient(DATA_HASH.format(dataset=wc.dataset))}
    if recipe(wc) is not None:
        inputs["recipe"] = ancient(recipe(wc))
    if config["kd"] and not is_teacher(wc):
        inputs["teacher"] = ancient(teacher_checkpoint(wc))
    return inputs


def train_overrides(wc, threads):
    """`--config RECIPE` and the `--set` overrides of a run: data, schemes, seed, KD teacher, threads, tracking,
    then the recipe's own overrides (recipe_sets)."""
    sets = [
        f"seed={wc.seed}",
        f"data.name={config['dataset']}",
        f"data.root={config['data_root']}",
        f"model.x_quant={wc.x_quant}",
        f"model.w_quant={wc.w_quant}",
        f"threads={threads}",
        f"tracking.uri={MLFLOW_URI}",
        f"tracking.experiment={MLFLOW_EXPERIMENT}",
    ]
    if config["image_size"] is not None:
        sets.append(f"data.image_size={config['image_size']}")
    if config["kd"] and not is_teacher(wc):
        sets.append(f"kd.teacher={teacher_checkpoint(wc)}")
    sets += recipe_sets(wc)
    args = [f"--config {recipe(wc)}"] if recipe(wc) is not None else []
    args += [f"--set '{s}'" for s in sets]
    return " ".join(args)


def recipe_fingerprint(wc):
    """Content of the recipe and of the overrides that change what is learned: a `params` rerun trigger."""
    import hashlib

    parts = [
        Path(recipe(wc)).read_text() if recipe(wc) is not None and Path(recipe(wc)).is_file() else "",
        *recipe_sets(wc),
        f"kd={config['kd']}",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def all_cores():
    """Every core Snakemake may use (--cores), for jobs that must run alone; 1 when no --cores was given
    (--unlock, --report, ...), where no job runs."""
    try:
        return workflow.cores
    except WorkflowError:
        return 1


def launcher():
    """`lsqbq train`, or torchrun with one process per GPU when a job has several GPUs."""
    if config["gpus"] > 1:
        return f"torchrun --standalone --nproc-per-node={config['gpus']} -m lsqbq.train"
    return "lsqbq train"


def final_targets():
    targets = [
        out(f"results/tables/{DATASET}/qat.md"),
        out(f"results/tables/{DATASET}/qat.csv"),
        out(f"results/tables/{DATASET}/qat_runs.csv"),
    ]
    if config["analysis"]["enabled"]:
        targets += [
            out(f"results/tables/{DATASET}/ptq.md"),
            out(f"results/tables/{DATASET}/error.md"),
            out(f"results/tables/{DATASET}/angles.png"),
        ]
    if config["bench"]["kernels"]:
        targets.append(out(f"results/tables/{DATASET}/pareto.png"))
    if config["bench"]["quantizers"]:
        targets.append(out("results/bench/quantizers.csv"))
    if config["bench"]["training"]:
        targets.append(out("results/bench/training.csv"))
    return targets


def teacher_of_seed(seed):
    """Input function: the fp teacher checkpoint of `seed` for the job's dataset and model."""
    return lambda wc: CHECKPOINT.format(dataset=wc.dataset, model=wc.model, x_quant="fp", w_quant="fp", seed=seed)


def error_args():
    """`lsqbq analyze error` sizes from config["analysis"]."""
    a = config["analysis"]
    args = f"--images {a['images']} --rows {a['rows']} --n {a['n']}"
    return args + (f" --lloyd-rows {a['lloyd_rows']}" if a["lloyd_rows"] else "")


def ptq_args():
    a = config["analysis"]
    return f"--test-subset {a['test_subset']}" if a["test_subset"] else ""


def table_inputs(wc):
    """Everything the tables of one dataset are built from."""
    inputs = {
        "train": runs(TRAIN_METRICS),
        "paper": config["paper_numbers"],
    }
    if config["evaluate"]:
        inputs["evaluate"] = runs(EVAL_METRICS)
    if config["analysis"]["enabled"]:
        inputs["ptq"] = runs(f"{ANALYSIS}/ptq_{{x_quant}}_{{w_quant}}_s{{seed}}.csv", schemes=[("fp", "fp")])
        inputs["error"] = [f"{ANALYSIS}/error.csv".format(dataset=wc.dataset, model=m) for m in MODELS]
        inputs["angles"] = [f"{ANALYSIS}/angles.csv".format(dataset=wc.dataset, model=m) for m in MODELS]
    if config["bench"]["kernels"]:
        inputs["kernels"] = KERNELS_CSV
    return inputs


def table_args(wc, input):
    """`lsqbq tables` arguments naming every input file."""
    args = []
    for key in ("train", "evaluate", "ptq", "error", "angles"):
        if key in input.keys():
            args.append(f"--{key} " + " ".join(getattr(input, key)))
    if "kernels" in input.keys():
        args.append(f"--kernels {input.kernels}")
    return " ".join(args)


def table_outputs():
    """Named outputs of make_tables; report() marks what goes into `snakemake --report`."""
    outputs = {
        "qat_md": report(f"{TABLES}/qat.md", caption="../report/qat.rst", category="Tables"),
        "qat_csv": f"{TABLES}/qat.csv",
        "runs_csv": f"{TABLES}/qat_runs.csv",
    }
    if config["analysis"]["enabled"]:
        outputs |= {
            "ptq_md": report(f"{TABLES}/ptq.md", caption="../report/ptq.rst", category="Tables"),
            "ptq_csv": f"{TABLES}/ptq.csv",
            "error_md": report(f"{TABLES}/error.md", caption="../report/error.rst", category="Tables"),
            "error_csv": f"{TABLES}/error.csv",
            "angles": report(f"{TABLES}/angles.png", caption="../report/angles.rst", category="Figures"),
        }
    if config["bench"]["kernels"]:
        outputs |= {
            "pareto_md": f"{TABLES}/pareto.md",
            "pareto_csv": f"{TABLES}/pareto.csv",
            "pareto": report(f"{TABLES}/pareto.png", caption="../report/pareto.rst", category="Figures"),
        }
    return outputs
