"""Evaluation: loss and top-k accuracy of a model on a loader, and of a checkpoint on its test split.

Usage::

    lsqbq evaluate --checkpoint DIR/checkpoint.pt [--w-quant ls-2] [--x-quant ls-1] [--out FILE.json]
                   [--set data.root=...]

``--w-quant`` / ``--x-quant`` rebuild the model with another scheme and load the trained (latent)
weights: post-training quantization of a full-precision model, for example. Prints and writes
``{"top1", "top5", "loss", "n", "checkpoint", "x_quant", "w_quant", "data_hash", "source_run_id"}``.
Each evaluation is recorded as an MLflow run (:func:`lsqbq.tracking.record_evaluation`: params, metrics, provenance
tags, the ``--out`` JSON as artifact) nested under the checkpoint's training run when that run is in the same store
(else in experiment ``lsqbq-evaluate``); its id goes to stderr. ``--no-track`` or ``LSQBQ_TRACKING=0`` skips it.
The printed and written JSON is the same either way.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checkpoint as ckpt_io
from . import distributed as D
from .config import apply_overrides, from_dict, to_dict
from .errors import CheckpointError, ConfigError
from .json_output import check_out, emit_json
from .passes import run_in_passes
from .predictions import PredictionLog

__all__ = ["main", "evaluate", "evaluate_checkpoint", "evaluate_checkpoint_outputs", "accuracy_counts"]


def accuracy_counts(logits: Tensor, target: Tensor, ks=(1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at #classes).

    Shapes: ``logits: (B, C)``, ``target: (B,)``.
    """
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices                      # (B, maxk)
    hit = top == target[:, None]
    return [int(hit[:, :min(k, maxk)].any(1).sum()) for k in ks]


def _batch_sums(logits: Tensor, target: Tensor) -> Tensor:
    """``[summed cross-entropy, top-1 hits, top-5 hits, n]`` of one batch, float64 (summed over batches)."""
    t1, t5 = accuracy_counts(logits, target)
    return torch.tensor([F.cross_entropy(logits, target, reduction="sum").item(), t1, t5, len(target)],
                        dtype=torch.float64)


def _summary(sums: Tensor) -> dict[str, float]:
    """``{"loss", "top1", "top5", "n"}`` from summed :func:`_batch_sums` (after the DDP all-reduce)."""
    D.all_reduce_sum(sums)
    n = max(sums[3].item(), 1.0)
    return {"loss": sums[0].item() / n, "top1": 100.0 * sums[1].item() / n, "top5": 100.0 * sums[2].item() / n,
            "n": int(sums[3].item())}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device | str = "cpu", amp: bool = False) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 accuracy (%) of ``model`` on ``loader`` (summed over DDP ranks).

    Returns ``{"loss", "top1", "top5", "n"}``; the model's train/eval mode is restored afterwards.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss sum, top1, top5, n
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if (amp and device.type == "cuda") else nullcontext()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with ctx:
            out = model(x)
        sums += _batch_sums(out.float(), y)
    model.train(was_training)
    return _summary(sums)


def evaluate_checkpoint(path: str | Path, w_quant: str | None = None, x_quant: str | None = None,
                        overrides: list[str] | None = None, device: str | None = None, scales: str = "auto") -> dict:
    """Evaluate checkpoint ``path`` on the test split of its (overridden) config, optionally with other schemes.

    ``scales`` chooses the activation scales (:func:`lsqbq.layers.scale_mode`): ``auto`` as trained, ``fitted``
    per sample, ``stored`` the moving averages, or ``both``: ``top1``/``top5``/``loss`` as trained plus
    ``top1_fitted``, ``top1_stored`` and ``scale_gap`` (stored - fitted, points). ``scale_mode`` in the result
    names the mode of ``top1`` (``none`` when the activations are not quantized, where the mode does not apply).
    A changed ``x_quant`` needs ``act_stats: off`` (per-sample scales): moving averages recorded for one
    activation scheme do not apply to another.
    """
    return evaluate_checkpoint_outputs(path, w_quant, x_quant, overrides, device, scales)[0]


