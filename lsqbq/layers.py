"""Quantized drop-in layers: ``QuantConv2d`` and ``QuantLinear``.

Operation: ``y = op(Q_x(clamp(x)), Q_w(W)) + bias`` where ``op`` is ``conv2d`` or ``linear``,
``Q_w`` quantizes the weights per output channel (rows of ``W.reshape(out, -1)``) and ``Q_x`` the activations
per sample (rows of ``x.reshape(B, -1)``), both with foldable least-squares schemes and straight-through
gradients (:mod:`lsqbq.ste`). With ``x_quant = w_quant = "fp"`` and no clamp the layers are exactly
``nn.Conv2d`` / ``nn.Linear``. Convolution zero-pads the *quantized* activations (padded entries are 0).

Activation scales (``act_stats``). Every training forward updates a moving average of the per-sample scales,
``ema <- momentum * ema + (1 - momentum) * mean_batch(v)`` (buffers ``x_scales_ema``, ``x_ema_updates``), whatever
the mode, so that a trained model can be evaluated either way (:func:`scale_mode`); the mode says which is *used*:
    ``off``             fitted on every sample, in training and evaluation (the official code's shipped setting);
    ``eval_only``       fitted per sample in training; evaluation uses the moving average (what the paper describes);
    ``train_and_eval``  the moving average is used in training and evaluation.
Weight scales are refitted at every training forward and cached (buffer ``w_scales``) for evaluation; the cache
is keyed on the weight tensor's version, so in-place updates or ``load_state_dict`` invalidate it.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .schemes import fit
from .schemes import Scheme, get_scheme
from .ste import foldable_ste

__all__ = ["QuantConv2d", "QuantLinear", "ACT_STATS_MODES", "SCALE_MODES", "scale_mode"]

ACT_STATS_MODES = ("off", "eval_only", "train_and_eval")
SCALE_MODES = ("auto", "fitted", "stored")  # activation scales at inference: as trained, per sample, moving average


class _Quantized:
    """Shared state and logic of the quantized layers (mixed into an ``nn.Conv2d`` / ``nn.Linear``)."""

    x_scheme: Scheme
    w_scheme: Scheme

    def _init_quant(self, x_quant, w_quant, clamp, act_stats: str, momentum: float) -> None:
        self.x_scheme = get_scheme(x_quant)
        self.w_scheme = get_scheme(w_quant)
        if clamp is not None:
            if isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not math.isfinite(clamp) or clamp <= 0:
                raise ValueError(f"clamp must be None or a positive finite number, got {clamp!r}")
            clamp = float(clamp)
        if act_stats not in ACT_STATS_MODES:
            raise ValueError(f"act_stats must be one of {ACT_STATS_MODES}, got {act_stats!r}")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        self.clamp = clamp
        self.act_stats = act_stats
        self.momentum = float(momentum)
        out = self.weight.shape[0]
        self.register_buffer("w_scales", torch.zeros(out, self.w_scheme.k))
        self.register_buffer("x_scales_ema", torch.zeros(self.x_scheme.k))
        self.register_buffer("x_ema_updates", torch.zeros((), dtype=torch.long))
        self._w_cache_key = None

    # ------------------------------------------------------------------ activations
    def quantize_input(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Clamp, then quantize each sample. Returns ``(x_q, scales)``; ``scales: (B, k)``, None for fp."""
        if self.clamp is not None:
            x = x.clamp(-self.clamp, self.clamp)
        if self.x_scheme.is_fp:
            return x, None
        rows = x.flatten(1)  # (B, n); B = 0 keeps its shape
        use_ema = self.act_stats == "train_and_eval" or (self.act_stats == "eval_only" and not self.training)
        if self.training or not use_ema:
            scales = fit(rows.detach(), self.x_scheme)  # (B, k)
        if self.training and rows.shape[0] > 0:  # recorded in every mode; an empty batch has no mean
            self._update_ema(scales)
        if use_ema:
            if int(self.x_ema_updates) == 0:
                raise RuntimeError(
                    f"{type(self).__name__}: act_stats={self.act_stats!r} but no moving-average activation scales "
                    "were recorded; train the layer first or load a checkpoint trained with this mode"
                )
            scales = self.x_scales_ema.to(rows.dtype).expand(rows.shape[0], -1)
        return foldable_ste(rows, scales).reshape(x.shape), scales

    @torch.no_grad()
    def _update_ema(self, scales: Tensor) -> None:
        batch = scales.mean(dim=0).to(self.x_scales_ema.dtype)
        if int(self.x_ema_updates) == 0:
            self.x_scales_ema.copy_(batch)
        else:
            self.x_scales_ema.mul_(self.momentum).add_(batch, alpha=1 - self.momentum)
        self.x_ema_updates += 1

    # ---------------------------------------------------------------------- weights
    def quantized_weight(self) -> tuple[Tensor, Tensor | None]:
        """Quantize the weights per output channel. Returns ``(W_q, scales)``; ``scales: (out, k)``, None for fp."""
        w = self.weight
        if self.w_scheme.is_fp:
            return w, None
        rows = w.reshape(w.shape[0], -1)  # (out, n)
        key = (w._version, w.data_ptr(), w.dtype)
        if self.training or self._w_cache_key != key:
            with torch.no_grad():
                self.w_scales.copy_(fit(rows.detach(), self.w_scheme))
            self._w_cache_key = None if self.training else key
        return foldable_ste(rows, self.w_scales).reshape(w.shape), self.w_scales

    def _load_quant_buffers(self, state_dict, prefix: str) -> None:
        """Let full-precision checkpoints (no quantizer buffers) load: weight scales are refitted from the weights;
        a missing activation moving average stays untracked (and is refused in evaluation if it is needed)."""
        for name in ("w_scales", "x_scales_ema", "x_ema_updates"):
            key = prefix + name
            if key not in state_dict:
                state_dict[key] = getattr(self, name).detach().clone()
        # Weight scales are a cache of a function of the weights; a shape from another scheme is refitted.
        if state_dict[prefix + "w_scales"].shape != self.w_scales.shape:
            state_dict[prefix + "w_scales"] = self.w_scales.detach().clone()
        # An activation moving average of another scheme's k (e.g. ``lsqbq evaluate --x-quant``) is dropped: the
        # layer starts untracked, so evaluation refuses to use an average it never recorded.
        if state_dict[prefix + "x_scales_ema"].shape != self.x_scales_ema.shape:
            state_dict[prefix + "x_scales_ema"] = self.x_scales_ema.detach().clone()
            state_dict[prefix + "x_ema_updates"] = torch.zeros_like(self.x_ema_updates)
        self._w_cache_key = None

    def _quant_repr(self) -> str:
        parts = [f"x_quant={self.x_scheme.name}", f"w_quant={self.w_scheme.name}"]
        if self.clamp is not None:
            parts.append(f"clamp={self.clamp:g}")
        if self.act_stats != "off":
            parts.append(f"act_stats={self.act_stats}, momentum={self.momentum:g}")
        return ", ".join(parts)


