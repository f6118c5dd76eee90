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
        size=bench_size(),
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
        "LSQBQ_THREADS={threads} OMP_NUM_THREADS={threads} MLFLOW_TRACKING_URI={params.mlflow:q} "
        "lsqbq bench kernels --out {params.dir:q} {params.size} {params.extra} > {log:q} 2>&1"


# Quantizer cost (fit + encode vs torch.sort; QuantConv2d training step per scheme vs gf-2), alone.
rule bench_quantizers:
    output:
        csv=out("results/bench/quantizers.csv"),
        md=report(out("results/bench/quantizers.md"), caption="../report/kernels.rst", category="Quantizer cost"),
    params:
        dir=lambda wc, output: str(Path(output.csv).parent),
        size=bench_size(),
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
        "LSQBQ_THREADS={threads} lsqbq bench quantizers --out {params.dir:q} --threads {threads} {params.size} "
        "> {log:q} 2>&1"


# Training throughput per activation scheme (images/s relative to fp) of the default ResNet recipe, alone.
rule bench_training:
    output:
        csv=out("results/bench/training.csv"),
    params:
        dir=lambda wc, output: str(Path(output.csv).parent),
        recipe=config["recipes"][MODELS[0]]["student"],
        size=bench_size(),
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
        "lsqbq bench training --config {params.recipe:q} --out {params.dir:q} {params.size} > {log:q} 2>&1"


# Whole-model latency: ResNet-18 (ImageNet and CIFAR shape) and the first seed's quantized checkpoints (simulated,
# fp32 teacher, bitwise with the trained and the stored activation scales) at batch 1 and 256, 1 and all threads,
# alone on the machine. The checkpoints are ancient() inputs, as for training: checkpoints restored by `dvc pull`
# do not re-time the committed results (`make retrain` re-times them with --forcerun bench_models).
rule bench_models:
    input:
        checkpoints=ancient(runs(CHECKPOINT, schemes=[(FP, FP), *BITWISE_STUDENTS], seeds=SEEDS[:1])),
    output:
        csv=out("results/bench/models.csv"),
        md=report(out("results/bench/models.md"), caption="../report/kernels.rst", category="Kernel latency"),
        headline=out("results/bench/models_headline.md"),
    params:
        dir=lambda wc, output: str(Path(output.csv).parent),
        root=lambda wc, input: str(Path(input.checkpoints[0]).parents[3]),  # checkpoints/<dataset>
        seed=SEEDS[0],
        mlflow=MLFLOW_URI,
        size=bench_size(),
    threads: all_cores()
    log:
        out("logs/bench/models.log"),
    benchmark:
        out("benchmarks/bench/models.tsv")
    message:
        "Benchmark whole models bitwise vs fp32 (alone, {threads} threads)"
    conda:
        CONDA_ENV
    shell:
        "LSQBQ_THREADS={threads} OMP_NUM_THREADS={threads} MLFLOW_TRACKING_URI={params.mlflow:q} "
        "lsqbq bench models --out {params.dir:q} --checkpoints {params.root:q} --seeds {params.seed:q} --float-parts fp32,int8 "
        "{params.size} "
        "> {log:q} 2>&1"


# The same binary ResNet-18 through lsqbq and the engines users already run (OpenVINO's binary convolution, OpenVINO
# and ONNX Runtime fp32 / bf16 / int8), alone; a peer that is not installed is a skipped row (`lsqbq[peers]`).
rule bench_peers:
    output:
        csv=out("results/bench/peers.csv"),
        md=report(out("results/bench/peers.md"), caption="../report/kernels.rst", category="Kernel latency"),
        headline=out("results/bench/peers_headline.md"),
        profile=out("results/bench/peers_profile.md"),
    params:
        dir=lambda wc, output: str(Path(output.csv).parent),
        mlflow=MLFLOW_URI,
        size=bench_size(),
    threads: all_cores()
    log:
        out("logs/bench/peers.log"),
    benchmark:
        out("benchmarks/bench/peers.tsv")
    message:
        "Benchmark lsqbq beside OpenVINO and ONNX Runtime (alone, {threads} threads)"
    conda:
        CONDA_ENV
    shell:
        "MLFLOW_TRACKING_URI={params.mlflow:q} lsqbq bench peers --out {params.dir:q} {params.size} > {log:q} 2>&1"
