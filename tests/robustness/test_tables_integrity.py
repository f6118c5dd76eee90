"""`lsqbq tables` counts what it shows: every result file is validated (types, missing / NaN / out-of-range
values, identity against its folder and the table's dataset), an invalid one is an error naming the file and the
key (exit 3, nothing written) or, with ``--exclude-invalid``, left out and listed in the notes; the n beside a
cell is the number of values in it."""
from __future__ import annotations

import html
import json
import os
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lsqbq import cli
from lsqbq.errors import DataError, RunFileError
from lsqbq.schemes import list_schemes
from lsqbq.tables import aggregate, load_paper, run_files
from lsqbq.tables.runs import read_runs

from ._helpers import assert_no_partial_outputs, snapshot

DS, MODEL = "fashion-mnist", "lenet5"
PAIRS = (("fp", "fp"), ("ls-1", "ls-1"), ("ls-2", "ls-1"))
SEEDS = (0, 1, 2)
RNG = np.random.default_rng(18)
TOP1 = {(x, w, s): float(np.round(80 + 10 * RNG.random(), 2)) for x, w in PAIRS for s in SEEDS}


def _rid(x, w, s) -> str:
    return f"run-{x}-{w}-{s}"


def _train(x, w, s) -> dict:
    return {"top1": TOP1[x, w, s], "top5": 99.5, "loss": 0.3, "epochs": 2, "run_id": _rid(x, w, s),
            "data_hash": "d" * 64, "commit": "c" * 40, "config_hash": "h" * 16, "dataset": DS, "model": MODEL,
            "x_quant": x, "w_quant": w, "seed": s, "train_time_s": 10.0 + s, "n_test": 10000,
            "teacher_run_id": None if x == w == "fp" else _rid("fp", "fp", s), "device": "cpu"}


def _evaluate(x, w, s) -> dict:
    e = {"top1": TOP1[x, w, s], "top5": 99.5, "n": 10000, "x_quant": x, "w_quant": w,
         "source_run_id": _rid(x, w, s), "scale_mode": "none" if x == "fp" else "fitted"}
    if x != "fp":
        e |= {"top1_fitted": TOP1[x, w, s], "top1_stored": TOP1[x, w, s] - 0.2}
    return e


def _bitwise(x, w, s) -> dict:
    return {"top1": TOP1[x, w, s], "top5": 99.5, "n": 10000, "top1_agreement": 99.9, "x_quant": x, "w_quant": w,
            "source_run_id": _rid(x, w, s), "scale_mode": "fitted"}


def _folder(root: Path, stage: str, x, w, s) -> Path:
    return root / "results" / stage / DS / MODEL / f"{x}_{w}" / f"s{s}"


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def layout(tmp_path):
    """Every run's training, evaluation and bitwise files in the workflow layout -> (root, {kind: [files]})."""
    files = {"train": [], "evaluate": [], "bitwise": []}
    for x, w in PAIRS:
        for s in SEEDS:
            files["train"].append(_write(_folder(tmp_path, "train", x, w, s) / "metrics.json", _train(x, w, s)))
            files["evaluate"].append(_write(_folder(tmp_path, "evaluate", x, w, s) / "metrics.json",
                                            _evaluate(x, w, s)))
            if x != "fp":
                files["bitwise"].append(_write(_folder(tmp_path, "evaluate", x, w, s) / "bitwise.json",
                                               _bitwise(x, w, s)))
    return tmp_path, files


def _args(root: Path, files: dict, *extra: str, dataset: str = DS) -> list[str]:
    return ["tables", "--dataset", dataset, "--out", str(root / "tables"),
            *(a for kind, fs in files.items() for a in (f"--{kind}", *map(str, fs))), *extra]


