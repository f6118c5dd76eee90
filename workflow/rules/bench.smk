# Stage 5: latency of the bitwise (XNOR/popcount) kernels against fp32 and int8 on this machine.
# The job takes every core, so Snakemake runs it alone and nothing else disturbs the timings.


rule bench_kernels:
    output:
        csv=KERNELS_CSV,
        md=report(out("results/bench/kernels.md"), caption="../report/kernels.rst", category="Kernel latency"),
        png=report(out("results/bench/kernels.png"), caption="../report/kernels.rst", category="Kernel latency"),
    params:
        dir=lambda wc, output: str(Path(output.csv).parent),
        mlflow=MLFLOW_URI,
        quick="--quick" if config["bench"]["quick"] else "",
        extra=" ".join(config["bench"]["args"]),
    threads: all_cores()
    log:
        out("logs/bench/kernels.log"),
    benchmark:
        out("benchmarks/bench/kernels.tsv")
    message:
        "Benchmark the bitwise kernels (alone, {threads} threads)"
    conda:
        CONDA_ENV
    shell:
        "LSQBQ_THREADS={threads} OMP_NUM_THREADS={threads} MLFLOW_TRACKING_URI='{params.mlflow}' "
        "lsqbq bench kernels --out {params.dir} {params.quick} {params.extra} > {log} 2>&1"
