"""A converted network over a large batch, a few images per pass (lsqbq.kernels.chunks): the same logits as one
pass and as the simulated model, each pass seeing the images it should."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lsqbq import passes
from lsqbq.kernels import chunks, to_bitwise
from lsqbq.kernels.chunks import BatchChunks, chunk_images
from lsqbq.models import build


@pytest.fixture(scope="module")
def resnet(randomise_bns):
    torch.manual_seed(1)
    return randomise_bns(build("resnet18", width=16, num_classes=10, x_quant="ls-1", w_quant="ls-1"), 2).eval()


def _batches_seen(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The model's output on ``x`` and the batch size of every call of its first layer (the stem)."""
    seen = []
    first = next(iter(model.children()))
    handle = first.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        with torch.inference_mode():
            return model(x), seen
    finally:
        handle.remove()


@pytest.mark.parametrize("chunk, passes", [(2, [2, 2, 1]), (1, [1] * 5), (5, [5]), (None, [5])])
def test_chunked_passes_give_the_one_pass_logits(resnet, chunk, passes):
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        ref = resnet(x)
        one = to_bitwise(resnet, chunk=None)(x)
    y, seen = _batches_seen(to_bitwise(resnet, chunk=chunk), x)
    assert seen == passes
    torch.testing.assert_close(y, one, rtol=1e-5, atol=1e-4)
    assert torch.equal(y.argmax(1), one.argmax(1)) and torch.equal(y.argmax(1), ref.argmax(1))


def test_auto_takes_as_many_images_as_fit_in_the_byte_budget(resnet, monkeypatch):
    x = torch.randn(7, 3, 32, 32)  # 12,288 bytes per image
    assert chunk_images(torch.empty(16, 3, 224, 224), "auto") == 1  # 602,112 bytes per image: one at a time
    assert chunk_images(torch.empty(256, 1, 28, 28), "auto") == passes.CHUNK_BYTES // (28 * 28 * 4)
    assert chunk_images(x, None) == 7 and chunk_images(x, 3) == 3 and chunk_images(x, 99) == 7
    monkeypatch.setattr(passes, "CHUNK_BYTES", 3 * 12288)
    monkeypatch.setattr(chunks, "MIN_PASS_IMAGES", 1)
    monkeypatch.setattr(chunks, "PASS_ACTIVATION_BYTES", 2 * LARGEST_BYTES)
    # first call: a first pass of the input budget (3 images) measures the largest activation; the other 4 images
    # go in even passes of at most 2
    assert _batches_seen(to_bitwise(resnet), x)[1] == [3, 2, 2]


#: The test ResNet's largest tensor at 32x32 per image: its input, 3 x 32 x 32 float32 (the 7x7/2 stem with its
#: max-pool, one leaf module, outputs 16 x 8 x 8; the first stage keeps that size).
LARGEST_BYTES = 3 * 32 * 32 * 4


def test_auto_passes_follow_the_measured_largest_activation(resnet, monkeypatch):
    """The first batch of a shape measures the largest activation per image in its first pass; later batches are
    split into even passes of at most PASS_ACTIVATION_BYTES of it, with the same logits as one pass."""
    fast = to_bitwise(resnet)
    x = torch.randn(30, 3, 32, 32)
    y, seen = _batches_seen(fast, x)
    assert seen == [21, 9]  # 21 images fit the input budget; the other 9 fit one pass of the 4 MiB budget
    assert fast.forward.activation_bytes == {((3, 32, 32), torch.float32): LARGEST_BYTES}
    monkeypatch.setattr(chunks, "MIN_PASS_IMAGES", 1)
    monkeypatch.setattr(chunks, "PASS_ACTIVATION_BYTES", 7 * LARGEST_BYTES)  # at most 7 images: 5 passes of 6
    y2, seen = _batches_seen(fast, x)
    assert seen == [6, 6, 6, 6, 6]
    with torch.inference_mode():
        one = to_bitwise(resnet, chunk=None)(x)
    torch.testing.assert_close(y, one, rtol=1e-5, atol=1e-4)
    assert torch.equal(y2, y)


