"""Post-training weight quantization (:mod:`lsqbq.analysis.ptq`): KL to the fp model and NLL beside top-1, and
BatchNorm re-estimation, against independent numpy computations on tiny models."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lsqbq.analysis import cli as A
from lsqbq.analysis.measures import quantize_weights
from lsqbq.analysis.ptq import (BN_COLUMNS, CALIBRATION_SEED, MEASURES, calibration_loader, ptq_measures, ptq_rows,
                                reestimate_bn)
from lsqbq.errors import InputError
from lsqbq.evaluate import evaluate
from lsqbq.layers import QuantLinear

SCHEMES = ("fp", "gf-1", "ls-2")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is fastest, results do not depend on it


def _tiny(seed: int = 0) -> nn.Module:
    """flatten -> quantizable linear -> BN -> ReLU -> dropout -> quantizable linear -> BN -> linear (4 classes)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), QuantLinear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                          QuantLinear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    with torch.no_grad():  # trained-looking statistics, not the defaults
        for bn in (model[2], model[6]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _batches(n_batches: int = 4, size: int = 16, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 2, 2, generator=g), torch.randint(0, 4, (size,), generator=g))
            for _ in range(n_batches)]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


# ------------------------------------------------------------------------------------------ KL and NLL


def test_kl_is_zero_for_fp_positive_otherwise_and_equals_a_direct_computation():
    model, loader = _tiny(), _batches()
    models = {name: quantize_weights(model, name) for name in SCHEMES}
    got = ptq_measures(model, models, loader)
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader]).numpy()
    with torch.no_grad():
        log_p = _log_softmax(model(x).double().numpy())
        for name in SCHEMES:
            log_q = _log_softmax(models[name](x).double().numpy())
            kl = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))
            nll = float(np.mean(-log_q[np.arange(len(y)), y]))
            assert got[name]["kl"] == pytest.approx(kl, rel=1e-9, abs=1e-15)
            assert got[name]["nll"] == pytest.approx(nll, rel=1e-9)
            assert got[name]["n"] == len(y)
            # top-1 / top-5 are the numbers `lsqbq evaluate` gives, exactly
            ref = evaluate(models[name], loader)
            assert (got[name]["top1"], got[name]["top5"]) == (ref["top1"], ref["top5"])
    assert got["fp"]["kl"] == 0.0
    assert got["gf-1"]["kl"] > 0 and got["ls-2"]["kl"] > 0
    assert got["gf-1"]["kl"] > got["ls-2"]["kl"]  # one sign plane loses more of the model than two


def test_ptq_rows_one_pass_with_and_without_bn_reestimation():
    model, loader = _tiny(), _batches()
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = ptq_rows(model, SCHEMES, loader)
    # the fp row reuses the trained model's own logits: the same measures as running a separate copy, model unchanged
    copy_fp = ptq_measures(model, {"fp": quantize_weights(model, "fp")}, loader)["fp"]
    assert {k: plain[0][k] for k in MEASURES} == {k: copy_fp[k] for k in MEASURES}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_state.items())
    assert [r["w_quant"] for r in plain] == list(SCHEMES) and [r["k_w"] for r in plain] == ["32", "1", "2"]
    assert all(math.isnan(r[c]) for r in plain for c in BN_COLUMNS if c != "bn_images")
    assert {r["bn_images"] for r in plain} == {0}
    calibration = calibration_loader(TensorDataset(*map(torch.cat, zip(*_batches(seed=7)))), 40, 16)
    rows = ptq_rows(model, SCHEMES, loader, calibration)
    for before, after in zip(plain, rows):  # the plain columns do not depend on the re-estimation
        assert {k: before[k] for k in ("top1", "top5", "kl", "nll")} == {k: after[k] for k in ("top1", "top5", "kl",
                                                                                             "nll")}
    # independently: re-estimate a copy by hand and measure it against the unchanged model
    fixed = reestimate_bn(quantize_weights(model, "ls-2"), calibration)
    ref = ptq_measures(model, {"ls-2": fixed}, loader)["ls-2"]
    ls2 = rows[-1]
    assert (ls2["top1_bn"], ls2["kl_bn"], ls2["nll_bn"], ls2["bn_images"]) == (ref["top1"], ref["kl"], ref["nll"], 40)
    assert rows[0]["kl_bn"] > 0  # new statistics change even the fp model's outputs
    assert ptq_rows(model, SCHEMES, loader, calibration) == rows  # deterministic


