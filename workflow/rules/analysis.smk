# Stage 4: analyses of the fp teachers (paper V1 Sec. 3 and 5.1, Table 1 top rows, Fig. 4):
# quantization error vs Lloyd-Max and the official skip-3 search, post-training weight quantization,
# the per-layer angle / relative error of quantized activations (every teacher seed, with the inputs of its
# students' activation quantizers), and the synthetic Gaussian-to-sparse angle sweep.


rule analyze_error:
    input:
        checkpoint=teacher_of_seed(SEED0),
        data=DATA_HASH,
    output:
        csv=report(f"{ANALYSIS}/error.csv", caption="../report/error.rst", category="Analyses"),
        md=f"{ANALYSIS}/error.md",
        record=analysis_record("error"),
    params:
        prefix=lambda wc, output: output.csv[: -len(".csv")],
        extra=error_args(),
    threads: config["threads"]
    log:
        out("logs/analysis/{dataset}/{model}/error.log"),
    message:
        "Quantization error of every scheme on synthetic data and on the {wildcards.model} teacher"
    conda:
        CONDA_ENV
    shell:
        "lsqbq analyze error --checkpoint {input.checkpoint:q} --out {params.prefix:q} --threads {threads} "
        "{params.extra} --run-record {output.record:q} > {log:q} 2>&1"


rule analyze_ptq:
    input:
        checkpoint=CHECKPOINT,
        data=DATA_HASH,
    output:
        csv=f"{ANALYSIS}/ptq_{{x_quant}}_{{w_quant}}_s{{seed}}.csv",
        md=f"{ANALYSIS}/ptq_{{x_quant}}_{{w_quant}}_s{{seed}}.md",
        record=analysis_record("ptq_{x_quant}_{w_quant}_s{seed}"),
    params:
        prefix=lambda wc, output: output.csv[: -len(".csv")],
        extra=ptq_args(),
    threads: config["threads"]
    # the longest jobs after training (15 passes over the test set): started first, so that the workflow does not
    # end on one of them with the other cores idle
    priority: 1
    log:
        out("logs/analysis/{dataset}/{model}/ptq_{x_quant}_{w_quant}_s{seed}.log"),
    message:
        "Post-training weight quantization of {wildcards.model} ({wildcards.x_quant}/{wildcards.w_quant}, seed {wildcards.seed})"
    conda:
        CONDA_ENV
    shell:
        "lsqbq analyze ptq --checkpoint {input.checkpoint:q} --out {params.prefix:q} --threads {threads} "
        "{params.extra} --run-record {output.record:q} > {log:q} 2>&1"


rule analyze_angles:
    input:
        checkpoint=CHECKPOINT,
        students=angle_students,
        data=DATA_HASH,
    output:
        csv=f"{ANALYSIS}/angles_{{x_quant}}_{{w_quant}}_s{{seed}}.csv",
        md=f"{ANALYSIS}/angles_{{x_quant}}_{{w_quant}}_s{{seed}}.md",
        png=f"{ANALYSIS}/angles_{{x_quant}}_{{w_quant}}_s{{seed}}.png",
        record=analysis_record("angles_{x_quant}_{w_quant}_s{seed}"),
    params:
        prefix=lambda wc, output: output.csv[: -len(".csv")],
        images=config["analysis"]["images"],
        students=lambda wc, input: quoted(input.students),
    threads: config["threads"]
    log:
        out("logs/analysis/{dataset}/{model}/angles_{x_quant}_{w_quant}_s{seed}.log"),
    message:
        "Per-layer angles of the {wildcards.model} teacher (seed {wildcards.seed}) and its students' quantizer inputs"
    conda:
        CONDA_ENV
    shell:
        "lsqbq analyze angles --checkpoint {input.checkpoint:q} --students {params.students} "
        "--out {params.prefix:q} --threads {threads} --images {params.images:q} --run-record {output.record:q} "
        "> {log:q} 2>&1"


rule analyze_sweep:
    output:
        csv=ANGLE_SWEEP,
        md=ANGLE_SWEEP.replace(".csv", ".md"),
        png=ANGLE_SWEEP.replace(".csv", ".png"),
        record=SWEEP_RECORD,
    params:
        prefix=lambda wc, output: output.csv[: -len(".csv")],
    log:
        out("logs/analysis/angle_sweep.log"),
    message:
        "Angles of every scheme on synthetic rows from Gaussian to sparse (spike-and-slab)"
    conda:
        CONDA_ENV
    shell:
        "lsqbq analyze sweep --out {params.prefix:q} --run-record {output.record:q} > {log:q} 2>&1"


rule record_analyses:
    input:
        analysis_records,
    output:
        done=ANALYSIS_RECORDED,
    log:
        out("logs/analysis/{dataset}.mlflow.log"),
    message:
        "Record the {wildcards.dataset} analyses as MLflow runs (those not yet in the store)"
    conda:
        CONDA_ENV
    shell:
        "python -m lsqbq.tracking record --done {output.done:q} {input:q} > {log:q} 2>&1"
