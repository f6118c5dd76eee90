"""One evaluation pass per checkpoint (`lsqbq evaluate --predictions --bitwise-out`): its metrics and bitwise
comparison equal those of the separate commands bit for bit, its per-image predictions agree with an independent
computation from the model's logits, and the batch recorder (lsqbq.evaluation_runs) makes the same MLflow runs
the commands make, once per result."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from lsqbq import checkpoint as ckpt_io
from lsqbq.config import from_dict
from lsqbq.data import build_loaders
from lsqbq.errors import DataError
from lsqbq.evaluate import evaluate_checkpoint, main as evaluate_main
from lsqbq.evaluation_runs import DIGEST_TAG, record_files
from lsqbq.kernels.evaluation import evaluate_checkpoint_bitwise
from lsqbq.layers import scale_mode
from lsqbq.predictions import PredictionLog, read_predictions

from .conftest import tiny_config


@pytest.fixture(scope="module")
def student(tmp_path_factory, fmnist_root):
    """A seconds-long ls-2 / ls-1 student with moving-average scales recorded: (store URI, checkpoint)."""
    from lsqbq.train import run

    tmp = tmp_path_factory.mktemp("student")
    cfg = tiny_config(tmp, fmnist_root, data={"train_subset": 128, "test_subset": 96, "batch_size": 32,
                                              "eval_batch_size": 40},
                      model={"width": 4, "layers": [1], "x_quant": "ls-2", "act_stats": "eval_only"})
    cfg["tracking"]["log_checkpoint"] = False
    run(from_dict(cfg))
    return cfg["tracking"]["uri"], tmp / "run" / "checkpoint.pt"


def test_one_pass_equals_the_separate_evaluations(student, tmp_path, monkeypatch):
    uri, ckpt = student
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out, pred, bit = tmp_path / "m.json", tmp_path / "p.npy", tmp_path / "b.json"
    assert evaluate_main(["--checkpoint", str(ckpt), "--scales", "both", "--out", str(out), "--predictions",
                          str(pred), "--bitwise-out", str(bit), "--no-track"]) == 0
    # the separate commands, as the workflow ran them before: same numbers, same JSON text
    separate = evaluate_checkpoint(ckpt, scales="both")
    assert out.read_text() == json.dumps(separate, indent=2) + "\n"
    separate_bit = evaluate_checkpoint_bitwise(ckpt)
    assert json.loads(bit.read_text()) == separate_bit
    assert separate_bit["n"] == 96 and separate_bit["top1_agreement"] > 90

    # predictions: an independent computation from the simulated model's logits in each mode
    got = read_predictions(pred)
    loaded = ckpt_io.load_model(ckpt)
    _, loader = build_loaders(from_dict(loaded.state["config"]))
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert got.dtype.names == ("target", "pred_fitted", "p_true_fitted", "pred_stored", "p_true_stored")
    assert (got["target"] == y.numpy()).all()
    for mode in ("fitted", "stored"):
        with torch.no_grad(), scale_mode(loaded.model, mode):
            logits = torch.cat([loaded.model(b) for b in xs])
        assert (got[f"pred_{mode}"] == logits.argmax(1).numpy()).all()
        p = torch.softmax(logits, 1)[torch.arange(len(y)), y].numpy()
        np.testing.assert_allclose(got[f"p_true_{mode}"].astype(np.float64), p, rtol=1e-3, atol=1e-4)
        top1 = 100.0 * (got[f"pred_{mode}"] == got["target"]).mean()
        assert top1 == pytest.approx(separate[f"top1_{mode}"])
    first = pred.read_bytes()
    assert evaluate_main(["--checkpoint", str(ckpt), "--scales", "both", "--predictions", str(pred),
                          "--no-track"]) == 0
    assert pred.read_bytes() == first  # a pure function of the logits: equal evaluations, equal files


def test_the_batch_recorder_records_each_result_once(student, tmp_path, monkeypatch):
    uri, ckpt = student
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("LSQBQ_TRACKING", raising=False)
    out, bit = tmp_path / "metrics.json", tmp_path / "bitwise.json"
    assert evaluate_main(["--checkpoint", str(ckpt), "--scales", "both", "--out", str(out), "--bitwise-out",
                          str(bit), "--no-track"]) == 0
    c = MlflowClient(uri)
    before = {r.info.run_id for e in c.search_experiments() for r in c.search_runs([e.experiment_id])}
    assert record_files([out]) == (1, 0)
    new = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id]) if r.info.run_id not in before]
    assert sorted(r.info.run_name.split()[0] for r in new) == ["bitwise", "eval"]
    kinds = {r.info.run_name.split()[0]: r for r in new}
    assert kinds["eval"].data.metrics["top1_stored"] == pytest.approx(json.loads(out.read_text())["top1_stored"])
    assert kinds["bitwise"].data.tags["kernels"] == json.loads(bit.read_text())["kernels"]
    assert {r.data.tags[DIGEST_TAG] for r in new} == {
        __import__("hashlib").sha256(p.read_bytes()).hexdigest() for p in (out, bit)}
    assert all(r.data.params["checkpoint"] == str(ckpt) and r.info.status == "FINISHED" for r in new)
    assert record_files([out]) == (0, 1)  # already in the store: nothing new
    bad = tmp_path / "bad" / "metrics.json"
    bad.parent.mkdir()
    bad.write_text("[1, 2]")
    with pytest.raises(DataError, match=r"bad/metrics.json: not an evaluation result"):
        record_files([bad])


def test_prediction_files_refuse_what_they_are_not(tmp_path):
    plain = tmp_path / "plain.npy"
    np.save(plain, np.arange(4))
    with pytest.raises(DataError, match=r"plain.npy: not a predictions file"):
        read_predictions(plain)
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match=r"junk.npy: not a predictions file"):
        read_predictions(junk)
    log = PredictionLog()
    log.add_target(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="prediction mode"):
        log.add("auto", torch.zeros(2, 3), torch.tensor([0, 1]))
