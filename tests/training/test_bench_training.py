"""The training-throughput benchmark writes one row per scheme with ratios to fp/fp."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lsqbq.bench.training import CONFIGS, main

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_training_quick(tmp_path):
    assert main(["--quick", "--config", str(PROJECT / "config" / "train" / "fmnist_resnet.yaml"),
                 "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "training.csv")
    assert list(zip(df.x_quant, df.w_quant)) == list(CONFIGS)
    fp = df[(df.x_quant == "fp") & (df.w_quant == "fp")].iloc[0]
    assert fp.relative_to_fp == 1.0
    assert ((df.images_per_s > 0) & (abs(df.relative_to_fp - df.images_per_s / fp.images_per_s) < 0.01)).all()
