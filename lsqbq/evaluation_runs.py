"""Finished evaluations recorded as MLflow runs, all in one process.

    python -m lsqbq.evaluation_runs --scales both results/evaluate/<dataset>/**/metrics.json

The workflow's evaluation jobs write their JSON files only (``lsqbq evaluate --no-track``); one job then records
every file as the runs ``lsqbq evaluate`` would have made itself (:func:`lsqbq.evaluate.record`: the simulated
result, and the bitwise one from ``bitwise.json`` beside it when present). MLflow is imported once instead of in
each of dozens of second-long jobs, and the SQLite store is written by one process (also safer where cluster jobs
share a file system).

Each run carries the tag ``lsqbq.result_sha256``, the digest of the file it records; a file whose digest is
already in the store is skipped, so a rerun after one changed evaluation records that one only, and a rerun of the
whole workflow records each result once.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import DataError
from .tracking.deferred import DIGEST_TAG, file_digest as _digest, recorded_digests, write_marker

__all__ = ["DIGEST_TAG", "record_files", "main"]


def _load(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not an evaluation result ({e})") from None
    if not isinstance(result, dict) or "checkpoint" not in result:
        raise DataError(f"{path}: not an evaluation result (no 'checkpoint' key)")
    return result


def record_files(metrics: list[str | Path], scales: str = "both", uri: str | None = None) -> tuple[int, int]:
    """Record each evaluation ``metrics.json`` (and the ``bitwise.json`` beside it) not yet in the store.

    Returns ``(recorded, skipped)`` counts of result files.
    """
    from . import tracking
    from .evaluate import record

    if not tracking.tracking_enabled():
        return 0, 0
    seen = recorded_digests(uri)
    recorded = skipped = 0
    for m in map(Path, metrics):
        result = _load(m)
        bit_path = m.with_name("bitwise.json")
        bit = _load(bit_path) if bit_path.is_file() else None
        digests = {"simulated": _digest(m), "bitwise": _digest(bit_path) if bit is not None else None}
        if digests["simulated"] in seen:
            result = None
        if bit is not None and digests["bitwise"] in seen:
            bit = None
        if result is None and bit is None:
            skipped += 1
            continue
        tags = {k: {DIGEST_TAG: d} for k, d in digests.items() if d is not None}
        if result is not None:
            record(result, bit, out=str(m), bitwise_out=str(bit_path) if bit is not None else None,
                   checkpoint=result["checkpoint"], scales=scales, overrides=[], device=None, tags=tags)
        else:  # only the bitwise result is new
            _record_bitwise_only(bit, bit_path, tags)
        recorded += 1
    return recorded, skipped


def _record_bitwise_only(bit: dict, path: Path, tags: dict) -> None:
    from . import tracking

    tracking.record_evaluation(bit, out=str(path), prefix="bitwise",
                               tags={"scale_mode": bit.get("scale_mode"), "kernels": bit.get("kernels"),
                                     **tags.get("bitwise", {})},
                               params={"checkpoint": bit["checkpoint"], "scales": "auto", "x_quant": bit.get("x_quant"),
                                       "w_quant": bit.get("w_quant"), "overrides": None,
                                       "backend": bit.get("kernels"), "limit": None})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsqbq.evaluation_runs", description=__doc__.split("\n")[0])
    parser.add_argument("metrics", nargs="+", help="metrics.json files written by lsqbq evaluate --no-track")
    parser.add_argument("--scales", default="both", help="the --scales the evaluations ran with (a run parameter)")
    parser.add_argument("--uri", default=None, help="tracking store (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("--done", default=None, metavar="FILE",
                        help="write a one-line summary here once every file is recorded (the workflow's marker)")
    args = parser.parse_args(argv)
    recorded, skipped = record_files(args.metrics, args.scales, args.uri)
    line = f"{recorded} evaluation(s) recorded, {skipped} already in the store"
    print(line)
    if args.done:
        write_marker(args.done, line)
    return 0


if __name__ == "__main__":
    from .cli import run_command

    sys.exit(run_command("evaluate", main))
