# Stage 4: analyses of the fp teachers (paper V1 Sec. 3 and 5.1, Table 1 top rows, Fig. 4):
# quantization error vs Lloyd-Max and the official skip-3 search, post-training weight quantization,
# and the per-layer angle / relative error of quantized activations.


rule analyze_error:
    input:
        checkpoint=teacher_of_seed(SEED0),
        data=DATA_HASH,
    output:
        csv=report(f"{ANALYSIS}/error.csv", caption="../report/error.rst", category="Analyses"),
        md=f"{ANALYSIS}/error.md",
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
        "{params.extra} > {log:q} 2>&1"


rule analyze_ptq:
    input:
        checkpoint=CHECKPOINT,
        data=DATA_HASH,
    output:
        csv=f"{ANALYSIS}/ptq_{{x_quant}}_{{w_quant}}_s{{seed}}.csv",
        md=f"{ANALYSIS}/ptq_{{x_quant}}_{{w_quant}}_s{{seed}}.md",
    params:
        prefix=lambda wc, output: output.csv[: -len(".csv")],
        extra=ptq_args(),
    threads: config["threads"]
    log:
        out("logs/analysis/{dataset}/{model}/ptq_{x_quant}_{w_quant}_s{seed}.log"),
    message:
        "Post-training weight quantization of {wildcards.model} ({wildcards.x_quant}/{wildcards.w_quant}, seed {wildcards.seed})"
    conda:
        CONDA_ENV
    shell:
        "lsqbq analyze ptq --checkpoint {input.checkpoint:q} --out {params.prefix:q} --threads {threads} "
        "{params.extra} > {log:q} 2>&1"


rule analyze_angles:
    input:
        checkpoint=teacher_of_seed(SEED0),
        data=DATA_HASH,
    output:
        csv=f"{ANALYSIS}/angles.csv",
        md=f"{ANALYSIS}/angles.md",
        png=report(f"{ANALYSIS}/angles.png", caption="../report/angles.rst", category="Analyses"),
    params:
        prefix=lambda wc, output: output.csv[: -len(".csv")],
        images=config["analysis"]["images"],
    threads: config["threads"]
    log:
        out("logs/analysis/{dataset}/{model}/angles.log"),
    message:
        "Per-layer angle and relative error of quantized activations of the {wildcards.model} teacher"
    conda:
        CONDA_ENV
    shell:
        "lsqbq analyze angles --checkpoint {input.checkpoint:q} --out {params.prefix:q} --threads {threads} "
        "--images {params.images:q} > {log:q} 2>&1"
