# Stage 3: evaluation of every checkpoint as stored on disk (the number a `dvc pull` user gets), reported
# beside the metric logged at the end of training, with activation scales fitted per sample and with the moving
# averages recorded in training (top1_fitted, top1_stored, scale_gap).


rule evaluate:
    input:
        checkpoint=CHECKPOINT,
        data=DATA_HASH,
    output:
        metrics=EVAL_METRICS,
    threads: config["threads"]
    log:
        out(f"logs/evaluate/{RUN}.log"),
    message:
        "Evaluate {wildcards.model} a={wildcards.x_quant} w={wildcards.w_quant} s{wildcards.seed} on {wildcards.dataset}"
    conda:
        CONDA_ENV
    shell:
        "LSQBQ_THREADS={threads} OMP_NUM_THREADS={threads} "
        "lsqbq evaluate --checkpoint {input.checkpoint:q} --scales both --out {output.metrics:q} > {log:q} 2>&1"


# Bitwise evaluation: every quantized student (both schemes quantized) converted with lsqbq.kernels.to_bitwise
# and run on XNOR/popcount kernels over the same test set, beside its simulated model: top-1 of each, their
# agreement and the largest logit difference (results/evaluate/<run>/bitwise.json).
EVAL_BITWISE = out(f"results/evaluate/{RUN}/bitwise.json")
BITWISE_STUDENTS = [(x, w) for x, w in STUDENTS if not get_scheme(x).is_fp and not get_scheme(w).is_fp]


rule evaluate_bitwise:
    input:
        checkpoint=CHECKPOINT,
        data=DATA_HASH,
    output:
        metrics=EVAL_BITWISE,
    threads: config["threads"]
    log:
        out(f"logs/evaluate/{RUN}.bitwise.log"),
    message:
        "Evaluate {wildcards.model} a={wildcards.x_quant} w={wildcards.w_quant} s{wildcards.seed} bitwise on {wildcards.dataset}"
    conda:
        CONDA_ENV
    shell:
        "LSQBQ_THREADS={threads} OMP_NUM_THREADS={threads} "
        "python -m lsqbq.kernels.evaluation --checkpoint {input.checkpoint:q} --out {output.metrics:q} > {log:q} 2>&1"


rule evaluate_bitwise_all:
    input:
        runs(EVAL_BITWISE, schemes=BITWISE_STUDENTS),
