# Stage 6: tables, figures and the claims table (markdown for readers, CSV with provenance) in
# results/tables/{dataset}/, built from the per-run results alone.


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
        "Tables, figures and the claims table for {wildcards.dataset}"
    conda:
        CONDA_ENV
    shell:
        "lsqbq tables --dataset {wildcards.dataset} --out {params.out:q} --paper {input.paper:q} {params.args} "
        "> {log:q} 2>&1"