def evaluate_checkpoint_outputs(path: str | Path, w_quant: str | None = None, x_quant: str | None = None,
                                overrides: list[str] | None = None, device: str | None = None, scales: str = "auto",
                                predictions: str | Path | None = None,
                                bitwise: bool = False) -> tuple[dict, dict | None]:
    """:func:`evaluate_checkpoint`, plus in the same pass over the test set: with ``predictions``, every test
    image's predicted class and true-class probability per scale mode written there (:mod:`lsqbq.predictions`);
    with ``bitwise``, the checkpoint converted by :func:`lsqbq.kernels.to_bitwise` and run beside its simulated
    model (the result of :func:`lsqbq.kernels.evaluation.evaluate_bitwise`, else None). Each test batch is loaded
    once and each model runs once per batch and mode: one process does the work of three.
    """
    from .layers import SCALE_MODES

    if scales not in (*SCALE_MODES, "both"):
        raise ConfigError(f"--scales {scales!r}: choose one of {', '.join((*SCALE_MODES, 'both'))}")
    from .data import build_loaders

    state = ckpt_io.load(path, "cpu", require=ckpt_io.MODEL_KEYS)
    options = dict(state["model_options"])
    trained_x = options.get("x_quant")
    options.update({k: v for k, v in (("w_quant", w_quant), ("x_quant", x_quant)) if v is not None})
    try:
        base = from_dict(apply_overrides(state["config"], overrides))
    except ConfigError as e:
        raise ConfigError(f"{e} (in the config stored in {path}, with --set overrides)") from None
    act_stats = base.model.act_stats
    if options["x_quant"] != trained_x and act_stats != "off":
        raise ConfigError(f"--x-quant {x_quant}: {path} was trained with model.act_stats={act_stats}, whose moving "
                          f"averages belong to x_quant={trained_x}; add --set model.act_stats=off to fit the "
                          "activation scales per sample")
    options["act_stats"] = act_stats
    cfg = from_dict(apply_overrides(to_dict(base), [f"model.w_quant={options['w_quant']}",
                                                    f"model.x_quant={options['x_quant']}"]))
    if device not in (None, "cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch finds no CUDA device here; use --device cpu")
    if bitwise and device == "cuda":
        raise ConfigError("--bitwise runs the CPU XNOR/popcount kernels: use --device cpu")
    model = ckpt_io.load_model(path, options=options, state=state).model
    dev = torch.device("cpu" if bitwise else (device or ("cuda" if torch.cuda.is_available() else "cpu")))
    model.to(dev)
    _, test_loader = build_loaders(cfg)
    log = PredictionLog() if predictions else None
    comparison = None
    if bitwise:
        from .kernels.evaluation import BitwiseComparison

        comparison = BitwiseComparison(model)
    result = _evaluate_scale_modes(model, test_loader, dev, scales, act_stats, path, log, comparison)
    identity = {"checkpoint": str(path), "x_quant": options["x_quant"], "w_quant": options["w_quant"],
                "data_hash": test_loader.data_hash, "source_run_id": state.get("run_id")}
    result.update({**identity, "epochs": int(state.get("epoch", 0))})
    if log is not None:
        log.write(predictions, test_loader.info.num_classes)
    bit_result = None
    if comparison is not None:
        bit_result = {**comparison.result(), **identity, "threads": torch.get_num_threads()}
    return result, bit_result


