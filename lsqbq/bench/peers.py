"""The project's binary ResNet-18 beside the CPU engines users already run: ``lsqbq bench peers``.

Usage::

    lsqbq bench peers [--quick | --smoke] [--out results/bench] [--batches 1,16] [--threads 1,2] [--size 224]
    lsqbq bench peers --checkpoints checkpoints/fashion-mnist [--seeds 0]   # trained students beside their
                                                                           # teacher (lsqbq.bench.peers_checkpoints)

Rows (ResNet-18, ImageNet layout, 1000 classes, random weights, every engine fed the same input):

* ``torch fp32``            torchvision ResNet-18, eager, channels_last: the baseline every ratio divides;
* ``lsqbq binary``          the paper's topology (fp32 stem, shortcuts and classifier, 1-bit ``ls-1`` 3x3 body)
                            from :func:`lsqbq.bench.models.resnet18_network`, converted by
                            :func:`~lsqbq.kernels.to_bitwise` (fused);
* ``lsqbq binary, frozen``  the same conversion through :func:`~lsqbq.kernels.freeze` (one traced graph per input
                            signature and thread count, without the modules' Python);
* ``lsqbq binary, int8 float parts`` the same conversion with ``float_parts="int8"`` (stem, shortcuts and
                            classifier in oneDNN int8; an option, not the paper's topology);
* ``lsqbq binary, int8 float parts, frozen`` that conversion through :func:`~lsqbq.kernels.freeze`;
* ``openvino binary``       the same network with the same weights as an OpenVINO graph on its ``BinaryConvolution``
                            op (:mod:`lsqbq.bench.peers_openvino`); its logits must equal ours (``agrees``:
                            ``|ov - ours| <= 1e-4 |ours| + 1e-4 max|ours|``; ``max_abs_diff`` recorded);
* ``openvino binary +1 pad`` the same graph without the zero-padding correction (what OpenVINO's own binary models
                            run; its outputs differ, timing only);
* ``openvino fp32 / bf16 / int8`` torchvision ResNet-18 from its ONNX export (bf16 only where the CPU plugin reports
                            BF16; int8 by NNCF post-training quantization, or from the ONNX Runtime QDQ model where
                            NNCF is missing: column ``method``);
* ``onnxruntime fp32 / int8`` the same ONNX export, and its static QDQ int8 quantization
                            (:mod:`lsqbq.bench.peers_onnxruntime`);
* Larq Compute Engine: skipped (:data:`LCE_SKIPPED`).

Int8 calibration uses a few synthetic batches (the weights are random, so no input is more representative).
Grid: every batch x thread count, one side-by-side group per (batch, threads): each repeat runs every engine once,
round-robin, so a load change hits all alike (median and minimum of the repeats). Threads are set per engine:
``torch.set_num_threads``; OpenVINO ``INFERENCE_NUM_THREADS``, one stream, latency hint, stated inference precision;
ONNX Runtime ``intra_op_num_threads``, one inter-op thread. Drift check: the torch fp32 baseline of every (batch,
threads) is also timed before the first and after the last group; a change of more than :data:`DRIFT_LIMIT` marks
the report "drifted: rerun on a quiet machine". An engine whose package is missing is skipped with the extra that
installs it (``pip install 'lsqbq[peers]'``). Outputs in ``--out``: ``peers.csv`` (machine, commit, ISA path and
load on every row), ``peers.md``, ``peers_headline.md`` and ``peers_profile.md`` (where one inference of the binary
network goes in lsqbq and in OpenVINO, part by part, at the first batch and thread count:
:mod:`lsqbq.bench.peers_profile`), all in one MLflow run of experiment ``lsqbq-bench-peers``
(:mod:`lsqbq.bench.harness`). ``--quick``: 224x224, batch 1, 1 thread; ``--smoke``: 32x32, batch 1, 1 thread, one
repeat (a check, not a measurement).
"""
from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from ..errors import ConfigError
from .harness import BenchRun, int_at_least, int_list, parser, provenance_line, thread_counts
from .peers_engines import (COLUMNS, EXTRA, Engine, PeerMissing, Skips, float_peer_engines,  # noqa: F401
                            missing_reason, openvino_engine, require, run_grid, torch_engine)
from .peers_report import (AGREE_RTOL, BASELINE, CALIBRATION_BATCHES, DRIFT_LIMIT, drift_verdict,  # noqa: F401
                           headline, slower_with_threads, summarise, thread_interference, to_markdown)
from .peers_profile import profile_binary

LCE_SKIPPED = ("larq-compute-engine: its models are built by its converter, which needs tensorflow 2.16 and "
               "tf-keras; tensorflow 2.16 needs numpy < 2, which would change the project's locked numpy")

