"""Every profile builds its full DAG without data; bad configs fail naming the key; lint is clean.

Run in a throw-away copy of the project without outputs, so every job of a profile is scheduled. A dry run writes
nothing, so the tests that read the same profile's plan share one call (``dry_run``): each Snakemake call costs
seconds (it parses the workflow, which imports torch).
"""
import re

import pytest
import yaml

from ._repo import REPO, copy_repo, job_counts, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("dryrun") / "repo")


@pytest.fixture(scope="module")
def dry_run(repo):
    """``dry_run(*args)``: the output of ``snakemake -n -p --cores 2 --nolock ARGS`` in the module's copy, made once
    per distinct ``args`` and shared by the tests that read it."""
    outputs: dict[tuple[str, ...], str] = {}

    def plan(*args: str) -> str:
        if args not in outputs:
            outputs[args] = snakemake(["-n", "-p", "--cores", "2", "--nolock", *args], repo).stdout
        return outputs[args]

    return plan


def _profile(name):
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if name != "default":
        base.update(yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text()))
    return base


def _row_seeds(cfg, model, pair):
    """The seeds of one row (`row_seeds`, else `seeds`); the fp teacher's also hold every student row's."""
    rows = (cfg.get("row_seeds") or {}).get(model, {})
    own = set(rows.get(pair, cfg["seeds"]))
    if pair == "fp/fp":
        own |= set().union(*(_row_seeds(cfg, model, f"{s['x_quant']}/{s['w_quant']}") for s in cfg["students"]))
    return own


def _expected(cfg):
    models, pairs = cfg["models"], ["fp/fp", *(f"{s['x_quant']}/{s['w_quant']}" for s in cfg["students"])]
    teachers = sum(len(_row_seeds(cfg, m, "fp/fp")) for m in models)
    runs = sum(len(_row_seeds(cfg, m, p)) for m in models for p in pairs)
    exp = {"train": runs, "prepare_data": 1, "make_tables": 1}
    both = [p for p in pairs if "fp" not in p.split("/")]
    bitwise = sum(len(_row_seeds(cfg, m, p)) for m in models for p in both) if cfg.get("evaluate_bitwise", True) else 0
    if cfg.get("evaluate", True):  # one job per checkpoint; the bitwise students' job also runs them bitwise
        exp["evaluate"] = runs - bitwise
        exp["record_evaluations"] = 1
    if cfg.get("analysis", {}).get("enabled", True):  # PTQ and angles per teacher seed, error on the first seed's
        exp |= {"analyze_ptq": teachers, "analyze_error": len(models), "analyze_angles": teachers,
                "analyze_sweep": 1}
    if cfg.get("bench", {}).get("kernels", True):
        exp["bench_kernels"] = 1
    if cfg.get("bench", {}).get("models", True):
        exp["bench_models"] = 1
    if cfg.get("bench", {}).get("peers", False):
        exp["bench_peers"] = 1
    if bitwise:
        exp["evaluate_with_bitwise"] = bitwise
    return exp


def test_row_seeds_give_a_row_its_own_seeds_and_its_teacher_every_student_seed(repo):
    (repo / "rows.yaml").write_text("row_seeds:\n  lenet5:\n    ls-2/ls-1: [0, 7]\n")
    out = snakemake(["-n", "-p", "--cores", "2", "--nolock", "--forcerun", "train", "--configfile", "rows.yaml",
                     "--", "train_all"], repo).stdout
    trained = set(re.findall(r"model\.name=(\w+) --set model\.x_quant=(\S+) --set model\.w_quant=(\S+)", out))
    seeds = {}
    for m in re.finditer(r"--set seed=(\d+) .*?model\.name=(\w+) --set model\.x_quant=(\S+) --set model\.w_quant=(\S+)",
                         out):
        seeds.setdefault((m[2], m[3], m[4]), set()).add(int(m[1]))
    default = set(_profile("default")["seeds"])
    assert seeds[("lenet5", "ls-2", "ls-1")] == {0, 7}
    assert seeds[("lenet5", "fp", "fp")] >= default | {7}  # the teacher of seed 7's student
    assert seeds[("lenet5", "gf-2", "ls-1")] == default
    assert trained


