"""Helpers of the robustness suite: stand-in datasets in the real on-disk formats, the ``lsqbq`` command line
run under a network guard, and the assertions every case shares."""
from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
NETGUARD = Path(__file__).resolve().parent / "netguard"   # holds the sitecustomize.py that installs the guard
# variables that switch MLflow telemetry off: removed in guarded runs, so the project must turn it off itself
TELEMETRY_VARS = ("MLFLOW_ENABLE_TELEMETRY", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK",
                  # MLflow also stays quiet by itself under a test runner or CI; drop those markers so the guard
                  # sees what a user's shell would do.
                  "PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE")
TEMP_MARKERS = (".tmp", ".partial", "~")


# ------------------------------------------------------------------------------------------- the CLI


@dataclass
class CliResult:
    """Exit code, output and the network attempts of one ``lsqbq`` run."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    network: list[str] = field(default_factory=list)

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def __str__(self) -> str:
        return (f"lsqbq {' '.join(self.args)} -> {self.returncode}\n--- stdout\n{self.stdout[-3000:]}\n"
                f"--- stderr\n{self.stderr[-3000:]}\n--- network\n{''.join(self.network)}")


def guarded_env(tmp_path: Path, extra: dict | None = None) -> tuple[dict, Path]:
    """Environment of a guarded subprocess -> (env, log file of refused network attempts)."""
    log = tmp_path / f"netguard-{os.getpid()}-{len(list(tmp_path.glob('netguard-*')))}.log"
    env = {k: v for k, v in os.environ.items() if k not in TELEMETRY_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(NETGUARD), str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["LSQBQ_NETGUARD_LOG"] = str(log)
    env.setdefault("LSQBQ_BACKEND", "reference")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("LSQBQ_DEBUG", None)
    env.update(extra or {})
    return env, log


def run_lsqbq(*args, tmp_path: Path, cwd: Path | None = None, env: dict | None = None,
              timeout: float = 300) -> CliResult:
    """``python -m lsqbq.cli ARGS`` in a subprocess with the network guard on; never raises on failure."""
    env_, log = guarded_env(tmp_path, env)
    args = [str(a) for a in args]
    proc = subprocess.run([sys.executable, "-m", "lsqbq.cli", *args], cwd=cwd or tmp_path, env=env_,
                          capture_output=True, text=True, timeout=timeout)
    network = log.read_text().splitlines(keepends=True) if log.exists() else []
    return CliResult(args, proc.returncode, proc.stdout, proc.stderr, network)


def assert_no_network(result: CliResult) -> None:
    assert not result.network, f"network attempts:\n{''.join(result.network)}\n{result}"


def assert_cli_error(result: CliResult, command: str, exit_code: int, *needles: str) -> str:
    """One stderr line ``lsqbq <command>: ...`` naming every needle, the exit code, no traceback, no network."""
    assert result.returncode == exit_code, str(result)
    lines = result.err_lines
    assert len(lines) == 1, f"expected one stderr line:\n{result}"
    line = lines[0]
    assert line.startswith(f"lsqbq {command}: "), line
    assert "Traceback" not in result.stderr, str(result)
    for needle in needles:
        assert str(needle) in line, f"{needle!r} not in {line!r}"
    assert_no_network(result)
    return line


def snapshot(root: Path) -> set[Path]:
    """Every file below ``root`` (to compare before and after a failing call)."""
    return {p for p in Path(root).rglob("*") if p.is_file()} if Path(root).exists() else set()


def assert_no_partial_outputs(root: Path, before: set[Path] | None = None, allowed: tuple[str, ...] = ()) -> None:
    """No file appeared below ``root`` since ``before`` (except names in ``allowed``), and no temp file is left."""
    now = snapshot(root)
    new = sorted(p for p in now - (before or set()) if p.name not in allowed)
    assert not new, f"partial outputs left behind: {[str(p) for p in new]}"
    temps = sorted(p for p in now if any(m in p.name for m in TEMP_MARKERS))
    assert not temps, f"temporary files left behind: {[str(p) for p in temps]}"


# ------------------------------------------------------------------------------- stand-in datasets


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", "labels", 10,
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    "cifar100": ("cifar-100-python", "fine_labels", 100, ["train"], ["test"]),
}


def cifar_batch(n: int, name: str = "cifar10", seed: int = 0) -> dict:
    """One batch dict as the python-version CIFAR files hold it."""
    rng = np.random.default_rng(seed)
    _, key, classes, _, _ = CIFAR_LAYOUT[name]
    return {"batch_label": "stand-in", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            key: rng.integers(0, classes, n).tolist(), "filenames": [f"img_{i}.png" for i in range(n)]}


def write_cifar(root: Path, name: str = "cifar10", n_train: int = 40, n_test: int = 16, protocol: int = 2) -> Path:
    """A small CIFAR stand-in under ``root`` (the real folder and file names); returns the batch folder."""
    folder_name, _, _, train_files, test_files = CIFAR_LAYOUT[name]
    folder = Path(root) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    for i, fname in enumerate(train_files):
        write_pickle(folder / fname, cifar_batch(n_train // len(train_files), name, seed=i), protocol)
    for i, fname in enumerate(test_files):
        write_pickle(folder / fname, cifar_batch(n_test, name, seed=100 + i), protocol)
    return folder


def write_pickle(path: Path, obj, protocol: int = 2) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An uint8 array in the IDX format (big-endian magic, one int32 per dimension, payload)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx_set(root: Path, n_train: int = 60000, n_test: int = 10000, gz: bool = False) -> Path:
    """The four MNIST-format files under ``root`` (MNIST's sizes by default: the loader checks them)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": np.zeros((n_train, 28, 28), np.uint8), "train_labels": np.arange(n_train) % 10,
        "test_images": np.zeros((n_test, 28, 28), np.uint8), "test_labels": np.arange(n_test) % 10,
    }
    for key, stem in IDX_FILES.items():
        raw = idx_bytes(arrays[key])
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
        else:
            (root / stem).write_bytes(raw)
    return root


def write_imagefolder(root: Path, classes=("cat", "dog"), per_split=(("train", 2), ("val", 1)), size=(12, 10),
                      fmt: str = "JPEG") -> Path:
    """``root/{train,val}/<class>/<i>.jpg`` with small random images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
    for split, n in per_split:
        for cls in classes:
            d = Path(root) / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.{ext}", format=fmt)
    return Path(root)
