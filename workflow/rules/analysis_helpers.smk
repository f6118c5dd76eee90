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
