"""The command line: one-line errors with the documented exit codes, tracebacks only on request, help and
version for users, no CUDA warning on CPU machines."""
from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

import lsqbq
from lsqbq import cli, errors

from ._helpers import REPO, assert_cli_error, assert_no_partial_outputs, guarded_env, snapshot, write_cifar, \
    write_idx_set, write_imagefolder


def _err_line(capsys, command: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"lsqbq {command}: ") and "Traceback" not in err[0], err[0]
    return err[0]


# ----------------------------------------------------------------------------------- help and version


def test_version_is_the_package_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lsqbq {lsqbq.__version__}"


def test_help_lists_every_command_on_one_line(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, summary) in cli.COMMANDS.items():
        assert any(line.split()[:1] == [name] and summary in line for line in out.splitlines()), name
    assert "dispatcher" not in out and "--version" in out and "--debug" in out and "exit codes" in out


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_bench_help_exits_0_and_lists_the_benchmarks(capsys, flag):
    assert cli.main(["bench", flag]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("quantizers", "kernels", "training"))


def test_bench_without_a_benchmark_is_a_usage_error(capsys):
    assert cli.main(["bench"]) == 2
    assert "usage: lsqbq bench" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["data"], ["train"], ["evaluate"], ["analyze"], ["tables"],
                                  ["bench", "quantizers"], ["bench", "kernels"], ["bench", "training"]],
                         ids=lambda a: "-".join(a))
def test_every_command_has_help(capsys, args):
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lsqbq " + " ".join(args))


