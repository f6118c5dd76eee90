"""Provenance of a run: which code (git commit, dirty flag, versions), which inputs, which process.

Training runs carry :func:`provenance_tags` (code, config and data hashes, device, schemes, seed, teacher);
evaluation, analysis and benchmark runs carry :func:`process_run_tags` (code, versions, host, torch threads).
Every run this project starts also carries :func:`lsqbq.tracking.liveness.process_tags` (host, pid, process start
time), which is what lets a later command tell a live run from one whose process died.
"""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path

__all__ = ["git_info", "versions", "provenance_tags", "process_run_tags", "run_name"]

_PROJECT = Path(__file__).resolve().parents[2]


def git_info(path: Path = _PROJECT) -> dict[str, str]:
    """``{"git_commit": sha or "unknown", "git_dirty": "true"/"false"/"unknown"}`` of the project checkout.

    Dirty means a tracked file other than the generated ``results/`` differs from the commit (the workflow rewrites
    the committed results while it runs; the code, configs and recipes must match the commit)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        commit = head.stdout.strip() if head.returncode == 0 else "unknown"
        # results/ holds generated outputs that the workflow rewrites while it runs; they are not code
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
        dirty = ("true" if status.stdout.strip() else "false") if status.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", "unknown"
    return {"git_commit": commit, "git_dirty": dirty}


def versions() -> dict[str, str]:
    """``{"mlflow_version": ...}``, read from the installed package's metadata (importing mlflow to ask it would
    cost a job that records its run for later about 1.3 s)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {"mlflow_version": version("mlflow")}
    except PackageNotFoundError:
        return {"mlflow_version": "not installed"}


def provenance_tags(cfg, data_hash: str, device, threads: int, world: int,
                    teacher_run_id: str | None = None) -> dict[str, str]:
    """Tags that identify what a run computed: code (git commit, dirty flag, versions), config hash, data hash,
    device, world size, dataset, model, schemes, seed, teacher; ``cfg.tracking.tags`` last (they may override)."""
    import torch

    import lsqbq

    from ..config import config_hash

    device = torch.device(device)
    tags = {**git_info(), "data_hash": data_hash, "lsqbq_version": lsqbq.__version__,
            "torch_version": torch.__version__, **versions(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({threads} threads)",
            "world_size": str(world), "config_hash": config_hash(cfg), "dataset": cfg.data.name,
            "model": cfg.model.name, "x_quant": cfg.model.x_quant, "w_quant": cfg.model.w_quant,
            "seed": str(cfg.seed)}
    if cfg.kd.teacher:
        tags["teacher_run_id"] = teacher_run_id or "unknown"
        tags["teacher_checkpoint"] = cfg.kd.teacher
    tags.update(cfg.tracking.tags)
    return tags


def process_run_tags() -> dict[str, str]:
    """Provenance of an evaluation / analysis / benchmark process: code, versions, host, torch threads."""
    import torch

    import lsqbq

    return {**git_info(), "lsqbq_version": lsqbq.__version__, "torch_version": torch.__version__, **versions(),
            "host": socket.gethostname(), "threads": str(torch.get_num_threads())}


def run_name(cfg) -> str:
    """``tracking.run_name`` or ``{model}-a{x_quant}-w{w_quant}-s{seed}``."""
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    return f"{cfg.model.name}-a{cfg.model.x_quant}-w{cfg.model.w_quant}-s{cfg.seed}"
