# Helpers of make_tables (rules/tables.smk): its inputs, arguments and report outputs. Functions only.


def table_inputs(wc):
    """Everything the tables of one dataset are built from."""
    inputs = {
        "train": runs(TRAIN_METRICS),
        "paper": config["paper_numbers"],
    }
    if config["evaluate"]:
        inputs["evaluate"] = runs(EVAL_METRICS)
        inputs["predictions"] = runs(EVAL_PREDICTIONS)  # read beside each metrics.json by the claims table
    if config["analysis"]["enabled"]:
        inputs["ptq"] = runs(f"{ANALYSIS}/ptq_{{x_quant}}_{{w_quant}}_s{{seed}}.csv", schemes=[(FP, FP)])
        inputs["error"] = [f"{ANALYSIS}/error.csv".format(dataset=wc.dataset, model=m) for m in MODELS]
        inputs["angles"] = runs(f"{ANALYSIS}/angles_{{x_quant}}_{{w_quant}}_s{{seed}}.csv", schemes=[(FP, FP)])
        inputs["angle_sweep"] = ANGLE_SWEEP  # the synthetic reference of the angle rows (not read by the tables)
    if config["evaluate_bitwise"]:
        inputs["bitwise"] = runs(EVAL_BITWISE, schemes=BITWISE_STUDENTS)
    if config["bench"]["models"]:
        inputs["models_bench"] = out("results/bench/models.csv")
    if config["bench"]["training"]:
        inputs["training_bench"] = out("results/bench/training.csv")
    return inputs


def table_args(wc, input):
    """`lsqbq tables` arguments naming every input file (shell-quoted)."""
    import shlex

    args = []
    for key in ("train", "evaluate", "bitwise", "ptq", "error", "angles"):
        if key in input.keys():
            args.append(f"--{key} " + " ".join(shlex.quote(p) for p in getattr(input, key)))
    if "models_bench" in input.keys():
        args.append(f"--models-bench {shlex.quote(input.models_bench)}")
    if "training_bench" in input.keys():
        args.append(f"--training-bench {shlex.quote(input.training_bench)}")
    return " ".join(args)


def table_outputs():
    """Named outputs of make_tables; report() marks what goes into `snakemake --report`."""
    outputs = {
        "qat_md": f"{TABLES}/qat.md",
        "qat_html": report(f"{TABLES}/qat.html", caption="../report/qat.rst", category="Tables"),
        "qat_csv": f"{TABLES}/qat.csv",
        "runs_csv": f"{TABLES}/qat_runs.csv",
        "claims_md": f"{TABLES}/claims.md",
        "claims_html": report(f"{TABLES}/claims.html", caption="../report/claims.rst", category="Tables"),
        "claims_csv": f"{TABLES}/claims.csv",
    }
    if config["analysis"]["enabled"]:
        outputs |= {
            "ptq_md": f"{TABLES}/ptq.md",
            "ptq_html": report(f"{TABLES}/ptq.html", caption="../report/ptq.rst", category="Tables"),
            "ptq_csv": f"{TABLES}/ptq.csv",
            "error_md": f"{TABLES}/error.md",
            "error_html": report(f"{TABLES}/error.html", caption="../report/error.rst", category="Tables"),
            "error_csv": f"{TABLES}/error.csv",
            "angles_csv": f"{TABLES}/angles.csv",
            "angles": report(f"{TABLES}/angles.png", caption="../report/angles.rst", category="Figures"),
        }
    if config["evaluate"] and any(not get_scheme(x).is_fp for x, _ in STUDENTS):
        outputs |= {
            "inference_md": f"{TABLES}/inference.md",
            "inference_html": report(f"{TABLES}/inference.html", caption="../report/inference.rst",
                                     category="Tables"),
            "inference_csv": f"{TABLES}/inference.csv",
        }
    if config["bench"]["models"]:
        outputs |= {
            "pareto_md": f"{TABLES}/pareto.md",
            "pareto_html": f"{TABLES}/pareto.html",
            "pareto_csv": f"{TABLES}/pareto.csv",
            "pareto": report(f"{TABLES}/pareto.png", caption="../report/pareto.rst", category="Figures"),
        }
    return outputs
