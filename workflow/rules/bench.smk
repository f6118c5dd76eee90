# Stage 5: latency of the bitwise (XNOR/popcount) kernels against fp32 and int8 on this machine.
# The job takes every core, so Snakemake runs it alone and nothing else disturbs the timings.


rule bench_kernels:
    output:
        csv=KERNELS_CSV,
        md=report(out("results/bench/kernels.md"), caption="../report/kernels.rst", category="Kernel latency"),
        headline=out("results/bench/kernels_headline.md"),
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


# Quantizer cost (fit + encode vs torch.sort; QuantConv2d training step per scheme vs gf-2), alone.
rule bench_quantizers:
    output:
        csv=out("results/bench/quantizers.csv"),
        md=report(out("results/bench/quantizers.md"), caption="../report/kernels.rst", category="Quantizer cost"),
    params:
        dir=lambda wc, output: str(Path(output.csv).parent),
        quick="--quick" if config["bench"]["quick"] else "",
    threads: all_cores()
    log:
        out("logs/bench/quantizers.log"),
    benchmark:
        out("benchmarks/bench/quantizers.tsv")
    message:
        "Benchmark the quantizers (alone, {threads} threads)"
    conda:
        CONDA_ENV
    shell:
        "LSQBQ_THREADS={threads} lsqbq bench quantizers --out {params.dir} --threads {threads} {params.quick} "
        "> {log} 2>&1"


# Training throughput per activation scheme (images/s relative to fp) of the default ResNet recipe, alone.
rule bench_training:
    output:
        csv=out("results/bench/training.csv"),
    params:
        dir=lambda wc, output: str(Path(output.csv).parent),
        recipe=config["recipes"][MODELS[0]]["student"],
        quick="--quick" if config["bench"]["quick"] else "",
    threads: all_cores()
    log:
        out("logs/bench/training.log"),
    benchmark:
        out("benchmarks/bench/training.tsv")
    message:
        "Benchmark training throughput per scheme (alone)"
    conda:
        CONDA_ENV
    shell:
        "lsqbq bench training --config {params.recipe} --out {params.dir} {params.quick} > {log} 2>&1"