__all__ = ["BASELINE", "COLUMNS", "DRIFT_LIMIT", "EXTRA", "LCE_SKIPPED", "PeerMissing", "build_engines", "main",
           "require", "to_markdown"]


@dataclass
class Setup:
    """What the engines run on: the inputs per batch, the two torch networks and a scratch directory."""

    size: int
    inputs: dict[int, torch.Tensor]
    float_net: nn.Module
    binary_sim: nn.Module
    binary_fast: nn.Module
    workdir: Path
    binary_int8: nn.Module | None = None  # the same conversion with int8 full-precision parts (None: unavailable)
    binary_frozen: nn.Module | None = None  # the fp32-parts conversion as traced graphs (lsqbq.kernels.freeze)
    binary_int8_frozen: nn.Module | None = None  # the int8-parts conversion as traced graphs
    skipped: Skips = field(default_factory=Skips)

    def skip(self, engine: str, reason: str) -> None:
        self.skipped(engine, reason)


# ------------------------------------------------------------------------------------------------ networks


def trained_like_batchnorm(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every BatchNorm of ``model`` running statistics and affine parameters like a trained network's
    (means ``N(0, 0.5^2)``, variances and scales in ``[0.5, 1.5)``, shifts ``N(0, 0.2^2)``), in place.

    Why: freshly built, ``BN(x) = x / sqrt(1 + eps)``, so the first stage's binary layers see only non-negative
    inputs (all signs ``+1``); the equality check between engines would then test little. Latency is unchanged.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.5 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return model


def make_setup(size: int, batches: list[int], backend: str, workdir: Path) -> Setup:
    """Inputs (seed 0) and the networks: torchvision ResNet-18 and the project's binary ResNet-18."""
    import torchvision

    from ..kernels import freeze, to_bitwise
    from .models import SHAPES, resnet18_network

    torch.manual_seed(0)
    inputs = {b: torch.randn(b, 3, size, size) for b in batches}
    float_net = torchvision.models.resnet18(weights=None).eval()
    sim = trained_like_batchnorm(resnet18_network(SHAPES["imagenet"], "ls-1", "ls-1"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = to_bitwise(sim, backend=backend)
        try:
            int8 = to_bitwise(sim, backend=backend, float_parts="int8")
        except ConfigError:  # no oneDNN int8 ops in this torch build
            int8 = None
    return Setup(size, inputs, float_net, sim, fast, workdir, binary_int8=int8,
                 binary_frozen=freeze(to_bitwise(sim, backend=backend)),
                 binary_int8_frozen=None if int8 is None else freeze(int8))  # engines run copies


# ---------------------------------------------------------------------------------------------- engines

FLOAT_NET = "torchvision resnet18"
BINARY_NET = "lsqbq binary resnet18 (ls-1/ls-1)"


def _openvino_binary_engines(s: Setup) -> list[Engine]:
    """OpenVINO's ``BinaryConvolution`` graph of the binary network, with and without the padding correction."""
    from . import peers_openvino as pov

    return [
        openvino_engine(s.inputs, "openvino binary", "1-bit", BINARY_NET,
                        lambda b: pov.binary_resnet_model(s.binary_sim, b, s.size), method="BinaryConvolution",
                        reference="lsqbq binary", check=True),
        openvino_engine(s.inputs, "openvino binary +1 pad", "1-bit", BINARY_NET,
                        lambda b: pov.binary_resnet_model(s.binary_sim, b, s.size, pad_correction=False),
                        method="BinaryConvolution, +1 padding (outputs differ)"),
    ]


def build_engines(s: Setup) -> list[Engine]:
    """Every engine that can run here, baseline first; the others are recorded in ``s.skipped`` with the reason."""
    engines = [torch_engine(BASELINE, "fp32", FLOAT_NET + " (eager, channels_last)", s.float_net, s.inputs),
               torch_engine("lsqbq binary", "1-bit", BINARY_NET, s.binary_fast, s.inputs),
               *([torch_engine("lsqbq binary, frozen", "1-bit", BINARY_NET, s.binary_frozen, s.inputs)]
                 if s.binary_frozen is not None else [])]
    if s.binary_int8 is not None:
        engines.append(torch_engine("lsqbq binary, int8 float parts", "1-bit + int8", BINARY_NET, s.binary_int8,
                                    s.inputs))
        engines.append(torch_engine("lsqbq binary, int8 float parts, frozen", "1-bit + int8", BINARY_NET,
                                    s.binary_int8_frozen, s.inputs))
    else:
        s.skip("lsqbq binary, int8 float parts (eager and frozen)", "this torch build has no oneDNN int8 ops")
    ov_missing = missing_reason("openvino")
    ov_float, ort = float_peer_engines(s.float_net, s.inputs, FLOAT_NET, s.workdir, s.skip, openvino=not ov_missing)
    if ov_missing:
        s.skip("openvino binary/fp32/bf16/int8", ov_missing)
    else:
        engines += _openvino_binary_engines(s) + ov_float
    s.skip("larq compute engine", LCE_SKIPPED)
    return engines + ort


def main(argv: list[str] | None = None) -> int:
    p = parser("peers", __doc__, quick="224x224, batch 1, 1 thread", backend=True)
    p.add_argument("--batches", type=int_list(1), default=None,
                   help="batch sizes (default 1,16; 1,256 with --checkpoints)")
    p.add_argument("--size", type=int_at_least(32), default=None, help="input height and width (default 224)")
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="time trained checkpoints instead of ResNet-18: root of <model>/<x>_<w>/s<seed>/checkpoint.pt; "
                        "each model's students (bitwise, frozen) beside its fp32 teacher in torch, OpenVINO and "
                        "ONNX Runtime (peers_checkpoints.csv / .md; batches default 1,256)")
    p.add_argument("--seeds", type=int_list(0), default="0", help="checkpoint seeds, with --checkpoints")
    args = p.parse_args(argv)
    repeats = 1 if args.smoke else max(7, args.repeats)
    min_time = 0.0 if args.smoke else 0.05
    if args.checkpoints is not None:
        return _main_checkpoints(args, repeats, min_time)
    size = args.size or (32 if args.smoke else 224)
    batches = args.batches or ([1] if args.quick or args.smoke else [1, 16])
    with BenchRun("peers", args.out, backend=args.backend, options=vars(args)) as run:
        threads_list = args.threads or ([1] if args.quick or args.smoke else [1, 2])
        threads_list = thread_counts(threads_list, True)
        with tempfile.TemporaryDirectory(prefix="lsqbq-peers-") as tmp:
            setup = make_setup(size, batches, run.backend, Path(tmp))
            engines = build_engines(setup)
            rows, probe = run_grid(engines, batches, threads_list, repeats, min_time, size)
        df = pd.DataFrame(rows)
        df["drift"] = [probe[(b, t)][1] / probe[(b, t)][0] - 1 for b, t in zip(df.batch, df.threads)]
        df = run.table(df[list(COLUMNS)])
        run.write_csv("peers.csv", df, float_format="%.6g")
        md = to_markdown(df, setup.skipped)
        run.write_text("peers.md", md)
        run.write_text("peers_headline.md", headline(df))
        # where the time goes, lsqbq's binary network beside OpenVINO's, at the first batch and thread count
        try:
            require("openvino")
            missing = ""
        except PeerMissing as exc:
            missing = str(exc)
        run.write_text("peers_profile.md", profile_binary(
            setup.binary_fast, setup.binary_sim, setup.inputs[batches[0]], threads_list[0],
            calls=1 if args.smoke else 20, note=f"Machine: {df.cpu.iloc[0]}, {df.cores.iloc[0]} cores; flags: "
            f"{df['flags'].iloc[0]}. " + provenance_line(df), openvino_missing=missing))
        run.record(summarise(df), params={"repeats": repeats, "threads_timed": threads_list, "size": size,
                                          "batches_timed": batches,
                                          "skipped": "; ".join(s["engine"] for s in setup.skipped)})
    print(md)
    return 0


def _main_checkpoints(args, repeats: int, min_time: float) -> int:
    """``lsqbq bench peers --checkpoints ROOT``: :mod:`lsqbq.bench.peers_checkpoints`."""
    from . import peers_checkpoints as pc

    if args.size is not None:
        raise ConfigError("--size: with --checkpoints every network runs on its checkpoint's own input size")
    skip = Skips()
    found = pc.groups(args.checkpoints, args.seeds, skip)  # nothing to time: the error, before the run starts
    batches = args.batches or ([1] if args.quick or args.smoke else [1, 256])
    with BenchRun("peers", args.out, backend=args.backend, options=vars(args)) as run:
        threads_list = thread_counts(args.threads or ([1] if args.quick or args.smoke else [1, 2]), True)
        with tempfile.TemporaryDirectory(prefix="lsqbq-peers-") as tmp:
            df = pc.bench(found, batches, threads_list, run.backend, repeats, min_time, Path(tmp), skip)
        df = run.table(df)
        run.write_csv("peers_checkpoints.csv", df, float_format="%.6g")
        md = pc.to_markdown(df, skip)
        run.write_text("peers_checkpoints.md", md)
        run.record(pc.summarise(df), params={"repeats": repeats, "threads_timed": threads_list,
                                             "batches_timed": batches,
                                             "skipped": "; ".join(s["engine"] for s in skip)})
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
