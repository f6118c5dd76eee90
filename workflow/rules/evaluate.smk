# Stage 3: evaluation of every checkpoint as stored on disk (the number a `dvc pull` user gets), one job per
# checkpoint and one pass over the test set: the metrics with activation scales fitted per sample and with the
# moving averages recorded in training (top1_fitted, top1_stored, scale_gap), every test image's prediction
# (predictions.npy, for the claims' test-set uncertainty) and, for the students whose activations and weights
# are both quantized, the same checkpoint converted with lsqbq.kernels.to_bitwise and run on XNOR/popcount
# kernels beside its simulated model (bitwise.json: top-1 of each, their agreement, the largest logit
# difference).

# Paths, BITWISE_STUDENTS and scheme_alternation live in rules/common.smk. The jobs write files only
# (--no-track); record_evaluations logs them all as MLflow runs in one process.


rule evaluate:
    input:
        checkpoint=CHECKPOINT,
        data=DATA_HASH,
    output:
        metrics=EVAL_METRICS,
        predictions=EVAL_PREDICTIONS,
    threads: config["threads"]
    log:
        out(f"logs/evaluate/{RUN}.log"),
    message:
        "Evaluate {wildcards.model} a={wildcards.x_quant} w={wildcards.w_quant} s{wildcards.seed} on {wildcards.dataset}"
    conda:
        CONDA_ENV
    shell:
        "LSQBQ_THREADS={threads} OMP_NUM_THREADS={threads} "
        "lsqbq evaluate --checkpoint {input.checkpoint:q} --scales both --out {output.metrics:q} "
        "--predictions {output.predictions:q} --no-track > {log:q} 2>&1"


if config["evaluate_bitwise"]:

    rule evaluate_with_bitwise:
        input:
            checkpoint=CHECKPOINT,
            data=DATA_HASH,
        output:
            metrics=EVAL_METRICS,
            predictions=EVAL_PREDICTIONS,
            bitwise=EVAL_BITWISE,
        wildcard_constraints:
            x_quant=scheme_alternation(x for x, _ in BITWISE_STUDENTS),
            w_quant=scheme_alternation(w for _, w in BITWISE_STUDENTS),
        threads: config["threads"]
        log:
            out(f"logs/evaluate/{RUN}.log"),
        message:
            "Evaluate {wildcards.model} a={wildcards.x_quant} w={wildcards.w_quant} s{wildcards.seed} on {wildcards.dataset}, simulated and bitwise"
        conda:
            CONDA_ENV
        shell:
            "LSQBQ_THREADS={threads} OMP_NUM_THREADS={threads} "
            "lsqbq evaluate --checkpoint {input.checkpoint:q} --scales both --out {output.metrics:q} "
            "--predictions {output.predictions:q} --bitwise-out {output.bitwise:q} --no-track > {log:q} 2>&1"

    ruleorder: evaluate_with_bitwise > evaluate


rule record_evaluations:
    input:
        metrics=runs(EVAL_METRICS),
        bitwise=runs(EVAL_BITWISE, schemes=BITWISE_STUDENTS) if config["evaluate_bitwise"] else [],
    output:
        done=EVAL_RECORDED,
    log:
        out("logs/evaluate/{dataset}.mlflow.log"),
    message:
        "Record the {wildcards.dataset} evaluations as MLflow runs (those not yet in the store)"
    conda:
        CONDA_ENV
    shell:
        "python -m lsqbq.evaluation_runs --done {output.done:q} {input.metrics:q} > {log:q} 2>&1"


rule evaluate_all:
    input:
        runs(EVAL_METRICS),
        runs(EVAL_BITWISE, schemes=BITWISE_STUDENTS) if config["evaluate_bitwise"] else [],
