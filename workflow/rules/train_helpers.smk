# Helpers of the training jobs (rules/train.smk): recipe, inputs, `--set` overrides, rerun fingerprint,
# launcher. Functions only (rules live in train.smk); the names they use come from common.smk.


def recipe(wc):
    """The training config file of this run (the teacher's for fp/fp, else the students'), or None."""
    return config["recipes"][wc.model]["teacher" if is_teacher(wc) else "student"]


def recipe_sets(wc):
    """The recipe's `--set` overrides: profile-wide, per model, per role, per student."""
    r = config["recipes"][wc.model]
    role = r.get("teacher_set", []) if is_teacher(wc) else r.get("student_set", [])
    return [*config["set"], *r.get("set", []), *role, *STUDENT_SETS.get((wc.x_quant, wc.w_quant), [])]


def teacher_checkpoint(wc):
    return CHECKPOINT.format(dataset=wc.dataset, model=wc.model, x_quant=FP, w_quant=FP, seed=wc.seed)


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
        f"model.name={wc.model}",  # the model the job's path names, whatever the recipe (or none) says
        f"model.x_quant={wc.x_quant}",
        f"model.w_quant={wc.w_quant}",
        f"threads={threads}",
        f"tracking.uri={MLFLOW_URI}",
        f"tracking.experiment={MLFLOW_EXPERIMENT}",
        "tracking.log_checkpoint=false",  # the run's artifacts are the published files themselves (attach_artifacts)
    ]
    if config["image_size"] is not None:
        sets.append(f"data.image_size={config['image_size']}")
    if config["kd"] and not is_teacher(wc):
        sets.append(f"kd.teacher={teacher_checkpoint(wc)}")
    sets += recipe_sets(wc)
    import shlex  # values may hold spaces or quotes (a data_root with a space): quote them for the shell

    args = [f"--config {shlex.quote(recipe(wc))}"] if recipe(wc) is not None else []
    args += [f"--set {shlex.quote(s)}" for s in sets]
    return " ".join(args)


def recipe_fingerprint(wc):
    """Content of the recipe (its parsed YAML: comments and layout do not count) and of the overrides that change
    what is learned: a `params` rerun trigger."""
    import hashlib
    import json

    path = recipe(wc)
    parsed = yaml.safe_load(Path(path).read_text()) if path is not None and Path(path).is_file() else None
    parts = [
        json.dumps(parsed, sort_keys=True),
        *recipe_sets(wc),
        f"kd={config['kd']}",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def launcher():
    """`lsqbq train`, or torchrun with one process per GPU when a job has several GPUs."""
    if config["gpus"] > 1:
        return f"torchrun --standalone --nproc-per-node={config['gpus']} -m lsqbq.train"
    return "lsqbq train"


def attach_artifacts(final):
    """Shell suffix pointing the training run's MLflow artifact location at its published directory (the files
    DVC versions)."""
    import shlex

    d = shlex.quote(str(final))
    return f"&& python -m lsqbq.tracking attach --metrics {d}/metrics.json --dir {d} --uri {shlex.quote(MLFLOW_URI)}"
