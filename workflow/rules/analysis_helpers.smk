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