def _fails(capsys, root: Path, files: dict, *needles: str, dataset: str = DS) -> str:
    """`lsqbq tables` exits 3 with one line naming every needle and writes nothing."""
    before = snapshot(root)
    assert cli.main(_args(root, files, dataset=dataset)) == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("lsqbq tables: ") and "unexpected" not in err[0], err
    for needle in needles:
        assert str(needle) in err[0], (needle, err[0])
    assert not (root / "tables").exists()
    assert_no_partial_outputs(root, before)
    return err[0]


def _path(root, stage, x, w, s, name="metrics.json") -> Path:
    return _folder(root, stage, x, w, s) / name


# ---------------------------------------------------------------------- one bad value in a training file


BAD_TRAIN = [
    ("nan top-1", lambda m: m | {"top1": float("nan")}, "key 'top1': must be a finite number, got nan"),
    ("missing top-1", lambda m: {k: v for k, v in m.items() if k != "top1"}, "lacks the key 'top1'"),
    ("top-1 of 9008", lambda m: m | {"top1": 9008.0}, "key 'top1': must be <= 100, got 9008.0"),
    ("negative top-1", lambda m: m | {"top1": -1.0}, "key 'top1': must be >= 0, got -1.0"),
    ("top-5 below top-1", lambda m: m | {"top5": 10.0}, "'top5' (10.0) is below 'top1'"),
    ("string top-1", lambda m: m | {"top1": "90.1"}, "key 'top1': expected a number, got str '90.1'"),
    ("string seed", lambda m: m | {"seed": "2"}, "key 'seed': expected an integer, got str '2'"),
    ("boolean seed", lambda m: m | {"seed": True}, "key 'seed': expected an integer, got bool True"),
    ("zero epochs", lambda m: m | {"epochs": 0}, "key 'epochs': must be >= 1, got 0"),
    ("infinite time", lambda m: m | {"train_time_s": float("inf")}, "key 'train_time_s': must be a finite number"),
    ("numeric run id", lambda m: m | {"run_id": 7}, "key 'run_id': expected a string, got int 7"),
    ("empty model", lambda m: m | {"model": ""}, "key 'model': must not be empty"),
]


@pytest.mark.parametrize("case, edit, needle", BAD_TRAIN, ids=[c[0] for c in BAD_TRAIN])
def test_a_bad_value_in_a_training_file_is_an_error_naming_file_and_key(layout, capsys, case, edit, needle):
    root, files = layout
    bad = _path(root, "train", "ls-2", "ls-1", 2)
    _write(bad, json.dumps(edit(_train("ls-2", "ls-1", 2))))  # json writes NaN / Infinity literals as Python does
    line = _fails(capsys, root, files, bad, needle)
    assert "rerun `lsqbq train`" in line


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.unlink(), "no such file"), (lambda p: (p.unlink(), p.mkdir()), "not a regular file"),
    (lambda p: (p.unlink(), os.mkfifo(p)), "not a regular file"),
], ids=["missing", "folder", "named pipe"])
def test_a_training_file_that_is_no_file_is_named(layout, capsys, make, needle):
    root, files = layout
    bad = _path(root, "train", "ls-1", "ls-1", 0)
    make(bad)
    _fails(capsys, root, files, f"{bad}: {needle}; pass the train results that `lsqbq train` wrote")
    assert cli.main(_args(root, files, "--exclude-invalid")) == 0  # never opened, so a pipe cannot block it
    assert f"- {bad}: {needle}" in (root / "tables" / "qat.md").read_text()


def test_unknown_scheme_lists_the_registry(layout, capsys):
    root, files = layout
    bad = _write(_path(root, "train", "ls-2", "ls-1", 0), _train("ls-2", "ls-1", 0) | {"x_quant": "ls-9"})
    line = _fails(capsys, root, files, bad, "key 'x_quant': 'ls-9' is not a scheme a run is trained with")
    assert line.split("valid schemes: ")[1].split(";")[0] == ", ".join(list_schemes(trainable_only=True))


