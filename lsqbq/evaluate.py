"""Evaluate a checkpoint on the test split (optionally re-quantizing its weights with another scheme).

Usage::

    lsqbq evaluate --checkpoint DIR/checkpoint.pt [--w-quant ls-2] [--x-quant ls-1] [--out FILE.json]
                   [--set data.root=...]

``--w-quant`` / ``--x-quant`` rebuild the model with another scheme and load the trained (latent)
weights: post-training quantization of a full-precision model, for example. Prints and writes
``{"top1", "top5", "loss", "n", "checkpoint", "x_quant", "w_quant", "data_hash", "source_run_id"}``.
Unlike ``lsqbq train --eval-only`` this does not create an MLflow run: it is a read-only query.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import checkpoint as ckpt_io
from .config import ConfigError, apply_overrides, from_dict, to_dict

__all__ = ["main", "evaluate_checkpoint"]


def evaluate_checkpoint(path: str | Path, w_quant: str | None = None, x_quant: str | None = None,
                        overrides: list[str] | None = None, device: str | None = None) -> dict:
    from .data import build_loaders
    from .train import build_model, evaluate

    state = ckpt_io.load(path, "cpu")
    cfg = from_dict(apply_overrides(state["config"], overrides))
    options = dict(state["model_options"])
    if w_quant is not None:
        options["w_quant"] = w_quant
    if x_quant is not None:
        options["x_quant"] = x_quant
    cfg = from_dict(apply_overrides(to_dict(cfg), [f"model.w_quant={options['w_quant']}",
                                                    f"model.x_quant={options['x_quant']}"]))
    model = build_model(cfg.model.name, options)
    model.load_state_dict(state["model"])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    _, test_loader = build_loaders(cfg)
    result = evaluate(model, test_loader, dev)
    result.update({"checkpoint": str(path), "x_quant": options["x_quant"], "w_quant": options["w_quant"],
                   "data_hash": test_loader.data_hash, "source_run_id": state.get("run_id"),
                   "epochs": int(state["epoch"])})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lsqbq evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt written by lsqbq train")
    parser.add_argument("--w-quant", default=None, help="re-quantize the weights with this scheme")
    parser.add_argument("--x-quant", default=None, help="quantize the activations with this scheme")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the stored config (e.g. data.root=...)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    from .data import DataError

    try:
        result = evaluate_checkpoint(args.checkpoint, args.w_quant, args.x_quant, args.overrides, args.device)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as e:
        print(f"lsqbq evaluate: {e}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