class QuantConv2d(_Quantized, nn.Conv2d):
    """``conv2d(Q_x(clamp(x)), Q_w(W)) + b``; ``nn.Conv2d`` when both schemes are ``fp`` and ``clamp`` is None.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as ``nn.Conv2d``
            (``padding_mode`` is ``"zeros"``: the quantized activations are zero-padded).
        x_quant: activation scheme (name or :class:`~lsqbq.schemes.Scheme`), scales per sample.
        w_quant: weight scheme, scales per output channel.
        clamp: if set, activations are clamped to ``[-clamp, clamp]`` before quantization (zero gradient outside).
        act_stats: ``off`` | ``eval_only`` | ``train_and_eval`` (module docstring).
        momentum: moving-average momentum of the activation scales.
    Shapes: ``x: (B, C_in, H, W) -> (B, C_out, H', W')``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, x_quant="fp", w_quant="fp", clamp=None, act_stats="off", momentum=0.99,
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self._init_quant(x_quant, w_quant, clamp, act_stats, momentum)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"QuantConv2d expects input of shape (B, C, H, W), got {tuple(x.shape)}")
        x_q, _ = self.quantize_input(x)
        w_q, _ = self.quantized_weight()
        return self._conv_forward(x_q, w_q, self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._load_quant_buffers(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._quant_repr()}"


class QuantLinear(_Quantized, nn.Linear):
    """``linear(Q_x(clamp(x)), Q_w(W)) + b``; ``nn.Linear`` when both schemes are ``fp`` and ``clamp`` is None.

    Args: as :class:`QuantConv2d` (``in_features``, ``out_features``, ``bias`` as ``nn.Linear``).
    Shapes: ``x: (B, ..., F_in) -> (B, ..., F_out)``; activation scales are per sample (all of ``x[b]``).
    """

    def __init__(self, in_features, out_features, bias=True, x_quant="fp", w_quant="fp", clamp=None,
                 act_stats="off", momentum=0.99, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_quant(x_quant, w_quant, clamp, act_stats, momentum)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"QuantLinear expects input of shape (B, ..., F), got {tuple(x.shape)}")
        x_q, _ = self.quantize_input(x)
        w_q, _ = self.quantized_weight()
        return F.linear(x_q, w_q, self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._load_quant_buffers(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._quant_repr()}"


@contextmanager
def scale_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Evaluate ``model`` with activation scales ``mode`` inside the block, then restore every layer's ``act_stats``.

    ``fitted`` fits the scales on each sample (``act_stats=off``), ``stored`` uses the moving averages recorded in
    training (``eval_only``), ``auto`` leaves each layer as trained. ``stored`` on a layer that recorded no average
    raises ``ValueError`` naming the layer. Applies to evaluation; a training forward in the block still updates
    the averages.
    """
    if mode not in SCALE_MODES:
        raise ValueError(f"scale mode must be one of {SCALE_MODES}, got {mode!r}")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _Quantized) and not m.x_scheme.is_fp}
    if mode == "stored":
        missing = [name for name, m in layers.items() if int(m.x_ema_updates) == 0]
        if missing:
            raise ValueError(f"stored activation scales requested but {len(missing)} layer(s) recorded no moving "
                             f"average (first: {missing[0]!r}); the checkpoint predates them: evaluate with fitted "
                             "scales or retrain")
    before = {name: m.act_stats for name, m in layers.items()}
    try:
        if mode != "auto":
            for m in layers.values():
                if mode == "fitted":
                    m.act_stats = "off"
                elif m.act_stats == "off":
                    m.act_stats = "eval_only"
        yield model
    finally:
        for name, m in layers.items():
            m.act_stats = before[name]