# Each profile's arguments: its config file, and a data root for the profiles that read data from outside the
# repository (the dry run needs no data); imagefolder also with a dataset tag and image size of its own.
PROFILE_ARGS = {
    "default": [],
    "test": ["--configfile", "config/test.yaml"],
    "cifar10": ["--configfile", "config/cifar10.yaml"],
    "cifar100": ["--configfile", "config/cifar100.yaml"],
    "imagenet": ["--configfile", "config/imagenet.yaml", "--config", "data_root=/nonexistent/imagenet"],
    "imagefolder": ["--configfile", "config/imagefolder.yaml",
                    "--config", "data_root=/nonexistent/my-images", "dataset_tag=flowers", "image_size=64"],
    "imagefolder-cpu": ["--configfile", "config/imagefolder-cpu.yaml", "--config", "data_root=/nonexistent/my-images"],
}


@pytest.mark.parametrize("name", list(PROFILE_ARGS))
def test_profile_dry_run_builds_full_dag(dry_run, name):
    out = dry_run(*PROFILE_ARGS[name])
    counts = job_counts(out)
    expected = _expected(_profile(name))
    assert {k: counts.get(k) for k in expected} == expected
    if name == "imagefolder":
        assert "results/tables/flowers/qat.md" in out and "/nonexistent/my-images" in out
        assert "data.image_size=64" in out


@pytest.mark.parametrize("name", sorted(PROFILE_ARGS))
def test_every_training_job_trains_the_model_its_path_names(dry_run, name):
    """The model in a checkpoint's path is the model its job trains, whatever the recipe says (or a null one)."""
    out = dry_run(*PROFILE_ARGS[name])
    jobs = re.findall(r"--set model\.name=(\S+) .*?--out \S*?checkpoints/[^/]+/([^/]+)/", out)
    trains = job_counts(out).get("train", 0)
    assert trains > 0 and len(jobs) == trains, (len(jobs), trains)
    assert all(named.strip("'") == in_path for named, in_path in jobs), jobs


def test_profile_by_name_equals_configfile(dry_run):
    by_file = job_counts(dry_run("--configfile", "config/cifar100.yaml"))
    by_name = job_counts(dry_run("--config", "profile=cifar100"))
    assert by_name == by_file and by_name["train"] == 27


def test_imagenet_uses_torchrun_and_the_official_recipe(dry_run):
    out = dry_run(*PROFILE_ARGS["imagenet"])
    ls2 = next(line for line in out.splitlines() if "model.x_quant=ls-2" in line and "torchrun" in line)
    for key in ("--nproc-per-node=8", "epochs=240", "optim.lr=2.0e-4", "schedule.name=linear", "model.clamp=3.0",
                "model.nonlinearity=relu", "kd.temperature=1.0", "kd.teacher=checkpoints/imagenet/resnet18/fp_fp/s0"):
        assert key in ls2, key


def test_slurm_profile_dry_run(repo):
    out = snakemake(["-n", "--nolock", "--profile", "workflow/profiles/slurm", "--configfile", "config/cifar100.yaml"],
                    repo).stdout
    assert job_counts(out)["train"] == 27


def test_multi_gpu_training_job_launches_torchrun_per_gpu(repo):
    """A dry run with the SLURM profile (no cluster needed): a training job with 2 GPUs (the rule's `gpu` resource,
    which the executor turns into `sbatch --gpus=2`) runs torchrun with one process per GPU inside the job, which
    then joins with NCCL (tests/training/test_distributed.py)."""
    out = snakemake(["-n", "-p", "--nolock", "--profile", "workflow/profiles/slurm",
                     "--configfile", "config/cifar100.yaml", "--config", "gpus=2"], repo).stdout
    train = [line for line in out.splitlines() if "-m lsqbq.train" in line or "lsqbq train" in line]
    assert len(train) == 27 and all("torchrun --standalone --nproc-per-node=2 -m lsqbq.train" in t for t in train)


