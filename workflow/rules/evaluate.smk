# Stage 3: evaluation of every checkpoint as stored on disk (the number a `dvc pull` user gets), reported
# beside the metric logged at the end of training.


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
        "lsqbq evaluate --checkpoint {input.checkpoint} --out {output.metrics} > {log} 2>&1"