@pytest.mark.parametrize("text, needle", [
    ("[1, 2]", "expected a JSON object of train results, got a JSON array"),
    ('"90.1"', "got a JSON string"),
    ('{"top1": 90', "cannot read the run's train results"),
    ('{"top1": 90, "top1": 91}', "duplicate key 'top1'"),
    (b"\xff\xfe{}", "cannot read the run's train results"),
], ids=["array", "string", "truncated", "duplicate key", "not utf-8"])
def test_a_malformed_training_file_names_itself(layout, capsys, text, needle):
    root, files = layout
    bad = _path(root, "train", "fp", "fp", 1)
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    _fails(capsys, root, files, bad, needle)


# ----------------------------------------------------------------------------------- identity


@pytest.mark.parametrize("key, value, folder", [
    ("seed", 1, "seed 0"), ("model", "resnet_small", "model 'lenet5'"), ("x_quant", "gf-2", "x_quant 'ls-2'"),
    ("w_quant", "ls-T", "w_quant 'ls-1'"), ("dataset", "cifar10", "dataset 'fashion-mnist'"),
])
def test_identity_that_disagrees_with_the_folder_is_an_error(layout, capsys, key, value, folder):
    root, files = layout
    bad = _write(_path(root, "train", "ls-2", "ls-1", 0), _train("ls-2", "ls-1", 0) | {key: value})
    _fails(capsys, root, files, bad, f"key {key!r} is {value!r}, but the file sits in the folder of {folder}")


def test_a_run_of_another_dataset_is_refused_anywhere(tmp_path, capsys):
    """Outside the layout: --dataset that names a loader must be the loader of every run; a tag (the profile's
    dataset_tag) labels runs of one loader, the odd one out is refused."""
    flat = [_write(tmp_path / "flat" / f"{x}{w}{s}.json", _train(x, w, s)) for x, w in PAIRS for s in SEEDS]
    _write(flat[4], _train(*PAIRS[1], 1) | {"dataset": "cifar10"})
    files = {"train": flat}
    _fails(capsys, tmp_path, files, flat[4], "key 'dataset' is 'cifar10', but the tables are built for --dataset "
                                             "'fashion-mnist'")
    _fails(capsys, tmp_path, files, flat[4], "key 'dataset' is 'cifar10', but the other runs are of 'fashion-mnist'",
           dataset="my-images")
    _write(flat[4], _train(*PAIRS[1], 1))
    assert read_runs(flat, dataset="my-images").runs["dataset"].eq(DS).all()  # a tag labels the runs of one loader
    _write(flat[0], _train(*PAIRS[0], 0) | {"dataset": "cifar10"})
    with pytest.raises(RunFileError, match=f"{flat[0]}: key 'dataset' is 'cifar10', but the other runs are of"):
        read_runs(flat)  # the library call without a dataset: the loader of most runs


def test_path_identity_reads_only_the_layout():
    p = Path("results/train/fashion-mnist/lenet5/ls-2_ls-1/s3/metrics.json")
    assert run_files.path_identity(p) == {"seed": 3, "x_quant": "ls-2", "w_quant": "ls-1", "model": "lenet5",
                                          "dataset": "fashion-mnist"}
    assert run_files.path_identity(Path("ls-2_ls-1/s3/m.json")) == {"seed": 3, "x_quant": "ls-2", "w_quant": "ls-1"}
    for other in ("flat/metrics.json", "a/b/s3/metrics.json", "a/ls-2_nope/s3/m.json", "a/ls-2_ls-1/s03/m.json"):
        assert run_files.path_identity(Path(other)) == {}, other


# ------------------------------------------------------------------------------- evaluation files