@pytest.mark.parametrize("args, message", [
    (["--config", "epochz=3"], "(top level): Additional properties are not allowed ('epochz' was unexpected)"),
    (["--config", "threads=zero"], "threads: 'zero' is not of type 'integer'"),
    (["--config", "seeds=[-1]"], "seeds.0: -1 is less than the minimum of 0"),
    (["--configfile", "bad.yaml"], "analysis: Additional properties are not allowed ('imagez' was unexpected)"),
    (["--configfile", "bad_scheme.yaml"], "students.0.x_quant: 'ls-3' does not match"),
    (["--configfile", "bad_row.yaml"], "row_seeds.lenet5.ls-9/ls-2: not a row (x_quant/w_quant with scheme names"),
    (["--configfile", "bad_row_model.yaml"], "row_seeds: 'vgg' is not one of ['lenet5', 'resnet18', 'resnet_small']"),
    (["--config", "models=[resnet_smal]"], "models.0: 'resnet_smal' is not one of ['lenet5', 'resnet18',"),
])
def test_bad_config_fails_naming_the_key(repo, args, message):
    (repo / "bad.yaml").write_text("analysis:\n  imagez: 3\n")
    (repo / "bad_row.yaml").write_text("row_seeds:\n  lenet5:\n    ls-9/ls-2: [1]\n")
    (repo / "bad_row_model.yaml").write_text("row_seeds:\n  vgg:\n    fp/fp: [1]\n")
    (repo / "bad_scheme.yaml").write_text("students:\n  - {x_quant: ls-3, w_quant: ls-1}\n")
    p = snakemake(["-n", "--nolock", *args], repo, check=False)
    assert p.returncode != 0
    assert message in p.stdout + p.stderr


def test_lint_is_clean(repo):
    p = snakemake(["--lint"], repo, check=False)
    assert "Congratulations, your workflow is in a good condition!" in p.stdout + p.stderr, p.stdout + p.stderr


def test_default_workflow_profile_is_applied(repo):
    """`snakemake` run from the repository root reads the top-level Snakefile and picks the workflow profile
    (workflow/profiles/default, linked as profiles/default beside the Snakefile): its printshellcmds shows."""
    assert (repo / "Snakefile").is_file() and not (repo / "workflow" / "Snakefile").exists()
    assert (repo / "profiles" / "default").resolve() == (repo / "workflow" / "profiles" / "default").resolve()
    r = snakemake(["-n", "--configfile", "config/test.yaml"], repo)
    text = r.stdout + r.stderr
    assert "Using workflow specific profile profiles/default" in text
    assert "Shell command:" in text and "lsqbq train" in text  # printshellcmds: true, from the profile


@pytest.mark.parametrize("args, store", [
    ([], "sqlite:///mlflow.db"),  # the default profile on its own data: the published, DVC-tracked store
    (["--configfile", "config/imagefolder-cpu.yaml", "--config", "data_root=/nonexistent/x"],
     "sqlite:///mlruns-profiles/imagefolder-cpu-my-images-cpu/mlflow.db"),
    (["--config", "dataset_tag=mine"], "sqlite:///mlruns-profiles/default-mine/mlflow.db"),
    (["--config", "data_root=/nonexistent/other"], "sqlite:///mlruns-profiles/default-fashion-mnist/mlflow.db"),
])
def test_only_the_default_profile_logs_into_the_published_store(dry_run, args, store):
    out = dry_run("--forcerun", "train", *args)
    uris = set(re.findall(r"tracking\.uri=(\S+)", out))
    assert uris == {store}, uris
