# Stage 1: the dataset. Fashion-MNIST is DVC-tracked (`dvc pull`); otherwise `lsqbq data prepare` copies it
# from the Debian package dataset-fashion-mnist or downloads it. User data (ImageNet, ImageFolder) is only
# verified. The output records the data hash that every training run logs.


rule prepare_data:
    output:
        data_hash=DATA_HASH,
    params:
        command="prepare" if config["prepare_data"] else "hash",
        name=config["dataset"],
        root=config["data_root"],
    log:
        out("logs/prepare_data/{dataset}.log"),
    message:
        "Prepare and verify {params.name} in {params.root}"
    conda:
        CONDA_ENV
    shell:
        "lsqbq data {params.command} {params.name:q} --root {params.root:q} > {output.data_hash:q} 2> {log:q}"
