# Stage 6: tables and figures (markdown + CSV with provenance) in results/tables/{dataset}/.


rule make_tables:
    input:
        unpack(table_inputs),
    output:
        **table_outputs(),
    params:
        args=table_args,
        out=lambda wc, output: str(Path(output.qat_md).parent),
    log:
        out("logs/tables/{dataset}.log"),
    message:
        "Tables and figures for {wildcards.dataset}"
    conda:
        CONDA_ENV
    shell:
        "lsqbq tables --dataset {wildcards.dataset} --out {params.out} --paper {input.paper} {params.args} "
        "> {log} 2>&1"