@pytest.mark.parametrize("word,kind", [("trian", "command"), ("--verbose", "option")])
def test_unknown_command_or_option_is_one_line_with_exit_2(capsys, word, kind):
    assert cli.main([word]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"unknown {kind} {word!r}" in err and "train" in err


# ------------------------------------------------------------------------------ one line, exit codes


ERROR_CLASSES = [(errors.LsqbqError, 1), (errors.ConfigError, 2), (errors.SchemeError, 2), (errors.DataError, 3),
                 (errors.DataNotFoundError, 3), (errors.CheckpointError, 4), (errors.CheckpointNotFoundError, 4),
                 (errors.InputError, 5), (errors.InputTypeError, 5), (errors.TrainingError, 6)]


@pytest.mark.parametrize("args,needle", [
    (["models", "--seeds", "abc"], "argument --seeds: expected comma-separated integers, got 'abc'"),
    (["models", "--batches", "1,0"], "argument --batches: every value must be >= 1, got 0"),
    (["models", "--threads", "0"], "argument --threads: every value must be >= 1, got 0"),
    (["models", "--seeds", "-1"], "argument --seeds: every value must be >= 0, got -1"),
    (["kernels", "--threads", "1,x"], "argument --threads: expected comma-separated integers, got '1,x'"),
    (["quantizers", "--threads", "0"], "argument --threads: every value must be >= 1, got 0"),
    (["training", "--threads", "1,2"], "argument --threads: expected one integer, got '1,2'"),
])
def test_bench_list_options_are_checked_before_any_timing(capsys, tmp_path, args, needle):
    """Thread, seed and batch lists: a usage error (exit 2) naming the option and the value, nothing written."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error, as from the console (exit status 2)
        cli.main(["bench", *args, "--out", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("where", ["missing", "empty", "other seed"])
def test_bench_models_with_nothing_to_time_names_the_folder(capsys, tmp_path, where):
    """``--no-networks`` without a quantized checkpoint to time: one line naming the folder and seeds, exit 4
    (checkpoint not found), and the output folder untouched."""
    root = tmp_path / "ckpts"
    if where != "missing":
        root.mkdir()
    if where == "other seed":
        (root / "lenet5" / "ls-1_ls-1" / "s3").mkdir(parents=True)
        (root / "lenet5" / "ls-1_ls-1" / "s3" / "checkpoint.pt").write_bytes(b"not read")
    out = tmp_path / "out"
    code = cli.main(["bench", "models", "--no-networks", "--checkpoints", str(root), "--out", str(out)])
    assert code == errors.CheckpointNotFoundError.exit_code
    line = _err_line(capsys, "bench")
    assert "nothing to time" in line and str(root) in line and "seed(s) 0" in line
    assert not out.exists()


@pytest.mark.parametrize("cls,code", ERROR_CLASSES, ids=[c.__name__ for c, _ in ERROR_CLASSES])
def test_each_error_class_has_its_exit_code(capsys, cls, code):
    def fake_main(argv):
        raise cls("thing.key: bad value 7; use 8")

    assert cli.run_command("fake", fake_main, []) == code == cls.exit_code
    assert _err_line(capsys, "fake") == "lsqbq fake: thing.key: bad value 7; use 8"


def test_multi_line_message_is_printed_on_one_line(capsys):
    def fake_main(argv):
        raise errors.ConfigError("first part\n  second part\n")

    assert cli.run_command("fake", fake_main, []) == 2
    assert _err_line(capsys, "fake") == "lsqbq fake: first part; second part"


def test_error_from_a_dataloader_worker_keeps_only_its_message(capsys):
    wrapped = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise DataError(msg)\n'
               "lsqbq.errors.DataError: /data/train/cat/1.jpg: cannot decode the image (50 bytes)\n")

    def fake_main(argv):
        raise errors.DataError(wrapped)

    assert cli.run_command("train", fake_main, []) == 3
    assert _err_line(capsys, "train") == "lsqbq train: /data/train/cat/1.jpg: cannot decode the image (50 bytes)"


def test_unexpected_exception_is_one_line_with_a_hint(capsys):
    def fake_main(argv):
        raise ZeroDivisionError("division by zero")

    assert cli.run_command("fake", fake_main, []) == 1
    line = _err_line(capsys, "fake")
    assert "ZeroDivisionError: division by zero" in line and "--debug" in line


def test_os_error_names_the_file(capsys, tmp_path):
    def fake_main(argv):
        open(tmp_path / "no" / "such" / "file.yaml")

    assert cli.run_command("fake", fake_main, []) == 1
    assert str(tmp_path / "no" / "such" / "file.yaml") in _err_line(capsys, "fake")


def test_interrupt_exits_130(capsys):
    def fake_main(argv):
        raise KeyboardInterrupt

    assert cli.run_command("fake", fake_main, []) == 130
    assert _err_line(capsys, "fake") == "lsqbq fake: interrupted"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(capsys, monkeypatch, tmp_path, how):
    monkeypatch.setenv("LSQBQ_DEBUG", "0")  # restored afterwards: --debug sets it for child processes
    args = ["data", "hash", "cifar10", "--root", str(tmp_path / "none")]
    if how == "flag":
        args.insert(0, "--debug")
    else:
        monkeypatch.setenv("LSQBQ_DEBUG", "1")
    assert cli.main(args) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "DataNotFoundError" in err
    assert err.strip().splitlines()[-1].startswith("lsqbq data: ")


def test_no_traceback_without_debug(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("LSQBQ_DEBUG", raising=False)
    assert cli.main(["data", "hash", "cifar10", "--root", str(tmp_path / "none")]) == 3
    assert str(tmp_path / "none") in _err_line(capsys, "data")


# ----------------------------------------------------------------------------- real commands, real errors


def _crafted_cifar(tmp_path):
    root = tmp_path / "crafted"
    folder = write_cifar(root)

    class Payload:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(tmp_path / "PWNED")],))

    (folder / "data_batch_1").write_bytes(pickle.dumps(Payload(), protocol=2))
    return root, folder / "data_batch_1"


def _corrupt_gz(tmp_path):
    root = write_idx_set(tmp_path / "mnist", n_train=10, n_test=10, gz=True)
    path = root / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15] + b"\x00" * 40)
    return root, path


def _empty_image(tmp_path):
    root = write_imagefolder(tmp_path / "images")
    path = root / "train" / "dog" / "1.jpg"
    path.write_bytes(b"")
    return root, path


@pytest.mark.parametrize("dataset,make", [("cifar10", _crafted_cifar), ("mnist", _corrupt_gz),
                                          ("imagefolder", _empty_image)], ids=["crafted-cifar", "corrupt-gz",
                                                                               "empty-image"])
def test_data_hash_of_a_bad_file_is_one_line_exit_3(capsys, tmp_path, dataset, make):
    root, path = make(tmp_path)
    before = snapshot(tmp_path)
    assert cli.main(["data", "hash", dataset, "--root", str(root)]) == 3
    assert str(path) in _err_line(capsys, "data")
    assert not (tmp_path / "PWNED").exists()
    assert_no_partial_outputs(tmp_path, before)


def test_data_prepare_from_a_corrupt_source_leaves_no_copy(capsys, tmp_path):
    source, path = _corrupt_gz(tmp_path)
    assert cli.main(["data", "prepare", "mnist", "--root", str(tmp_path / "copy"), "--source", str(source)]) == 3
    assert str(path) in _err_line(capsys, "data")
    assert not (tmp_path / "copy").exists()


def test_data_with_an_unknown_dataset_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["data", "hash", "svhn", "--root", str(tmp_path)])
    assert e.value.code == 2 and "invalid choice: 'svhn'" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["config-file-missing", "unknown-config-key", "checkpoint-missing",
                                  "checkpoint-not-a-checkpoint"])
def test_cli_end_to_end_config_and_checkpoint_exit_codes(capsys, tmp_path, case):
    """Exit codes 2 (config) and 4 (checkpoint) through the real commands."""
    smoke = str(REPO / "config" / "smoke.yaml")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 not a zip archive")
    command, args, code, needle = {
        "config-file-missing": ("train", ["--config", str(tmp_path / "missing.yaml")], 2, "missing.yaml"),
        "unknown-config-key": ("train", ["--config", smoke, "--set", "bogus.key=1", "--out", str(tmp_path / "o")],
                               2, "bogus"),
        "checkpoint-missing": ("evaluate", ["--checkpoint", str(tmp_path / "none.pt")], 4, "none.pt"),
        "checkpoint-not-a-checkpoint": ("evaluate", ["--checkpoint", str(junk)], 4, "junk.pt"),
    }[case]
    before = snapshot(tmp_path)
    assert cli.main([command, *args]) == code
    assert needle in _err_line(capsys, command)
    assert_no_partial_outputs(tmp_path, before)


# --------------------------------------------------------------------------------------- subprocesses


def test_real_exit_code_and_one_stderr_line_from_the_console(cli, tmp_path):
    root, path = _crafted_cifar(tmp_path)
    result = cli("data", "hash", "cifar10", "--root", root)
    assert_cli_error(result, "data", 3, str(path), "refused")
    assert not (tmp_path / "PWNED").exists()


def test_python_dash_m_module_prints_the_same_line(tmp_path):
    env, _ = guarded_env(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lsqbq.data", "hash", "mnist", "--root", str(tmp_path / "x")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lsqbq data: ") and str(tmp_path / "x") in lines[0]


def test_no_cuda_runtime_warning_on_a_cpu_machine():
    """torch logs "No CUDA runtime is found" when it imports cpp_extension (to build the C++ library) on a
    machine with nvcc but no GPU; the command line drops exactly that record."""
    import logging

    cli.quiet_cuda_home_warning()
    cli.quiet_cuda_home_warning()  # idempotent
    logger = logging.getLogger("torch.utils.cpp_extension")
    assert sum(isinstance(f, cli._NoCudaRuntimeWarning) for f in logger.filters) == 1

    def record(msg):
        return logger.makeRecord(logger.name, logging.WARNING, "cpp_extension.py", 183, msg, ("/usr/local",), None)

    assert not logger.filter(record("No CUDA runtime is found, using CUDA_HOME='%s'"))
    assert logger.filter(record("another warning about %s"))
