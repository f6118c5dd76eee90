"""Shared test settings: deterministic CPU runs, MLflow telemetry off, runs the code records by default (an
evaluation, an analysis) go to a throw-away store of each test process, never to the project's."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
# One store per test process (each pytest-xdist worker its own, whatever the environment held): tests that read it
# with MLflow's own client would otherwise create a fresh store's tables beside another worker's locked first use,
# and two schema migrations of one SQLite file race ("duplicate column name").
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='lsqbq-tests-')}/mlflow.db"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def peers_smoke(tmp_path_factory) -> tuple[Path, str]:
    """One ``lsqbq bench peers --smoke`` run per test session (32x32, batch 1, 1 thread, one repeat; OpenVINO and
    ONNX Runtime in that child process only), into its own output folder and MLflow store: ``(out, store uri)``.
    The peers tests and the harness test read it (``made_once``: one worker makes it, the others reuse it); readers
    do not write into it."""
    from workflow._repo import made_once  # tests/workflow/_repo.py

    def uri(root: Path) -> str:
        return f"sqlite:///{root}/mlflow.db"

    def make(root: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "LSQBQ_TRACKING"} | {"MLFLOW_TRACKING_URI": uri(root)}
        proc = subprocess.run([sys.executable, "-m", "lsqbq.cli", "bench", "peers", "--smoke", "--out",
                               str(root / "out")], capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    root = made_once(tmp_path_factory, "peers-smoke", make)
    return root / "out", uri(root)


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The modules that run the test profile's whole workflow (minutes each; the cluster test waits for the end-to-end
# module's shared run as its reference) go first, then the other slow ones: under pytest-xdist they overlap with
# the quick tests instead of starting last and ending the session alone.
FIRST = ("tests/workflow/test_end_to_end.py", "tests/cluster/test_slurm.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.nodeid.split("::")[0]
        return (FIRST.index(path) if path in FIRST else len(FIRST)) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=rank)  # stable: each module keeps its own order