@pytest.mark.parametrize("batch, per_image, images", [
    (256, 12544, 256),      # the 28x28 ResNet: 334 fit, the whole batch is one pass
    (1000, 12544, 334),     # 3 passes: 334, 334, 332
    (256, 46080, 86),       # LeNet-5: 91 fit, 3 even passes of 86, 86, 84
    (16, 3 << 20, 8),       # 224x224: the floor
    (5, 10**9, 5),          # never fewer than the floor, never more than the batch
    (17, 10**9, 6),         # floor 8: 3 passes of 6, 6, 5
])
def test_auto_pass_images_evens_out_the_passes(batch, per_image, images):
    assert chunks.auto_pass_images(batch, per_image) == images
    sizes = [len(p) for p in torch.arange(batch).split(images)]
    assert max(sizes) - min(sizes) <= max(1, images - min(sizes))  # no short last pass beyond the rounding
    assert max(sizes) <= max(chunks.MIN_PASS_IMAGES, chunks.PASS_ACTIVATION_BYTES // per_image)


def test_auto_passes_hold_at_least_the_floor(resnet):
    """Large images: the byte budget gives 5 images of 64x64x3 (49,152 bytes) per pass, the floor 8; small images
    keep the budget's larger passes (21 of 32x32x3)."""
    assert passes.CHUNK_BYTES // (3 * 64 * 64 * 4) == 5 and chunks.MIN_PASS_IMAGES == 8
    fast = to_bitwise(resnet)
    x = torch.randn(12, 3, 64, 64)
    y, seen = _batches_seen(fast, x)
    assert seen == [8, 4]
    with torch.inference_mode():
        torch.testing.assert_close(y, to_bitwise(resnet, chunk=None)(x), rtol=1e-5, atol=1e-4)
    assert _batches_seen(fast, torch.randn(30, 3, 32, 32))[1] == [21, 9]


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "all"])
def test_a_bad_chunk_is_named(resnet, bad):
    with pytest.raises(ValueError, match=r"chunk must be 'auto', None \(one pass\) or a number of images >= 1, "
                                         rf"got {bad!r}"):
        to_bitwise(resnet, chunk=bad)


def test_an_output_that_is_not_per_image_runs_the_whole_batch_once():
    class Total(nn.Module):
        def forward(self, x):
            return x.sum()

    calls = []
    m = Total()
    m.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))  # the call of m itself
    m.forward = BatchChunks(m, 2)
    x = torch.arange(10.0).reshape(5, 2)
    assert m(x) == x.sum()  # the chunks' sums are not concatenated: the whole batch is summed in one pass
    assert calls == [5]


def test_a_deep_copy_runs_its_own_layers(resnet):
    fast = to_bitwise(resnet, chunk=2)
    twin = copy.deepcopy(fast)
    assert twin.forward.module is twin and fast.forward.module is fast
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(twin(x), fast(x))



def test_run_in_passes_serves_any_network_on_the_cpu(resnet, monkeypatch):
    """The evaluation's passes (lsqbq.passes): a simulated network in passes of the byte budget gives the logits of
    one pass, and a batch that fits one pass is a single call."""
    monkeypatch.setattr(passes, "CHUNK_BYTES", 2 * 12288)
    x = torch.randn(5, 3, 32, 32)
    seen = []
    handle = resnet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        with torch.inference_mode():
            one = resnet(x)
            seen.clear()
            y = passes.run_in_passes(resnet, x)
            assert seen == [2, 2, 1]
            seen.clear()
            passes.run_in_passes(resnet, x[:2])
            assert seen == [2]
    finally:
        handle.remove()
    torch.testing.assert_close(y, one, rtol=1e-5, atol=1e-4)
    assert torch.equal(y.argmax(1), one.argmax(1))


def test_small_passes_run_on_one_thread(resnet):
    """A pass of under SERIAL_PASS_BYTES of input (here: one 32x32 RGB image, 12,288 bytes) runs with torch's
    thread count at 1; two images (24,576 bytes) keep the caller's 2; the count is restored after either."""
    fast = to_bitwise(resnet)
    threads = []
    first = next(iter(fast.children()))
    first.register_forward_pre_hook(lambda m, args: threads.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.inference_mode():
            one = fast(torch.randn(1, 3, 32, 32))
            fast(torch.randn(2, 3, 32, 32))
        assert threads == [1, 2] and torch.get_num_threads() == 2
        assert chunks.SERIAL_PASS_BYTES == 16 << 10 and one.shape == (1, 10)
    finally:
        torch.set_num_threads(before)


def test_threads_are_left_alone_off_the_main_thread(resnet):
    """torch's thread count is process-wide: a converted network called from another thread (a server's worker)
    runs its small passes without setting it, so concurrent callers cannot leave it changed."""
    import threading

    fast = to_bitwise(resnet)
    threads = []
    next(iter(fast.children())).register_forward_pre_hook(lambda m, args: threads.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)

        def call():
            with torch.inference_mode():
                fast(torch.randn(1, 3, 32, 32))

        worker = threading.Thread(target=call)
        worker.start()
        worker.join()
        assert threads == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_largest_activation_is_the_largest_leaf_output_per_image():
    """A leaf's output larger than the input is what sizes the passes: 64 x 8 x 8 float32 per image here."""
    m = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(64, 5)).eval()
    m.forward = BatchChunks(m, "auto")
    x = torch.randn(20, 3, 8, 8)
    with torch.inference_mode():
        y = m(x)
        torch.testing.assert_close(y, type(m).forward(m, x))
    assert m.forward.activation_bytes == {((3, 8, 8), torch.float32): 64 * 8 * 8 * 4}
