# Stage 2: training. The fp/fp run of each (model, seed) is the teacher; every student
# (x_quant, w_quant) distils from the teacher of the same model and seed.
#
# Training writes into checkpoints/.../partial-<recipe fingerprint>/ and `--resume`s from it, so a killed job
# continues where it stopped on the next `snakemake` call (Snakemake deletes the declared outputs of an
# incomplete job, never this directory; it holds the working resume.pt with the optimiser state). A finished
# run's published files (the slim checkpoint.pt, metrics.json, config.yaml) are moved to checkpoints/.../ and the
# MLflow run's artifact location is pointed at that directory: `mlflow ui` serves the DVC-tracked files themselves,
# so no byte of a checkpoint is stored twice.


rule train_all:
    input:
        runs(CHECKPOINT),


rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoint=CHECKPOINT,
        metrics=TRAIN_METRICS,
        config=TRAIN_CONFIG,
    params:
        launcher=launcher(),
        overrides=lambda wc, threads: train_overrides(wc, threads),
        fingerprint=recipe_fingerprint,
        work=lambda wc, output: str(Path(output.checkpoint).parent / f"partial-{recipe_fingerprint(wc)}"),
        final=lambda wc, output: str(Path(output.checkpoint).parent),
        attach=lambda wc, output: attach_artifacts(Path(output.checkpoint).parent),
    threads: config["threads"]
    resources:
        mem_mb=config["mem_mb"],
        runtime=config["runtime"],
        gpu=config["gpus"],
    log:
        out(f"logs/train/{RUN}.log"),
    benchmark:
        out(f"benchmarks/train/{RUN}.tsv")
    message:
        "Train {wildcards.model} (activations {wildcards.x_quant}, weights {wildcards.w_quant}, seed {wildcards.seed}) on {wildcards.dataset}"
    conda:
        CONDA_ENV
    shell:
        "LSQBQ_THREADS={threads} OMP_NUM_THREADS={threads} "
        "{params.launcher} {params.overrides} --out {params.work:q} --resume > {log:q} 2>&1 "
        "&& mv {params.work:q}/checkpoint.pt {params.work:q}/metrics.json {params.work:q}/config.yaml "
        "{params.final:q}/ "
        "&& rm -rf {params.final:q}/partial-* "
        "{params.attach} "
        "&& cp {params.final:q}/metrics.json {output.metrics:q} && cp {params.final:q}/config.yaml {output.config:q}"
