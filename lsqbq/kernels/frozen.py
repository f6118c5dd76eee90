"""Frozen inference graphs of a converted network: the same ops, replayed without the Python of its modules.

``freeze(model)`` wraps a :func:`~lsqbq.kernels.to_bitwise` network (or any eval-mode module of traceable ops).
The first call for an input signature -- shape, strides, dtype, device, the kernel back-end switch
(:func:`lsqbq._native.switch_state`), torch's thread count and whether the caller is the main thread -- runs
``torch.jit.trace`` on the model with that input and keeps the graph (at most :data:`MAX_GRAPHS`; then it starts
over); later calls with the same signature run the graph. A graph replays the ops that the traced call ran, with
that call's pass sizes and kernel arguments, so:

* the model is frozen, as with ``torch.jit.freeze``: after changing it, call :meth:`Frozen.refresh`. A graph holds
  the converted layers' packed weights, scales and kernel arguments as they were when it was traced (it shares
  the float layers' parameters, so in-place changes to those do show);
* the ops read torch's thread count when they run, in the graph as in the model, but the model also sets it in
  Python for some calls (:func:`lsqbq.passes.run_with_threads`: a float convolution too small to split, a pass of
  a few small images), which a graph does not replay, and the float kernels' results depend on it in the last
  bits. So an input the model runs on one thread throughout (:func:`~lsqbq.kernels.chunks.runs_serially`) has its
  graph traced and run on one thread; on more threads, a signature whose tracing set a thread count anywhere keeps
  the model itself instead of a graph. With autograd recording (``torch.is_grad_enabled()`` outside
  ``inference_mode``) or an input that is not a tensor, a call runs the model itself;
* a call whose graph fails (a kernel's report of a non-finite input) runs the model itself, which raises its own
  error (:class:`~lsqbq.errors.InputError` naming the sample); a model that cannot be traced (e.g. int8 float parts
  without the compiled library: oneDNN's int8 op takes a list of optional scalars, which tracing cannot record)
  runs as it is, after one ``RuntimeWarning``. With the library, an int8 layer is one op of it and traces.

Outputs equal the model's bit for bit (the ops and their arguments are the same). The saving is the modules'
per-call Python (argument checks, plan lookups, back-end resolution): for the binary ResNet-18 at batch 1 on one
thread, about 0.7 ms of 7 (``results/bench/models.md``, ``results/bench/peers.md``).
"""
from __future__ import annotations

import threading
import warnings

import torch
from torch import Tensor, nn

from .. import _native
from ..passes import run_with_threads, thread_switches
from .chunks import runs_serially

__all__ = ["Frozen", "freeze", "MAX_GRAPHS"]

MAX_GRAPHS = 8  # input signatures kept per frozen model


class Frozen(nn.Module):
    """A network run as one traced graph per input signature (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.training:
            raise ValueError("freeze() takes a model in eval mode (call model.eval() first): a traced graph would "
                             "keep training-mode BatchNorm and dropout")
        self.model = model
        self._graphs: dict[tuple, nn.Module] = {}  # a traced graph, or the model where tracing failed

    def refresh(self) -> None:
        """Drop the traced graphs: the next call of each signature traces the model as it is now."""
        self._graphs.clear()

    def train(self, mode: bool = True) -> "Frozen":
        if mode:
            raise ValueError("a frozen model serves inference only; train the model it wraps instead")
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or (torch.is_grad_enabled() and not torch.is_inference_mode_enabled()):
            return self.model(x)
        threads = 1 if runs_serially(self.model, x) else torch.get_num_threads()
        main = threading.current_thread() is threading.main_thread()
        key = (tuple(x.shape), x.stride(), x.dtype, x.device, _native.switch_state(), threads, main)
        graph = self._graphs.get(key)
        if graph is None:
            graph = run_with_threads(threads, self._trace, x, key)
        try:
            return run_with_threads(threads, graph, x)
        except (ValueError, RuntimeError):  # e.g. NaN input: the model raises its own error (or runs, if it can)
            return self.model(x)

    def _trace(self, x: Tensor, key: tuple):
        self.model(x)  # the model's own checks and errors first (a bad input is never traced)
        switches = thread_switches()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarning: the shape-dependent Python is what a graph freezes
                graph = torch.jit.trace(self.model, (x,), check_trace=False)
            if thread_switches() != switches:  # an op ran on a thread count of its own: not replayable (docstring)
                graph = self.model
        except RuntimeError as exc:  # an op call TorchScript cannot record (module docstring)
            warnings.warn(f"freeze: this model cannot be traced ({str(exc).splitlines()[0]}); it runs as it is",
                          RuntimeWarning, stacklevel=4)
            graph = self.model
        if len(self._graphs) >= MAX_GRAPHS:
            self._graphs.clear()
        self._graphs[key] = graph
        return graph

    def __getstate__(self):
        state = super().__getstate__().copy()
        state["_graphs"] = {}  # graphs are rebuilt on first use (a copy holds the model only)
        return state

    def extra_repr(self) -> str:
        return f"graphs={len(self._graphs)}"


def freeze(model: nn.Module) -> Frozen:
    """``model`` (eval mode, e.g. from :func:`~lsqbq.kernels.to_bitwise`) wrapped to run as traced graphs."""
    return Frozen(model)