def test_evaluation_files_are_validated_and_joined_to_their_own_run(layout, capsys):
    root, files = layout
    ev = _path(root, "evaluate", "ls-1", "ls-1", 1)
    bit = _path(root, "evaluate", "ls-2", "ls-1", 2, "bitwise.json")
    cases = [
        (ev, _evaluate("ls-1", "ls-1", 1) | {"n": 0}, "key 'n': must be >= 1, got 0"),
        (ev, _evaluate("ls-1", "ls-1", 1) | {"top1_stored": None}, "has 'top1_fitted' but no 'top1_stored'"),
        (ev, _evaluate("ls-1", "ls-1", 1) | {"w_quant": "ls-2"}, "key 'w_quant' is 'ls-2', but its run run-ls-1-ls-1-1"),
        (ev, _evaluate("ls-1", "ls-1", 1) | {"source_run_id": "elsewhere"},
         "key 'source_run_id' is 'elsewhere', which is none of the training runs"),
        (ev, _evaluate("ls-1", "ls-1", 0), "its run's 'seed' is 0, but the file sits in the folder of seed 1"),
        (bit, {k: v for k, v in _bitwise("ls-2", "ls-1", 2).items() if k != "top1_agreement"},
         "lacks the key 'top1_agreement'"),
        (bit, _bitwise("ls-2", "ls-1", 2) | {"top1_agreement": 100.5}, "key 'top1_agreement': must be <= 100"),
    ]
    for path, data, needle in cases:
        original = path.read_text()
        _write(path, data)
        _fails(capsys, root, files, path, needle)
        path.write_text(original)
    assert cli.main(_args(root, files)) == 0


def test_a_run_passed_twice_names_both_files(layout, capsys):
    root, files = layout
    copy = _write(root / "copy" / "metrics.json", _train("fp", "fp", 0))
    _fails(capsys, root, {**files, "train": [*files["train"], copy]},
           "two metrics.json files for lenet5 fp/fp seed 0", files["train"][0], copy)


# ------------------------------------------------------------------------ cells count what they show


def test_a_run_lacking_what_its_row_has_is_an_error(layout, capsys):
    root, files = layout
    missing = _path(root, "evaluate", "ls-2", "ls-1", 1, "bitwise.json")
    files["bitwise"].remove(missing)
    _fails(capsys, root, files, _path(root, "train", "ls-2", "ls-1", 1),
           "run lenet5 ls-2/ls-1 seed 1 has no bitwise evaluation, which the run of seeds 0, 2 of its row has",
           "--bitwise")


def _qat_row(root: Path, x: str, w: str):
    qat = pd.read_csv(root / "tables" / "qat.csv", dtype={"seeds": str})
    return qat[(qat.x_quant == x) & (qat.w_quant == w)].iloc[0]


def test_exclude_invalid_leaves_runs_out_and_lists_them(layout, capsys):
    root, files = layout
    nan = _write(_path(root, "train", "ls-2", "ls-1", 1), json.dumps(_train("ls-2", "ls-1", 1) | {"top1": float("nan")}))
    gone = _path(root, "evaluate", "ls-1", "ls-1", 2, "bitwise.json")
    files["bitwise"].remove(gone)
    assert cli.main(_args(root, files, "--exclude-invalid")) == 0
    err = capsys.readouterr().err
    assert err.count("lsqbq tables: excluded (--exclude-invalid): ") == 2
    out = root / "tables"
    for x, w, dropped in (("ls-2", "ls-1", 1), ("ls-1", "ls-1", 2), ("fp", "fp", None)):
        kept = [s for s in SEEDS if s != dropped]
        vals = [TOP1[x, w, s] for s in kept]
        row = _qat_row(root, x, w)
        assert (row.n_seeds, row.seeds) == (len(kept), ";".join(map(str, kept)))
        assert row.top1_mean == pytest.approx(statistics.fmean(vals))
        assert row.top1_std == pytest.approx(statistics.stdev(vals))
    runs = pd.read_csv(out / "qat_runs.csv")
    assert len(runs) == 7 and not ((runs.x_quant == "ls-2") & (runs.seed == 1)).any()
    inference = pd.read_csv(out / "inference.csv", dtype={"seeds": str})
    assert dict(zip(inference.x_quant, inference.seeds)) == {"ls-1": "0;1", "ls-2": "0;2"}
    fp = [TOP1["fp", "fp", s] for s in SEEDS]  # most cells now hold 2 runs: the full one says so
    assert f"{statistics.fmean(fp):.2f} ± {statistics.stdev(fp):.2f} (n=3)" in (out / "qat.md").read_text()
    for name in ("qat.md", "qat.html", "inference.md", "claims.md", "claims.html"):
        text = html.unescape((out / name).read_text())
        assert "**Left out** (`--exclude-invalid`): 2 result files, invalid or of a run left out" in text, name
        assert str(nan) in text and "key 'top1': must be a finite number, got nan" in text, name
        assert str(_path(root, "train", "ls-1", "ls-1", 2)) in text and "has no bitwise evaluation" in text, name