# ------------------------------------------------------------------------------ BatchNorm re-estimation


def _bn_stats(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(m.running_mean.clone(), m.running_var.clone()) for m in (model[2], model[6])]


def _expected_stats(model: nn.Module, batches) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per BN layer: average over batches of each batch's mean and unbiased variance of the layer's input, the
    network run in float64 numpy with each BN normalising by its batch's (biased) statistics and dropout off."""
    lin1, bn1, lin2, bn2 = model[1], model[2], model[5], model[6]

    def affine(layer, h):
        return h @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()

    def norm(bn, h):
        return ((h - h.mean(0)) / np.sqrt(h.var(0) + bn.eps) * bn.weight.detach().double().numpy()
                + bn.bias.detach().double().numpy())

    sums = [[0.0, 0.0], [0.0, 0.0]]
    for x, _ in batches:
        h1 = affine(lin1, x.double().numpy().reshape(len(x), -1))
        h2 = affine(lin2, np.maximum(norm(bn1, h1), 0))
        for s, h in zip(sums, (h1, h2)):
            s[0] = s[0] + h.mean(0)
            s[1] = s[1] + h.var(0, ddof=1)
    return [(m / len(batches), v / len(batches)) for m, v in sums]


def test_bn_reestimation_recovers_corrupted_statistics():
    model, batches = _tiny(), _batches(n_batches=5, size=32, seed=3)
    expected = _expected_stats(model, batches)
    with torch.no_grad():  # corrupt the statistics
        for bn in (model[2], model[6]):
            bn.running_mean.fill_(7.0)
            bn.running_var.fill_(1e-3)
    seen = []
    hook = model[4].register_forward_hook(lambda m, i, o: seen.append(m.training))
    momenta = (model[2].momentum, model[6].momentum)
    reestimate_bn(model, batches)
    hook.remove()
    for (mean, var), (want_mean, want_var) in zip(_bn_stats(model), expected):
        np.testing.assert_allclose(mean.double().numpy(), want_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var.double().numpy(), want_var, rtol=1e-5, atol=1e-6)
    assert seen == [False] * len(batches)  # everything but BatchNorm stays in eval: dropout is off
    assert not any(m.training for m in model.modules())  # modes restored
    assert (model[2].momentum, model[6].momentum) == momenta
    again = _bn_stats(reestimate_bn(model, batches))  # deterministic: the same statistics bit for bit
    assert all(torch.equal(a, b) for pair in zip(_bn_stats(model), again) for a, b in zip(*pair))


def test_bn_reestimation_on_one_batch_gives_the_set_statistics_and_rejects_an_empty_loader():
    model = _tiny()
    x = torch.randn(64, 3, 2, 2, generator=torch.Generator().manual_seed(5))
    reestimate_bn(model, [(x, None)])
    with torch.no_grad():
        h1 = model[1](model[0](x)).double()
    mean, var = model[2].running_mean.double().numpy(), model[2].running_var.double().numpy()
    np.testing.assert_allclose(mean, h1.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, h1.var(0, unbiased=True).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="no batch"):
        reestimate_bn(model, [])


def test_calibration_loader_is_a_fixed_seeded_subset():
    data = TensorDataset(torch.arange(50.0).reshape(50, 1), torch.zeros(50, dtype=torch.long))
    order = torch.randperm(50, generator=torch.Generator().manual_seed(CALIBRATION_SEED))
    first = torch.cat([x for x, _ in calibration_loader(data, 20, 8)]).flatten()
    assert torch.equal(first, order[:20].float())
    assert torch.equal(first, torch.cat([x for x, _ in calibration_loader(data, 20, 8)]).flatten())
    assert [len(x) for x, _ in calibration_loader(data, 20, 8)] == [8, 8, 4]
    assert len(calibration_loader(data, 500, 8).dataset) == 50  # at most the whole split
    with pytest.raises(InputError, match=r"images \(0\)"):
        calibration_loader(data, 0, 8)


