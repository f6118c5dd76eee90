"""Frozen networks (lsqbq.kernels.freeze): one traced graph per input signature, the converted model's outputs bit
for bit, the model's errors, and the frozen contract (graphs keep the model as traced until refresh)."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from lsqbq import _native
from lsqbq.errors import ConfigError, InputError
from lsqbq.kernels import BitwiseConv2d, Frozen, freeze, to_bitwise
from lsqbq.models import build


pytestmark = pytest.mark.usefixtures("one_thread")  # graphs run on one thread (see lsqbq.kernels.frozen)


@pytest.fixture(scope="module")
def nets(randomise_bns):
    torch.manual_seed(3)
    resnet = randomise_bns(build("resnet_small", in_chans=1, num_classes=10, x_quant="ls-2", w_quant="ls-1"), 4)
    lenet = randomise_bns(build("lenet5", in_chans=1, num_classes=10, x_quant="ls-1", w_quant="ls-1"), 5)
    return {"resnet_small": resnet.eval(), "lenet5": lenet.eval()}


@pytest.mark.parametrize("name", ["resnet_small", "lenet5"])
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_frozen_outputs_equal_the_model_bit_for_bit(nets, name, mode):
    fast = to_bitwise(nets[name])
    frozen = freeze(fast)
    ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    gen = torch.Generator().manual_seed(0)
    signatures = set()
    with ctx():
        for batch in (1, 5, 1):  # back to a traced signature: no new graph
            for x in (torch.randn(batch, 1, 28, 28, generator=gen),
                      torch.randn(batch, 1, 28, 28, generator=gen).contiguous(memory_format=torch.channels_last),
                      torch.randn(batch, 1, 28, 56, generator=gen)[..., ::2]):  # strided view
                assert torch.equal(frozen(x), fast(x))
                assert torch.equal(frozen(x), fast(x))  # the second call runs the graph
                signatures.add((tuple(x.shape), x.stride()))
    assert len(frozen._graphs) == len(signatures) == 4


def test_one_graph_per_signature_and_grad_mode_runs_the_model(nets):
    frozen = freeze(to_bitwise(nets["lenet5"]))
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        frozen(x)
        frozen(x.clone())
    assert len(frozen._graphs) == 1
    with torch.inference_mode():
        frozen(torch.randn(3, 1, 28, 28))
    assert len(frozen._graphs) == 2
    y = frozen(x)  # autograd recording: the model itself, nothing traced
    assert len(frozen._graphs) == 2 and torch.equal(y, frozen.model(x))


def test_a_signature_whose_tracing_sets_a_thread_count_keeps_the_model(nets):
    fast = to_bitwise(nets["resnet_small"])
    frozen = freeze(fast)
    x = torch.randn(8, 1, 28, 28)  # 25,088 bytes: over SERIAL_PASS_BYTES, so a 2-thread signature
    torch.set_num_threads(2)
    with torch.inference_mode():
        want = fast(x)
        assert torch.equal(frozen(x), want) and torch.equal(frozen(x), want)
    # the last 1x1 shortcut (64 x 7 x 7 outputs per image) is under SERIAL_OUTPUTS / SERIAL_MACS at batch 8: it runs
    # on one thread of its own choice, which a graph would replay on two
    assert len(frozen._graphs) == 1 and next(iter(frozen._graphs.values())) is fast
    assert torch.get_num_threads() == 2


def test_a_graph_traced_on_two_threads_equals_the_model_on_two_threads(nets):
    fast = to_bitwise(nets["resnet_small"])
    frozen = freeze(fast)
    x = torch.randn(16, 1, 28, 28)  # every float conv large enough for torch's threads, one pass
    torch.set_num_threads(2)
    with torch.inference_mode():
        want = fast(x)
        assert torch.equal(frozen(x), want)
        assert torch.equal(frozen(x), want)
        torch.set_num_threads(1)
        frozen(x)  # another thread count: another signature
    graphs = list(frozen._graphs.values())
    assert len(graphs) == 2 and all(isinstance(g, torch.jit.ScriptModule) for g in graphs)


def test_an_input_the_model_runs_on_one_thread_runs_its_graph_on_more_threads(nets):
    fast = to_bitwise(nets["resnet_small"])
    frozen = freeze(fast)
    x = torch.randn(4, 1, 28, 28)  # 12,544 bytes: under SERIAL_PASS_BYTES, the model's own pass takes one thread
    seen = []
    conv = next(m for m in fast.modules() if isinstance(m, BitwiseConv2d))
    hook = conv.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    with torch.inference_mode():
        want = fast(x)
        assert torch.equal(frozen(x), want)  # traced
        assert torch.equal(frozen(x), want)  # the graph
    hook.remove()
    assert len(frozen._graphs) == 1 and torch.get_num_threads() == 2
    assert seen == [1, 1, 1], seen  # the model, then freeze: its check call and the trace (a graph runs no hooks)


def test_a_new_backend_switch_gets_its_own_graph(nets, monkeypatch):
    fast = to_bitwise(nets["lenet5"])
    frozen = freeze(fast)
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        want = frozen(x)
        monkeypatch.setenv("LSQBQ_BACKEND", "portable")
        got = frozen(x)
    assert len(frozen._graphs) == 2
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_nan_input_raises_the_models_input_error(nets):
    frozen = freeze(to_bitwise(nets["resnet_small"]))
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        frozen(x)
        bad = x.clone()
        bad[1, 0, 3, 3] = float("nan")
        with pytest.raises(InputError, match="not finite") as got:
            frozen(bad)  # a traced signature: the graph's kernel reports it
        with pytest.raises(InputError) as want:
            frozen.model(bad)
    assert str(got.value) == str(want.value)


def test_refresh_traces_the_model_as_it_is_now(nets):
    fast = to_bitwise(copy.deepcopy(nets["lenet5"]))
    frozen = freeze(fast)
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        before = frozen(x)
    conv = next(m for m in fast.modules() if isinstance(m, BitwiseConv2d) and m.act == "none")
    assert conv.fuse_activation(nn.PReLU(init=-1.0))  # |y| before the ReLU: a kernel argument the graph holds
    with torch.inference_mode():
        changed = fast(x)
        assert not torch.equal(changed, before)
        assert torch.equal(frozen(x), before)  # frozen: the graph holds the layer as traced
        frozen.refresh()
        assert torch.equal(frozen(x), changed)


def test_a_copy_holds_the_model_only_and_training_is_refused(nets):
    frozen = freeze(to_bitwise(nets["lenet5"]))
    with torch.inference_mode():
        frozen(torch.randn(2, 1, 28, 28))
    for twin in (copy.deepcopy(frozen),):
        assert isinstance(twin, Frozen) and twin._graphs == {}
        with torch.inference_mode():
            x = torch.randn(2, 1, 28, 28)
            assert torch.equal(twin(x), frozen(x))
    with pytest.raises(ValueError, match="inference only"):
        frozen.train()
    with pytest.raises(ValueError, match="eval mode"):
        freeze(copy.deepcopy(nets["lenet5"]).train())


def _int8(net: nn.Module) -> nn.Module:
    try:
        return to_bitwise(net, float_parts="int8")
    except ConfigError:
        pytest.skip("this torch build has no oneDNN int8 ops")


@pytest.mark.skipif(not _native.active(), reason="the C++ library could not be built")
def test_int8_float_parts_freeze_into_a_graph(nets):
    """With a compiled back end an int8 layer is one op of this library (its activations' quantization, then
    oneDNN's op) on oneDNN's packed weights held as a buffer, so the network traces: one graph, the model's
    outputs bit for bit, and a NaN input still raises the model's error."""
    fast = _int8(nets["resnet_small"])
    frozen = freeze(fast)
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            y = frozen(x)
        assert isinstance(next(iter(frozen._graphs.values())), torch.jit.ScriptModule)
        assert torch.equal(y, fast(x)) and torch.equal(frozen(x), fast(x))
        bad = x.clone()
        bad[1, 0, 5, 5] = float("nan")
        with pytest.raises(InputError, match=r"not finite \(min nan, max nan\)"):
            frozen(bad)


def test_a_model_that_cannot_be_traced_runs_as_it_is(nets):
    fast = _int8(nets["resnet_small"])
    frozen = freeze(fast)
    x = torch.randn(2, 1, 28, 28)
    # the pure-torch path calls oneDNN's op itself, whose list of optional scalars TorchScript cannot record
    with torch.inference_mode(), _native.disabled():
        with pytest.warns(RuntimeWarning, match="cannot be traced"):
            y = frozen(x)
        assert torch.equal(y, fast(x)) and torch.equal(frozen(x), fast(x))


@pytest.mark.parametrize("float_parts", ["fp32", "int8"])
def test_models_save_and_load_whole(nets, float_parts, tmp_path):
    """``torch.save`` of a whole simulated, converted or frozen network, then ``torch.load``: the same outputs bit
    for bit (schemes pickle by name; oneDNN's packed int8 weights and traced graphs are made again on first use)."""
    sim = nets["resnet_small"]
    try:
        fast = to_bitwise(sim, float_parts=float_parts)
    except ConfigError:
        pytest.skip("this torch build has no oneDNN int8 ops")
    x = torch.randn(3, 1, 28, 28)
    for i, net in enumerate((sim, fast, freeze(fast))):
        with torch.inference_mode():
            want = net(x)
        torch.save(net, tmp_path / f"{i}.pt")
        loaded = torch.load(tmp_path / f"{i}.pt", weights_only=False)
        with torch.inference_mode():
            assert torch.equal(loaded(x), want)