@torch.no_grad()
def _evaluate_scale_modes(model: nn.Module, loader, device, scales: str, act_stats: str, path,
                          predictions: PredictionLog | None = None, bitwise=None) -> dict:
    """The metrics of :func:`evaluate` under the requested activation-scale mode(s), in ONE pass over ``loader``:
    each batch runs once per mode (and, with ``bitwise``, once through the bitwise model, compared with the
    simulated logits of its mode); see :func:`evaluate_checkpoint`. ``predictions`` collects every image's
    predicted class and true-class probability per mode."""
    from .layers import scale_mode

    quantized = any(not m.x_scheme.is_fp for m in model.modules() if hasattr(m, "x_scheme"))
    trained = "fitted" if act_stats == "off" else "stored"
    if not quantized:
        modes: tuple[str, ...] = ("none",)
    else:
        modes = ("fitted", "stored") if scales == "both" else (trained if scales == "auto" else scales,)
    bit_mode = None if bitwise is None else (bitwise.mode if bitwise.mode in ("fitted", "stored") else "auto")
    runs = modes + ((bit_mode,) if bit_mode is not None and bit_mode not in modes else ())
    model.eval()
    sums = {m: torch.zeros(4, dtype=torch.float64) for m in modes}
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if predictions is not None:
            predictions.add_target(y)
        for mode in runs:
            try:
                with scale_mode(model, mode) if mode != "none" else nullcontext():
                    out = run_in_passes(model, x).float()
            except ValueError as e:
                raise CheckpointError(f"{path}: {e}") from None
            if mode in sums:
                sums[mode] += _batch_sums(out, y)
                if predictions is not None:
                    predictions.add("fitted" if mode == "none" else mode, out, y)
            if mode == bit_mode or (bit_mode == "auto" and mode == "none"):
                bitwise.update(x, y, out)
    results = {m: _summary(v) for m, v in sums.items()}
    if not quantized:
        return {**results["none"], "scale_mode": "none"}
    result = dict(results.get(trained, results[modes[0]]))
    result["scale_mode"] = trained if trained in results else modes[0]
    if scales == "both":
        result.update({"top1_fitted": results["fitted"]["top1"], "top1_stored": results["stored"]["top1"],
                       "scale_gap": results["stored"]["top1"] - results["fitted"]["top1"]})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lsqbq evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt written by lsqbq train")
    parser.add_argument("--w-quant", default=None, help="re-quantize the weights with this scheme")
    parser.add_argument("--x-quant", default=None, help="quantize the activations with this scheme")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the stored config (e.g. data.root=...)")
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"),
                        help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--scales", default="auto", choices=("auto", "fitted", "stored", "both"),
                        help="activation scales: as trained (auto), fitted per sample, the stored moving averages, "
                             "or both (top1_fitted, top1_stored and their gap beside the trained mode's numbers)")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    parser.add_argument("--predictions", default=None, metavar="FILE.npy",
                        help="write every test image's predicted class and true-class probability per scale mode "
                             "here (lsqbq.predictions)")
    parser.add_argument("--bitwise-out", default=None, metavar="FILE.json",
                        help="also run the checkpoint converted with to_bitwise on the XNOR/popcount kernels, in "
                             "the same pass, and write its comparison with the simulated model here")
    parser.add_argument("--no-track", action="store_true",
                        help="create no MLflow run (as LSQBQ_TRACKING=0)")
    args = parser.parse_args(argv)
    for flag, value in (("--w-quant", args.w_quant), ("--x-quant", args.x_quant)):
        if value is not None:
            from .schemes import is_scheme_name, list_schemes

            if not is_scheme_name(value):
                raise ConfigError(f"{flag}: unknown scheme {value!r}; expected one of "
                                  f"{', '.join(list_schemes(trainable_only=True))}")
    for out in (args.out, args.predictions, args.bitwise_out):
        check_out(out)
    result, bit_result = evaluate_checkpoint_outputs(args.checkpoint, args.w_quant, args.x_quant, args.overrides,
                                                     args.device, args.scales, args.predictions,
                                                     bitwise=args.bitwise_out is not None)
    emit_json(result, args.out)
    if bit_result is not None:
        emit_json(bit_result, args.bitwise_out, echo=False)
    record(result, bit_result, out=args.out, bitwise_out=args.bitwise_out, checkpoint=args.checkpoint,
           scales=args.scales, overrides=args.overrides, device=args.device, track=not args.no_track)
    return 0


def record(result: dict, bit_result: dict | None, *, out: str | None, bitwise_out: str | None, checkpoint: str,
           scales: str, overrides: list[str], device: str | None, track: bool = True,
           tags: dict | None = None) -> None:
    """The MLflow runs of one evaluation (:func:`lsqbq.tracking.record_evaluation`): the simulated result, and the
    bitwise one beside it when there is one; ``tags`` are added to both."""
    from . import tracking

    extra = dict(tags or {})
    if bit_result is not None:
        tracking.record_evaluation(bit_result, out=bitwise_out, prefix="bitwise", track=track,
                                   tags={"scale_mode": bit_result.get("scale_mode"),
                                         "kernels": bit_result.get("kernels"), **extra.get("bitwise", {})},
                                   params={"checkpoint": checkpoint, "scales": "auto",
                                           "x_quant": bit_result.get("x_quant"), "w_quant": bit_result.get("w_quant"),
                                           "overrides": ",".join(overrides) or None,
                                           "backend": bit_result.get("kernels"), "limit": None})
    tracking.record_evaluation(result, out=out, track=track,
                               tags={"scale_mode": result.get("scale_mode", scales), **extra.get("simulated", {})},
                               params={"checkpoint": checkpoint, "x_quant": result.get("x_quant"),
                                       "w_quant": result.get("w_quant"), "scales": scales,
                                       "overrides": ",".join(overrides) or None, "device": device or "auto"})


if __name__ == "__main__":
    from .cli import run_command

    sys.exit(run_command("evaluate", main))