# ------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def lenet(tmp_path, monkeypatch):
    """A LeNet-5 checkpoint with its metrics.json; synthetic train and test loaders in place of the dataset (the
    loaders are built with augmentation off, which the stub checks); no MLflow record."""
    from lsqbq import data
    from lsqbq.checkpoint import FORMAT, build_model, save_atomic
    from lsqbq.config import from_dict, model_options, to_dict

    torch.manual_seed(0)
    cfg = from_dict({"model": {"name": "lenet5"}, "data": {"name": "fashion-mnist", "batch_size": 16}})
    opts = model_options(cfg, 10, 1)
    path = tmp_path / "run" / "checkpoint.pt"
    save_atomic({"format": FORMAT, "config": to_dict(cfg), "model_options": opts, "epoch": 1,
                 "model": build_model("lenet5", opts).state_dict()}, path)
    path.with_name("metrics.json").write_text(json.dumps({"run_id": "r0", "commit": "c", "config_hash": "h",
                                                          "data_hash": "d"}))
    g = torch.Generator().manual_seed(1)
    test = [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    train = DataLoader(TensorDataset(torch.randn(40, 1, 28, 28, generator=g), torch.randint(0, 10, (40,), generator=g)),
                       batch_size=16)

    def loaders(cfg):
        assert cfg.data.augment is False
        return train, test

    monkeypatch.setattr(data, "build_loaders", loaders)
    monkeypatch.setenv("LSQBQ_TRACKING", "0")  # the MLflow record is tested with the other analyses
    return path, test


def test_ptq_command_writes_kl_nll_and_bn_columns(lenet, tmp_path):
    path, test = lenet
    out = tmp_path / "out" / "ptq"
    assert A.main(["ptq", "--checkpoint", str(path), "--out", str(out), "--schemes", "fp", "gf-2", "ls-2",
                   "--bn-images", "32"]) == 0
    df = pd.read_csv(out.with_suffix(".csv"), dtype={"k_w": str, "k_a": str})
    assert list(df.columns[:8]) == ["w_quant", "k_w", "x_quant", "k_a", "top1", "top5", "kl", "nll"]
    assert list(df.w_quant) == ["fp", "gf-2", "ls-2"] and (df.run_id == "r0").all() and (df.bn_images == 32).all()
    from lsqbq.checkpoint import load_model

    model = load_model(str(path)).model.eval()
    for r in df.itertuples():  # the accuracy columns keep their meaning: `lsqbq evaluate` of the quantized model
        ref = evaluate(quantize_weights(model, r.w_quant), test)
        assert (r.top1, r.top5) == (ref["top1"], ref["top5"])
    assert df.kl[0] == 0.0 and (df.kl[1:] > 0).all() and df[["top1_bn", "kl_bn", "nll_bn"]].notna().all().all()
    md = out.with_suffix(".md").read_text()
    assert "KL to fp (nats)" in md and "BN re-estimated: top-1 (%)" in md and "| 0.0000 " in md
    assert A.main(["ptq", "--checkpoint", str(path), "--out", str(out), "--schemes", "fp", "--bn-images", "0"]) == 0
    df = pd.read_csv(out.with_suffix(".csv"))
    assert df.top1_bn.isna().all() and (df.bn_images == 0).all()
    assert "BN re-estimated: top-1" not in out.with_suffix(".md").read_text()


def test_ptq_command_rejects_a_negative_calibration_size(lenet, tmp_path):
    path, _ = lenet
    out = tmp_path / "bad" / "ptq"
    with pytest.raises(InputError, match="--bn-images: .* got -5"):
        A.main(["ptq", "--checkpoint", str(path), "--out", str(out), "--bn-images", "-5"])
    assert not out.parent.exists()  # nothing written


# ------------------------------------------------------------------------------------------------ tables


def _ptq_results() -> pd.DataFrame:
    """Four teachers of one model: ls-2 closer to the fp model than gf-2 on every teacher; teacher 3 predates the
    smooth measures (no KL, NLL or re-estimation)."""
    rows = []
    for seed, (kl_ls2, kl_gf2) in enumerate(((0.10, 0.50), (0.20, 0.45), (0.15, 0.70), (None, None))):
        for w, top1, kl in (("fp", 90.0 + seed, 0.0), ("gf-2", 40.0 + seed, kl_gf2), ("ls-2", 60.0 + 2 * seed, kl_ls2)):
            has = kl_ls2 is not None
            rows.append({"model": "m", "seed": seed, "run_id": f"r{seed}", "w_quant": w, "top1": top1,
                         "top5": 99.0, "kl": kl if has else float("nan"), "nll": 0.3 + kl if has else float("nan"),
                         "top1_bn": top1 + 1 if has else float("nan"), "kl_bn": kl / 2 if has else float("nan"),
                         "nll_bn": 0.3 if has else float("nan"), "bn_images": 2000 if has else 0})
    return pd.DataFrame(rows)


def test_ptq_table_aggregates_the_smooth_measures_with_n_per_cell():
    from lsqbq.tables import aggregate, views
    from lsqbq.tables.runs import load_paper

    table = aggregate.ptq_table(_ptq_results(), load_paper())
    ls2 = table[table["w_quant"] == "ls-2"].iloc[0]
    assert ls2["n_seeds"] == 4 and ls2["n_kl"] == 3 and ls2["n_top1_bn"] == 3 and ls2["bn_images"] == "2000;0"
    assert ls2["kl_mean"] == pytest.approx(0.15) and ls2["kl_std"] == pytest.approx(0.05)
    assert ls2["top1_bn_mean"] == pytest.approx(np.mean([61, 63, 65])) and ls2["top1_mean"] == pytest.approx(63.0)
    title, blocks = views.ptq_doc(table, "toy")
    text = "\n".join(b if isinstance(b, str) else b.to_markdown() for b in blocks)
    at = {b: i for i, b in enumerate(blocks) if isinstance(b, str)}
    kl = blocks[at["## KL divergence to the fp model and test NLL"] + 2]
    assert list(kl.columns) == ["weights", "k^w", "m: KL", "m: NLL"]
    assert kl.set_index("weights").loc["ls-2", "m: KL"] == "0.1500 ± 0.0500 (n=3)"
    bn = blocks[at["## Extra: BatchNorm re-estimation after weight quantization"] + 2]
    assert bn.set_index("weights").loc["fp", "m: KL"] == "0.0000 ± 0.0000 (n=3)" and "2000 training images" in text
    assert "not used by the claims" in text
    old = aggregate.ptq_table(_ptq_results().drop(columns=["kl", "nll", "top1_bn", "kl_bn", "nll_bn", "bn_images"]),
                              load_paper())
    assert len(views.ptq_doc(old, "toy")[1]) == 2  # results without the measures: the top-1 table alone


def test_ptq_claim_gets_a_supporting_kl_row_outside_the_holm_family():
    from scipy import stats

    from lsqbq.tables import accuracy
    from lsqbq.tables.runs import load_paper
    from lsqbq.tables.verdicts import REPRODUCED

    rows = accuracy.adjust_family(accuracy.ptq_claims(_ptq_results(), load_paper()))
    assert [r["kind"] for r in rows] == ["ptq", accuracy.PTQ_SUPPORT]
    top1, kl = rows
    assert top1["n"] == 4 and not math.isnan(top1["holm_level"])  # the accuracy row: every teacher, in the family
    d = np.array([0.10 - 0.50, 0.20 - 0.45, 0.15 - 0.70])
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert kl["difference"] == pytest.approx(d.mean()) and kl["n"] == 3 and kl["unit"] == "nats"
    assert (kl["ci_low"], kl["ci_high"]) == pytest.approx((lo, hi)) and kl["verdict"] == REPRODUCED
    assert math.isnan(kl["holm_level"]) and "analysis" not in kl and "supporting evidence" in kl["claim"]
    assert "KL 0.1500 ± 0.0500 vs 0.5500 ± 0.1323 nats" in kl["ours"]
    no_kl = _ptq_results().drop(columns=["kl"])
    assert [r["kind"] for r in accuracy.ptq_claims(no_kl, load_paper())] == ["ptq"]