def test_exclude_invalid_drops_the_analyses_of_runs_left_out(layout, capsys):
    root, files = layout
    _write(_path(root, "train", "fp", "fp", 0), _train("fp", "fp", 0) | {"top1": 101.0})
    ptq = root / "ptq_s0.csv"
    pd.DataFrame({"w_quant": ["fp", "ls-2"], "x_quant": "fp", "top1": [90.0, 80.0], "top5": [99.0, 98.0],
                  "run_id": _rid("fp", "fp", 0)}).to_csv(ptq, index=False)
    args = _args(root, files)
    assert cli.main([*args, "--ptq", str(ptq)]) == 3
    assert cli.main([*args, "--ptq", str(ptq), "--exclude-invalid"]) == 0
    md = (root / "tables" / "qat.md").read_text()
    assert f"{ptq}: analyses run {_rid('fp', 'fp', 0)}, which is left out or not given" in md
    assert not (root / "tables" / "ptq.csv").exists()


def test_exclude_invalid_with_nothing_left_is_an_error(tmp_path, capsys):
    bad = _write(tmp_path / "m.json", "[]")
    assert cli.main(["tables", "--dataset", DS, "--out", str(tmp_path / "o"), "--train", str(bad),
                     "--exclude-invalid"]) == 3
    err = capsys.readouterr().err
    assert f"no runs found; pass the runs' metrics.json files with --train (--exclude-invalid left out 1 result " \
           f"file, the first: {bad}: expected a JSON object" in err and not (tmp_path / "o").exists()


def test_n_counts_the_values_in_each_cell():
    """Library use (e.g. runs from MLflow without a top-1): n and seeds count the values, checked by hand."""
    rows = [{"dataset": DS, "model": MODEL, "x_quant": x, "w_quant": w, "seed": s, "top1": TOP1[x, w, s],
             "top5": 99.5, "commit": "c", "config_hash": "h", "data_hash": "d", "run_id": _rid(x, w, s)}
            for x, w in PAIRS for s in SEEDS]
    rows[4]["top1"] = float("nan")  # ls-1/ls-1 seed 1
    qat = aggregate.qat_table(pd.DataFrame(rows), load_paper(), DS)
    for (x, w), r in zip([("ls-1", "ls-1"), ("ls-2", "ls-1"), ("fp", "fp")], qat.itertuples()):
        vals = [TOP1[x, w, s] for s in SEEDS if not (x == "ls-1" and s == 1)]
        assert (r.x_quant, r.w_quant, r.n_seeds) == (x, w, len(vals))
        assert r.top1_mean == pytest.approx(statistics.fmean(vals))
    assert qat.set_index("x_quant").loc["ls-1", "seeds"] == "0;2"
    runs = pd.DataFrame(rows).assign(top1_fitted=80.0, top1_stored=79.0)
    runs.loc[3, "top1_stored"] = float("nan")  # ls-1/ls-1 seed 0: the stored cell would count 2 of 3 seeds
    with pytest.raises(DataError, match="lenet5 ls-1/ls-1: top1_stored of seeds 1, 2 only, of seeds 0, 1, 2"):
        aggregate.inference_table(runs)


def test_the_run_file_error_is_a_data_error():
    assert issubclass(RunFileError, DataError) and RunFileError("x").exit_code == 3
