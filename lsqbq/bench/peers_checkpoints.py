"""Trained checkpoints beside the engines users would run for their float teachers: ``lsqbq bench peers
--checkpoints``.

Usage::

    lsqbq bench peers --checkpoints checkpoints/fashion-mnist [--seeds 0] [--batches 1,256] [--threads 1,2]

For every model under the root that has an fp32 teacher (``<model>/fp_fp/s<seed>/checkpoint.pt``) and quantized
students of the same seed (:func:`lsqbq.bench.models.find_checkpoints`), one side-by-side group per (batch, threads),
every engine fed the same input (seed 0, the checkpoint's input shape), as in the ResNet-18 table
(:mod:`lsqbq.bench.peers`):

* ``torch fp32``: the teacher, eager, channels_last: the baseline every ratio divides;
* ``lsqbq <x>/<w>, frozen``: each student as ``freeze(to_bitwise(student))``, with the activation scales the
  student evaluates with (``fitted`` per image, or ``stored``: column ``method``);
* ``openvino fp32 / bf16 / int8`` and ``onnxruntime fp32 / int8``: the teacher's ONNX export, int8 calibrated on
  synthetic batches (timing only: their accuracy is not measured here).

A student is not its teacher: each row's accuracy is its own (``results/tables/<dataset>/qat.md``); the table says
what each network costs to run on this machine. Students without a teacher of their seed are skipped and listed.
Outputs in ``--out``: ``peers_checkpoints.csv`` (machine, commit, ISA path and load on every row) and
``peers_checkpoints.md`` (one table per model and the drift check of each group), recorded as the MLflow run of
``lsqbq bench peers``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import torch

from .. import checkpoint as ckpt_io
from ..errors import CheckpointNotFoundError
from ..kernels import freeze, to_bitwise
from ..schemes import kernel_name
from .harness import provenance_line
from .models import checkpoint_input_shape, find_checkpoints
from .peers_engines import COLUMNS, float_peer_engines, missing_reason, run_grid, torch_engine
from .peers_report import BASELINE, drift_verdict, headline, metric_name, slower_with_threads

__all__ = ["CHECKPOINT_COLUMNS", "bench", "groups", "summarise", "to_markdown"]

CHECKPOINT_COLUMNS = ("model", "seed", "input_shape", "checkpoint", *COLUMNS)


def groups(root: Path, seeds: list[int], skip) -> dict[tuple[str, int], tuple[Path, list[tuple[str, str, Path]]]]:
    """``{(model, seed): (teacher checkpoint, [(x_quant, w_quant, student checkpoint), ...])}`` under ``root``;
    students whose teacher is missing go to ``skip``. No student with a teacher raises
    :class:`~lsqbq.errors.CheckpointNotFoundError` naming the root and the seeds."""
    found: dict[tuple[str, int], tuple[Path, list]] = {}
    for model, xq, wq, seed, path in find_checkpoints(root, seeds):
        teacher = root / model / "fp_fp" / f"s{seed}" / "checkpoint.pt"
        if teacher.exists():
            found.setdefault((model, seed), (teacher, []))[1].append((xq, wq, path))
        else:
            skip(f"{model} {xq}/{wq} s{seed}", f"no fp32 teacher of its seed ({teacher} is missing)")
    if not found:
        raise CheckpointNotFoundError(
            f"nothing to time: no quantized checkpoint of seed(s) {','.join(map(str, seeds))} with its fp32 teacher "
            f"under {root} (<model>/<x>_<w>/s<seed>/checkpoint.pt beside <model>/fp_fp/s<seed>/checkpoint.pt; "
            "`dvc pull` fetches the published ones)")
    return found


def _student_engine(xq: str, wq: str, path: Path, model: str, seed: int, inputs: dict[int, torch.Tensor],
                    backend: str):
    """The student at ``path`` as ``freeze(to_bitwise(student))`` in torch; ``method`` names its scale mode."""
    student = ckpt_io.load_model(path).model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = to_bitwise(student, backend=backend)
    modes = sorted({m.scale_mode for m in fast.modules() if hasattr(m, "scale_mode")})
    return torch_engine(f"lsqbq {xq}/{wq}, frozen", kernel_name(xq, wq), f"{model} {xq}/{wq} s{seed}",
                        freeze(fast), inputs, method=f"{'/'.join(modes)} activation scales")


def bench(found: dict, batches: list[int], threads_list: list[int], backend: str, repeats: int, min_time: float,
          workdir: Path, skip) -> pd.DataFrame:
    """Time every model group ``found`` by :func:`groups` (module docstring); one row per engine, batch and thread
    count."""
    ov_missing = missing_reason("openvino")
    if ov_missing:
        skip("openvino fp32/bf16/int8", ov_missing)
    frames = []
    for (model, seed), (teacher_path, students) in found.items():
        loaded = ckpt_io.load_model(teacher_path)
        teacher = loaded.model.eval()
        shape = checkpoint_input_shape(teacher, loaded.state)
        torch.manual_seed(0)
        inputs = {b: torch.randn(b, *shape) for b in batches}
        network = f"{model} fp32 teacher s{seed}"
        engines = [torch_engine(BASELINE, "fp32", f"{network} (eager, channels_last)", teacher, inputs)]
        engines += [_student_engine(xq, wq, path, model, seed, inputs, backend) for xq, wq, path in students]
        ov, ort = float_peer_engines(teacher, inputs, network, workdir / f"{model}_s{seed}", skip,
                                     openvino=not ov_missing)
        rows, probe = run_grid(engines + ov + ort, batches, threads_list, repeats, min_time, shape[-1])
        df = pd.DataFrame(rows)
        df["drift"] = [probe[(b, t)][1] / probe[(b, t)][0] - 1 for b, t in zip(df.batch, df.threads)]
        paths = {f"lsqbq {xq}/{wq}, frozen": str(p) for xq, wq, p in students}  # the other rows run the teacher
        frames.append(df.assign(model=model, seed=seed, input_shape="x".join(map(str, shape)),
                                checkpoint=[paths.get(e, str(teacher_path)) for e in df.engine]))
        print(f"  {model} s{seed} done", flush=True)
    return pd.concat(frames, ignore_index=True)[list(CHECKPOINT_COLUMNS)]


def to_markdown(df: pd.DataFrame, skipped: list[dict]) -> str:
    """One headline table per model group (engines x (batch, threads), median ms and ratio to the teacher in torch),
    its drift verdict, and the skipped engines."""
    r = df.iloc[0]
    parts = [
        "# Trained checkpoints on CPU engines: lsqbq's bitwise students beside their fp32 teacher in OpenVINO and "
        "ONNX Runtime\n\n"
        f"Machine: {r['cpu']}, {r['cores']} cores; flags: {r['flags']}; torch {r['torch']}. Median of repeats, "
        "engines timed round-robin in each (batch, threads) group; ratios: the teacher's time in torch (eager, "
        "channels_last) over the row's, same batch and threads (above 1: faster). `lsqbq` rows are the students, "
        "each with its own accuracy (the QAT tables); the other rows run the teacher. `against the fastest other "
        "engine`: the fastest OpenVINO / ONNX Runtime row of the teacher over the student.",
        *filter(None, [provenance_line(df)])]
    for (model, seed), g in df.groupby(["model", "seed"], sort=False):
        verdict = " ".join(filter(None, [drift_verdict(g) + ".", slower_with_threads(g)]))
        parts += [f"## {model}, seed {seed} (input {g.input_shape.iloc[0]})", verdict, headline(g).rstrip("\n")]
    if skipped:
        parts += ["## Skipped", "\n".join(f"- {s['engine']}: {s['reason']}" for s in skipped)]
    return "\n\n".join(parts) + "\n"


def summarise(df: pd.DataFrame) -> dict[str, float]:
    """MLflow metrics: every row's ratio to its teacher in torch, and the largest drift."""
    out = {metric_name(f"{r.model} s{r.seed} {r.engine} batch{r.batch} threads{r.threads} vs torch fp32"):
           float(r.ratio_vs_torch_fp32) for r in df.itertuples() if r.engine != BASELINE}
    out["max_drift"] = float(df["drift"].abs().max())
    return out
