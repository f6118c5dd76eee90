"""README.md and docs/*.md: their result blocks are copies of the generated files (scripts/sync_readme.py), every
relative link and image resolves, the README stays short, and docs/mlflow.md names the experiments the code and
the published store use."""
import importlib.util
import inspect
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _sync():
    spec = importlib.util.spec_from_file_location("sync_readme", ROOT / "scripts" / "sync_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_pages_results_are_the_generated_files():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_readme.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_sync_covers_the_readme_and_every_docs_page():
    assert _sync().pages() == PAGES


def test_every_generated_results_file_is_included_somewhere():
    included = {m.group(1) for page in PAGES for m in re.finditer(r"<!-- include: (\S+)", page.read_text())}
    generated = {f"results/tables/fashion-mnist/{n}.md" for n in ("claims", "qat", "inference", "ptq", "error")}
    generated |= {f"results/bench/{n}.md" for n in ("kernels_headline", "models_headline", "quantizers")}
    assert generated <= included, sorted(generated - included)


def test_a_stale_block_is_refilled_and_a_missing_file_named():
    sync = _sync()
    page = "<!-- include: results/tables/fashion-mnist/ptq.md headings=+1 -->\nold numbers\n<!-- end include -->\n"
    body = (ROOT / "results/tables/fashion-mnist/ptq.md").read_text().strip("\n")
    assert sync.render(page, "docs/x.md") == page.replace("old numbers\n", sync.shift_headings(body, 1) + "\n")
    with pytest.raises(SystemExit, match=r"docs/x\.md includes results/nope\.md, which does not exist"):
        sync.render("<!-- include: results/nope.md -->\n<!-- end include -->", "docs/x.md")


def test_table_selection_keeps_the_named_columns_and_rows():
    sync = _sync()
    table = ("Title\n\n| name | a b | c |\n|:-----|----:|:--|\n| x | 1 | 2 |\n| y | 3 | 4 |\n| z | 5 | 6 |\n\nnote\n")
    got = sync.select_table(table, ["a b", "name"], ["z", "x"], "here")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in got.splitlines()]
    assert rows[0] == ["a b", "name"] and rows[2:] == [["1", "x"], ["5", "z"]]  # in the file's row order
    assert re.fullmatch(r"-+:", rows[1][0]) and re.fullmatch(r":-+", rows[1][1])  # each column's alignment kept
    assert len({len(line) for line in got.splitlines()}) == 1  # re-aligned
    with pytest.raises(SystemExit, match=r"here: no column 'd' \(columns: name, a b, c\)"):
        sync.select_table(table, ["d"], None, "here")
    with pytest.raises(SystemExit, match=r"here: no row 'w'"):
        sync.select_table(table, None, ["w"], "here")


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_relative_links_and_images_exist(page):
    text = FENCE.sub("", page.read_text())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 180  # a ten-minute read: commands, claims, QAT and engine tables, links
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, page.name


def test_readme_quick_start_commands_exist_in_makefile():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("reproduce", "test"):
        assert f"make {target}" in readme
        assert f"\n{target}:" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_docs_name_the_workflow_entry_point_and_switch_that_exist():
    text = "\n".join(p.read_text() for p in [*PAGES, ROOT / "config" / "README.md"])
    assert (ROOT / "Snakefile").is_file() and "workflow/Snakefile" not in text
    assert (ROOT / "profiles" / "default").resolve() == (ROOT / "workflow" / "profiles" / "default").resolve()
    for paragraph in re.split(r"\n\s*\n|\n- ", text):  # the old switches only as deprecated aliases
        if re.search(r"LSQBQ_(NATIVE|KERNELS|POPCNT)", paragraph):
            assert "DeprecationWarning" in paragraph and "LSQBQ_BACKEND" in paragraph, paragraph


# ------------------------------------------------------------------------------ MLflow experiments

MLFLOW_DOC = ROOT / "docs" / "mlflow.md"


def _documented_experiments() -> set[str]:
    return set(re.findall(r"`(lsqbq-[\w<>.\-]+)`", MLFLOW_DOC.read_text()))


def test_mlflow_doc_names_exactly_the_code_experiments():
    from lsqbq import bench
    from lsqbq.analysis import cli as analysis_cli
    from lsqbq.bench.harness import experiment_name
    from lsqbq.tracking.records import record_evaluation

    code = {experiment_name(name) for name in bench.BENCHMARKS}
    code.add(inspect.signature(record_evaluation).parameters["experiment"].default)  # lsqbq evaluate
    code.add(analysis_cli.EXPERIMENT)  # lsqbq analyze
    train = (ROOT / "lsqbq" / "train.py").read_text()
    assert 'f"lsqbq-{cfg.data.name}"' in train
    code.add("lsqbq-<data.name>")  # lsqbq train without tracking.experiment
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert "f\"lsqbq-{config['profile']}-{DATASET}\"" in common
    code |= {"lsqbq-<profile>-<dataset>", "lsqbq-default-fashion-mnist"}  # the workflow's, and the published one
    assert len(code) == 10, code
    assert _documented_experiments() == code


def test_published_store_holds_the_documented_workflow_experiment():
    db = ROOT / "mlflow.db"
    if not db.is_file():
        pytest.skip("the published MLflow store is not pulled (dvc pull mlflow.db)")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = con.execute(
        "SELECT e.name, r.name, (SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = "
        "'mlflow.parentRunId') FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
        "WHERE r.lifecycle_stage = 'active'").fetchall()
    con.close()
    workflow = [(name, parent) for exp, name, parent in rows if exp == "lsqbq-default-fashion-mnist"]
    trainings = {name for name, parent in workflow if parent is None}
    nested = {name.split()[0] for name, parent in workflow if parent is not None}
    published = {"{}-a{}-w{}-{}".format(ck.parts[-4], *ck.parts[-3].split("_"), ck.parts[-2])
                 for ck in (ROOT / "checkpoints" / "fashion-mnist").glob("*/*/s*/checkpoint.pt")}
    assert not published or trainings == published, sorted(trainings ^ published)  # one run per pulled checkpoint
    assert len(trainings) >= 54 and all(re.fullmatch(r"\w+-a[\w-]+-w[\w-]+-s\d+", n) for n in trainings), trainings
    assert nested == {"eval", "bitwise", "analyze"}, nested
    documented = _documented_experiments()
    bench = {exp for exp, name, _ in rows if name and name.startswith("bench_")}
    assert bench, "no benchmark run in the published store"
    for exp, name, _ in rows:
        if exp.startswith("lsqbq-bench-"):
            assert exp in documented and name == f"bench_{exp.removeprefix('lsqbq-bench-')}", (exp, name)
