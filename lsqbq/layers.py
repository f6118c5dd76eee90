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
is keyed on the weight tensor's version, so in-place updates or ``load_state_dict`` invalidate it (inference
tensors, made under ``torch.inference_mode()``, have no version: their scales are refitted at every forward).

Checks. A wrong input size is an :class:`~lsqbq.errors.InputError` naming the layer (its qualified name in the
model once known: set by ``load_state_dict`` and :func:`name_layers`), the expected and the given size. Stored
activation scales (a recorded ``x_scales_ema``) must be finite, positive and satisfy the scheme's rule
(:meth:`~lsqbq.schemes.Scheme.check_scales`: ``v_1 >= v_2`` for ls-2, equal for ls-T); they are checked when a
state dict is loaded (:class:`~lsqbq.errors.CheckpointError`) and before their first use at inference
(:class:`~lsqbq.errors.InputError`, then cached until the buffer changes). A state dict whose quantizer buffers
belong to a scheme with another number of scales (ls-1 weights under an ls-2 label) is refused unless loaded
inside :func:`scheme_change` (post-training re-quantization, e.g. ``lsqbq evaluate --w-quant``; a moving
average the layer does not use, ``act_stats=off``, is dropped instead); full-precision checkpoints always load.
"""
from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import CheckpointError, InputError, InputTypeError
from .schemes import Scheme, fit, get_scheme
from .ste import foldable_ste

__all__ = ["QuantConv2d", "QuantLinear", "ACT_STATS_MODES", "SCALE_MODES", "scale_mode", "scheme_change",
           "name_layers", "layer_label", "check_input", "tensor_version", "seen_state", "unchanged",
           "stored_scales_problem"]

ACT_STATS_MODES = ("off", "eval_only", "train_and_eval")
SCALE_MODES = ("auto", "fitted", "stored")  # activation scales at inference: as trained, per sample, moving average
_SCHEME_CHANGE = contextvars.ContextVar("lsqbq_scheme_change", default=False)


@contextmanager
def scheme_change() -> Iterator[None]:
    """Inside the block, quantized layers load state dicts whose quantizer buffers belong to another scheme
    (post-training re-quantization): weight scales are refitted from the weights and an activation moving average
    of another size is dropped (the layer is then untracked). Outside it such a state dict raises
    :class:`~lsqbq.errors.CheckpointError` naming the layer: its weights were trained under another label."""
    token = _SCHEME_CHANGE.set(True)
    try:
        yield
    finally:
        _SCHEME_CHANGE.reset(token)


def tensor_version(t: Tensor) -> int | None:
    """``t._version``, or None for an inference tensor (made under ``torch.inference_mode()``: no version)."""
    return None if t.is_inference() else t._version


def seen_state(t: Tensor) -> tuple:
    """What :func:`unchanged` compares ``t`` against later: its version and storage, and for an inference tensor
    (no version counter) a copy of its values. For small tensors (the stored activation scales)."""
    return tensor_version(t), t.data_ptr(), t.detach().clone() if t.is_inference() else None


def unchanged(t: Tensor, seen: tuple | None) -> bool:
    """``t`` holds what :func:`seen_state` recorded in ``seen`` (False for None): the same version and storage, and
    for an inference tensor the same values (one comparison instead of re-validating it)."""
    if seen is None:
        return False
    version, ptr, values = seen
    if tensor_version(t) != version or t.data_ptr() != ptr:
        return False
    return values is None or (values.shape == t.shape and torch.equal(values, t))


def stored_scales_problem(scheme: Scheme, v: Tensor) -> str | None:
    """Why a recorded moving average ``v: (k,)`` cannot serve as ``scheme``'s activation scales, or None: it holds
    NaN/Inf, a scale ``<= 0`` (all levels collapse to 0 or flip signs), or breaks the scheme's rule for given
    scales (:meth:`~lsqbq.schemes.Scheme.check_scales`, the rule ``lsqbq.quantize`` applies: ``v_1 >= v_2`` for
    ls-2, ``v_1 = v_2`` for ls-T). Cost O(k)."""
    v = v.detach().reshape(1, -1)
    if not bool(torch.isfinite(v).all()):
        return f"holds NaN or Inf: {v[0].tolist()}"
    if not bool((v > 0).all()):
        return f"holds a non-positive scale: {v[0].tolist()}"
    try:
        scheme.check_scales(v)
    except InputError as e:
        return str(e).removeprefix(f"{scheme.name}: given scales row 0 ")
    return None


def layer_label(kind: str, n_in: int, n_out: int, name: str | None) -> str:
    """How errors name a layer: ``QuantConv2d(3->64) 'layer1.0.conv1'`` (the name once known)."""
    return f"{kind}({n_in}->{n_out})" + (f" {name!r}" if name else "")


def check_input(label: str, x, dims: tuple[str, ...], size: int, size_name: str, axis: int) -> None:
    """Raise naming ``label``, the expected and the given size when ``x`` is not a floating tensor of rank
    ``len(dims)`` (at least ``len(dims) - 1`` when ``dims`` holds ``...``) with ``x.shape[axis] == size``.

    Raises:
        InputTypeError: ``x`` is not a tensor, or not floating point.
        InputError: wrong rank or size.
    """
    if not isinstance(x, Tensor):
        raise InputTypeError(f"{label}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputTypeError(f"{label}: expected a floating-point input, got {x.dtype}")
    if x.dim() < len(dims) - 1 if "..." in dims else x.dim() != len(dims):
        raise InputError(f"{label}: expected input of shape ({', '.join(dims)}), got {tuple(x.shape)}")
    if x.shape[axis] != size:
        raise InputError(f"{label}: expected {size} {size_name}, got {x.shape[axis]} (input shape {tuple(x.shape)})")


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
        self._ema_seen = None  # x_scales_ema as last validated (seen_state; see _check_stored_scales)
        self.layer_name: str | None = None  # qualified name in the model, once known (errors name it)

    # ----------------------------------------------------------------------- checks
    def _label(self) -> str:
        return layer_label(type(self).__name__, self.weight.shape[1] * getattr(self, "groups", 1),
                           self.weight.shape[0], self.layer_name)

    def _stored_scales_problem(self, v: Tensor) -> str | None:
        return stored_scales_problem(self.x_scheme, v)

    def _check_stored_scales(self) -> None:
        """Validate ``x_scales_ema`` before it is used; cached until the buffer changes (:func:`unchanged`)."""
        ema = self.x_scales_ema
        if unchanged(ema, self.__dict__.get("_ema_seen")):
            return
        why = self._stored_scales_problem(ema)
        if why is not None:
            raise InputError(f"{self._label()}: stored activation scales (x_scales_ema, {self.x_scheme.name}) {why}; "
                             "reload a valid checkpoint or evaluate with fitted scales")
        self._ema_seen = seen_state(ema)

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
                    f"{self._label()}: act_stats={self.act_stats!r} but no moving-average activation scales "
                    "were recorded; train the layer first or load a checkpoint trained with this mode"
                )
            if not self.training:
                self._check_stored_scales()
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
        key = (tensor_version(w), w.data_ptr(), w.dtype)
        if self.training or key[0] is None or self._w_cache_key != key:
            with torch.no_grad():
                self.w_scales.copy_(fit(rows.detach(), self.w_scheme))
            self._w_cache_key = None if self.training else key
        return foldable_ste(rows, self.w_scales).reshape(w.shape), self.w_scales

    def _load_quant_buffers(self, state_dict, prefix: str) -> None:
        """Adapt and validate the quantizer buffers of ``state_dict`` before they are copied in.

        Full-precision checkpoints (no quantizer buffers, or scales of size 0) load: weight scales are refitted
        from the weights, a missing activation moving average stays untracked (refused in evaluation if needed).
        Weight scales of a quantized scheme with another number of scales, and a recorded moving average of
        another size in a layer whose ``act_stats`` uses it, are refused (a relabelled checkpoint) unless loaded
        inside :func:`scheme_change`; with ``act_stats=off`` such an average is dropped (it is never used). A
        recorded moving average the layer uses must pass :meth:`_stored_scales_problem` (one it does not use is
        checked before :func:`scale_mode` ``stored`` uses it).

        Raises:
            CheckpointError: naming the layer, for both.
        """
        self.layer_name = prefix[:-1] if prefix.endswith(".") else (prefix or self.layer_name)
        for name in ("w_scales", "x_scales_ema", "x_ema_updates"):
            key = prefix + name
            if key not in state_dict:
                state_dict[key] = getattr(self, name).detach().clone()
        w_key, x_key, n_key = prefix + "w_scales", prefix + "x_scales_ema", prefix + "x_ema_updates"
        stored_w, stored_x = state_dict[w_key], state_dict[x_key]
        recorded = isinstance(state_dict[n_key], Tensor) and int(state_dict[n_key]) > 0
        stored_wk = stored_w.shape[-1] if stored_w.dim() == 2 else None
        uses_ema = self.act_stats != "off"  # an average the layer never uses is dropped, not refused
        for what, side, k_stored, k_own in (("weight", self.w_scheme, stored_wk, self.w_scheme.k),
                                            ("activation", self.x_scheme,
                                             stored_x.numel() if recorded and uses_ema else 0, self.x_scheme.k)):
            if k_stored and k_stored != k_own and not _SCHEME_CHANGE.get():
                raise CheckpointError(
                    f"{self._label()}: the stored {what} scales hold {k_stored} scale(s) per row but the layer's "
                    f"scheme {side.name} has {k_own}: the checkpoint was trained with another {what} scheme than its label "
                    "says; load it under its own scheme, or inside lsqbq.layers.scheme_change() to re-quantize")
        # Weight scales are a cache of a function of the weights; a shape from another scheme is refitted.
        if stored_w.shape != self.w_scales.shape:
            state_dict[w_key] = self.w_scales.detach().clone()
        # An activation moving average of another scheme's k (e.g. ``lsqbq evaluate --x-quant``) is dropped: the
        # layer starts untracked, so evaluation refuses to use an average it never recorded.
        if stored_x.shape != self.x_scales_ema.shape:
            state_dict[x_key] = self.x_scales_ema.detach().clone()
            state_dict[n_key] = torch.zeros_like(self.x_ema_updates)
        elif recorded and uses_ema and not self.x_scheme.is_fp:  # else checked if a scale mode switches it on
            why = self._stored_scales_problem(stored_x)
            if why is not None:
                raise CheckpointError(f"{self._label()}: the stored activation scales ({x_key}, {self.x_scheme.name}) "
                                      f"{why}; the checkpoint is damaged or was edited: restore it or retrain")
        self._w_cache_key = None
        self._ema_seen = None

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
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:  # cheap test, then say why
            check_input(self._label(), x, ("B", "C", "H", "W"), self.in_channels, "input channels", 1)
        if not isinstance(self.padding, str):
            self._check_spatial(x)
        x_q, _ = self.quantize_input(x)
        w_q, _ = self.quantized_weight()
        return self._conv_forward(x_q, w_q, self.bias)

    def _check_spatial(self, x: Tensor) -> None:
        """The padded input must hold one dilated kernel: ``H + 2 p >= d (k - 1) + 1`` per axis."""
        for n, p, d, k in zip(x.shape[2:], self.padding, self.dilation, self.kernel_size):
            if n + 2 * p < d * (k - 1) + 1:
                raise InputError(f"{self._label()}: input {tuple(x.shape[2:])} is smaller than the kernel "
                                 f"{tuple(self.kernel_size)} with padding {tuple(self.padding)} and dilation "
                                 f"{tuple(self.dilation)}")

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
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[-1] != self.in_features:
            check_input(self._label(), x, ("B", "...", "F"), self.in_features, "input features", -1)
        x_q, _ = self.quantize_input(x)
        w_q, _ = self.quantized_weight()
        return F.linear(x_q, w_q, self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._load_quant_buffers(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._quant_repr()}"


def name_layers(model: nn.Module) -> nn.Module:
    """Record every quantized layer's qualified name in ``model`` (``layer1.0.conv1``), so its errors name it."""
    for name, m in model.named_modules():
        if isinstance(m, _Quantized) and name:
            m.layer_name = name
    return model


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
