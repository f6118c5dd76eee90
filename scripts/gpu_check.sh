#!/usr/bin/env bash
# GPU path check (a few minutes on one GPU): one epoch of a CIFAR-style ResNet-18 on random CIFAR-shaped
# data with CUDA + AMP (ls-2 activations, ls-1 weights, KD-free), then the same as a 1-GPU torchrun job.
# Usage: scripts/gpu_check.sh            (from the project root; needs the project's .venv or PYTHON=...)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" - "$WORK/cifar10" <<'PY'
import pickle, sys
from pathlib import Path
import numpy as np
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
root = Path(sys.argv[1]) / "cifar-10-batches-py"
root.mkdir(parents=True)
rng = np.random.default_rng(0)
for name, n in [(f"data_batch_{i}", 2000) for i in range(1, 6)] + [("test_batch", 2000)]:
    with open(root / name, "wb") as f:
        pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     "labels": rng.integers(0, 10, n).tolist()}, f)
PY

COMMON=(--config config/train/cifar10_resnet18.yaml --set "data.root=$WORK/cifar10" --set epochs=1
        --set device=cuda --set amp=true --set data.workers=4 --set model.x_quant=ls-2 --set model.w_quant=ls-1
        --set model.block=xnor --set "tracking.uri=sqlite:///$WORK/mlflow.db" --set tracking.experiment=gpu-check)

echo "== 1/2 single process, CUDA + AMP"
start=$(date +%s)
"$PYTHON" -m lsqbq.train "${COMMON[@]}" --out "$WORK/single"
echo "single-process epoch: $(( $(date +%s) - start )) s"

echo "== 2/2 torchrun, 1 GPU (NCCL)"
start=$(date +%s)
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 -m lsqbq.train "${COMMON[@]}" --out "$WORK/torchrun"
echo "torchrun epoch: $(( $(date +%s) - start )) s"

"$PYTHON" - "$WORK" <<'PY'
import json, sys
for name in ("single", "torchrun"):
    m = json.load(open(f"{sys.argv[1]}/{name}/metrics.json"))
    print(f"{name:9s} top1 {m['top1']:.2f} (random labels: ~10) loss {m['loss']:.3f} device {m['device']} "
          f"{m['images_per_s']:.0f} img/s run {m['run_id']}")
PY
echo "GPU check passed"
