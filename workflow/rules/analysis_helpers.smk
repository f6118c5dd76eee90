# Helpers of the analyses (rules/analysis.smk). Functions only; names from common.smk.


def teacher_of_seed(seed):
    """Input function: the fp teacher checkpoint of `seed` for the job's dataset and model."""
    return lambda wc: CHECKPOINT.format(dataset=wc.dataset, model=wc.model, x_quant=FP, w_quant=FP, seed=seed)


def error_args():
    """`lsqbq analyze error` sizes from config["analysis"]."""
    a = config["analysis"]
    args = f"--images {a['images']} --rows {a['rows']} --n {a['n']}"
    return args + (f" --lloyd-rows {a['lloyd_rows']}" if a["lloyd_rows"] else "")


def ptq_args():
    a = config["analysis"]
    return f"--test-subset {a['test_subset']}" if a["test_subset"] else ""


# The students whose quantizer inputs `analyze_angles` measures beside the teacher's (same seed), when configured.
ANGLE_STUDENTS = [("ls-2", "ls-1")]
ANGLE_SWEEP = out("results/analysis/synthetic/angle_sweep.csv")

# Each analysis job writes its MLflow run to a run record (--run-record) under logs/; record_analyses records
# them all in one process (python -m lsqbq.tracking record), as record_evaluations does for the evaluations.
ANALYSIS_RECORD = out("logs/analysis/{dataset}/{model}/{name}.run.json")
SWEEP_RECORD = out("logs/analysis/angle_sweep.run.json")
ANALYSIS_RECORDED = out("logs/analysis/{dataset}.mlflow.txt")


def analysis_record(name):
    """The run record of the analysis `name` (a Snakemake pattern: it may hold wildcards) of one model."""
    return ANALYSIS_RECORD.replace("{name}", name)


def analysis_records(wc):
    """Every analysis run record of the dataset: error per model, ptq and angles per teacher seed, the sweep."""
    teacher_runs = lambda name: runs(analysis_record(name), schemes=[(FP, FP)])
    errors = [analysis_record("error").format(dataset=wc.dataset, model=m) for m in MODELS]
    return errors + teacher_runs("ptq_{x_quant}_{w_quant}_s{seed}") + teacher_runs(
        "angles_{x_quant}_{w_quant}_s{seed}") + [SWEEP_RECORD]


def angle_students(wc):
    """Input function: the checkpoints of the configured ANGLE_STUDENTS distilled from this teacher (its seed)."""
    return [
        CHECKPOINT.format(dataset=wc.dataset, model=wc.model, x_quant=x, w_quant=w, seed=wc.seed)
        for x, w in ANGLE_STUDENTS
        if (x, w) in STUDENTS and int(wc.seed) in seeds_of(wc.model, (x, w))
    ]


def quoted(paths):
    """`paths` shell-quoted, space-separated ("" for none)."""
    import shlex

    return " ".join(shlex.quote(p) for p in paths)
