"""Bitwise evaluation of trained checkpoints: the simulated (eager) model and its :func:`to_bitwise` conversion on
the same test batches, with their top-1 / top-5 / loss and how far they agree.

    python -m lsqbq.kernels.evaluation --checkpoint DIR/checkpoint.pt [--scales auto|fitted|stored]
        [--float-parts fp32|int8] [--set data.root=...] [--out FILE.json]

writes ``{"top1", "top5", "loss", "n"}`` of the bitwise model plus ``simulated_top1`` (and top5, loss),
``top1_agreement`` (fraction of test images whose top-1 class is the same), ``top1_difference`` (bitwise minus
simulated, percentage points), ``max_logit_diff`` / ``max_logit_rel_diff``, ``scale_mode``, ``kernels`` (the back end
that ran), ``float_parts`` (with ``--float-parts int8`` only) and the checkpoint's identity. The equality -- integer
dot products exact, logits within float tolerance -- is tested layer by layer in ``tests/kernels``; here it is
measured on real data.

Each evaluation is recorded as an MLflow run (``bitwise <x>_<w> ...``, tag ``scale_mode``) nested under the
checkpoint's training run, as ``lsqbq evaluate`` does; ``--no-track`` or ``LSQBQ_TRACKING=0`` skips it.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..json_output import check_out, emit_json
from ..passes import run_in_passes
from . import ops
from .convert import SCALE_MODES, to_bitwise
from .float_parts import FLOAT_PARTS

__all__ = ["BitwiseComparison", "evaluate_bitwise", "evaluate_checkpoint_bitwise", "main"]


def _topk_hits(logits: Tensor, target: Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == target[:, None]).any(1).sum())


class BitwiseComparison:
    """``to_bitwise(model)`` fed the same batches as its simulated model, whose logits the caller passes in.

    :meth:`update` runs one batch through the bitwise model and compares it with the simulated logits ``want``
    (computed in :attr:`mode`, the bitwise model's scale mode: ``fitted`` or ``stored``, else ``auto``);
    :meth:`result` gives the dictionary of :func:`evaluate_bitwise`. Lets one pass over a test set serve both the
    simulated evaluation and the bitwise one (``lsqbq evaluate --bitwise-out``).
    """

    def __init__(self, model: nn.Module, scales: str = "auto", backend: str | None = None, fuse: bool = True,
                 float_parts: str = "fp32"):
        self.fast = to_bitwise(model.eval(), scales=scales, backend=backend, fuse=fuse, float_parts=float_parts)
        self.mode = _mode_of(self.fast)
        self.kernels, self.fuse, self.float_parts = ops.resolve_backend(backend), bool(fuse), float_parts
        self._sums = torch.zeros(7, dtype=torch.float64)  # bit top1, top5, loss; sim top1, top5, loss; agree
        self._n, self._max_diff, self._max_rel = 0, 0.0, 0.0

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor, want: Tensor) -> None:
        got = self.fast(x).float()
        want = want.float()
        self._sums += torch.tensor([
            _topk_hits(got, y, 1), _topk_hits(got, y, 5), F.cross_entropy(got, y, reduction="sum"),
            _topk_hits(want, y, 1), _topk_hits(want, y, 5), F.cross_entropy(want, y, reduction="sum"),
            int((got.argmax(1) == want.argmax(1)).sum())], dtype=torch.float64)
        self._n += len(y)
        diff = float((got - want).abs().max())
        self._max_diff = max(self._max_diff, diff)
        self._max_rel = max(self._max_rel, diff / max(float(want.abs().max()), 1e-12))

    def result(self) -> dict:
        s, n = self._sums, max(self._n, 1)
        out = {"top1": 100 * s[0].item() / n, "top5": 100 * s[1].item() / n, "loss": s[2].item() / n, "n": self._n,
               "simulated_top1": 100 * s[3].item() / n, "simulated_top5": 100 * s[4].item() / n,
               "simulated_loss": s[5].item() / n, "top1_agreement": 100 * s[6].item() / n,
               "max_logit_diff": self._max_diff, "max_logit_rel_diff": self._max_rel,
               "scale_mode": self.mode, "kernels": self.kernels, "fused": self.fuse}
        out["top1_difference"] = out["top1"] - out["simulated_top1"]
        return out


@torch.no_grad()
def evaluate_bitwise(model: nn.Module, loader, scales: str = "auto", backend: str | None = None,
                     fuse: bool = True, float_parts: str = "fp32") -> dict:
    """Run ``model`` (eval mode, CPU) and ``to_bitwise(model, scales=scales)`` on every batch of ``loader``.

    Returns the bitwise model's ``top1``, ``top5`` (%), ``loss``, ``n``, the simulated model's
    ``simulated_top1/top5/loss``, ``top1_agreement`` (%), ``top1_difference`` (points), ``max_logit_diff`` and
    ``max_logit_rel_diff`` (largest absolute difference over the largest simulated logit magnitude, per batch).
    The simulated side runs in the bitwise model's scale mode (:func:`lsqbq.layers.scale_mode`), so both use
    per-sample scales, or both the stored moving averages, whatever the model was trained with. ``float_parts``:
    the conversion's full-precision parts in fp32 (the paper's) or int8 (:mod:`lsqbq.kernels.float_parts`).
    """
    from ..layers import scale_mode

    comparison = BitwiseComparison(model, scales=scales, backend=backend, fuse=fuse, float_parts=float_parts)
    mode = comparison.mode
    with scale_mode(model, mode if mode in ("fitted", "stored") else "auto"):
        for x, y in loader:
            comparison.update(x, y, run_in_passes(model, x))
    return comparison.result()


def _mode_of(fast: nn.Module) -> str:
    modes = {m.scale_mode for m in fast.modules() if hasattr(m, "scale_mode")}
    return modes.pop() if len(modes) == 1 else ("none" if not modes else "mixed")


def evaluate_checkpoint_bitwise(path: str | Path, scales: str = "auto", overrides: list[str] | None = None,
                                backend: str | None = None, limit: int | None = None,
                                float_parts: str = "fp32") -> dict:
    """:func:`evaluate_bitwise` of checkpoint ``path`` on the test split of its stored config (``overrides`` as
    ``--set key=value``); ``limit`` evaluates only the first that many test images."""
    from .. import checkpoint as ckpt_io
    from ..config import apply_overrides, from_dict
    from ..data import build_loaders

    loaded = ckpt_io.load_model(path)
    cfg = from_dict(apply_overrides(loaded.state["config"], overrides or []))
    _, test_loader = build_loaders(cfg)
    loader = test_loader if limit is None else _first(test_loader, limit)
    result = evaluate_bitwise(loaded.model, loader, scales=scales, backend=backend, float_parts=float_parts)
    opts = loaded.state.get("model_options", {})
    if float_parts != "fp32":  # the paper's conversion keeps the record it always had
        result["float_parts"] = float_parts
    result.update({"checkpoint": str(path), "x_quant": opts.get("x_quant"), "w_quant": opts.get("w_quant"),
                   "data_hash": getattr(test_loader, "data_hash", None),
                   "source_run_id": loaded.state.get("run_id"), "threads": torch.get_num_threads()})
    return result


def _first(loader, limit: int):
    seen = 0
    for x, y in loader:
        if seen >= limit:
            return
        take = min(len(y), limit - seen)
        seen += take
        yield x[:take], y[:take]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsqbq.kernels.evaluation", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt written by lsqbq train")
    parser.add_argument("--scales", default="auto", choices=SCALE_MODES,
                        help="activation scales: auto (as the layer evaluates), fitted per sample, or stored averages")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the stored config (e.g. data.root=...)")
    parser.add_argument("--backend", default=None, help="kernel back end (default: the fastest available)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    parser.add_argument("--float-parts", default="fp32", choices=FLOAT_PARTS,
                        help="full-precision parts (stem, shortcuts, classifier) of the conversion: fp32 (the "
                             "paper's) or int8 (oneDNN; the accuracy it costs is what this measures)")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    parser.add_argument("--no-track", action="store_true", help="create no MLflow run (as LSQBQ_TRACKING=0)")
    args = parser.parse_args(argv)
    check_out(args.out)
    result = evaluate_checkpoint_bitwise(args.checkpoint, args.scales, args.overrides, args.backend, args.limit,
                                         args.float_parts)
    emit_json(result, args.out)
    from .. import tracking

    tracking.record_evaluation(result, out=args.out, prefix="bitwise", track=not args.no_track,
                               tags={"scale_mode": result.get("scale_mode"), "kernels": result.get("kernels")},
                               params={"checkpoint": args.checkpoint, "scales": args.scales,
                                       "x_quant": result.get("x_quant"), "w_quant": result.get("w_quant"),
                                       "overrides": ",".join(args.overrides) or None,
                                       "backend": result.get("kernels"), "limit": args.limit,
                                       "float_parts": args.float_parts})
    return 0


if __name__ == "__main__":
    from ..cli import run_command

    sys.exit(run_command("evaluate", main))
