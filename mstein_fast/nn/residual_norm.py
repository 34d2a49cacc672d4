"""``residual_layer_norm``: the end of every encoder sub-layer, ``act(LayerNorm(dropout(z) + x))``,
in one C++ pass each way for float32 CPU tensors (csrc/residual_norm.h).

Each attention and feed-forward block of the encoder ends with a dropout of its output ``z``, the
residual connection ``+ x`` and a LayerNorm (and the covariance stream's feed-forward with the
activation ``ELU + 1``). As separate PyTorch ops that is four full passes over ``[tokens, hidden]``
forward and as many backward, on tensors much larger than the caches. Here the forward reads
``z`` and ``x`` once and writes the output and the normalised rows (what the backward needs); the
backward writes the gradients of ``z`` and ``x`` and the LayerNorm's weight and bias gradients in
one sweep. The dropout mask is that of :func:`mstein_fast.nn.dropout.dropout` for the same seed,
drawn from PyTorch's generator the same way, so a training run sees the same masks as with the
separate ops, and the values agree up to the rounding of the LayerNorm's sums. The weight and
bias gradients are summed in fixed chunks of rows, then over the chunks in order: the same bits
for any thread count. Other devices and dtypes (and builds without the extension) run the
separate ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mstein_fast.backends import cpp_available, cpp_extension, empty_buffer, threads
from mstein_fast.library import check_buffer, define_op
from mstein_fast.nn import activations
from mstein_fast.nn.dropout import _threshold, dropout
from mstein_fast.numerics import ACTIVATIONS

# the kernel's activations: none or ELU + 1 (codes of mstein_fast.numerics.ACTIVATIONS)
NORM_ACTIVATIONS = {name: ACTIVATIONS[name] for name in (None, "elu_plus_one")}


def _mask_args(seed: torch.Tensor, p: float) -> tuple[int, float, int]:
    """(threshold, scale, seed) of the dropout kernel; p = 0: no dropout (threshold 0, scale 1)."""
    if p == 0.0:
        return 0, 1.0, 0
    return _threshold(p), 1.0 / (1.0 - p), int(seed.item())


def _forward(z: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, seed: torch.Tensor, p: float,
             eps: float, act: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``mstein_fast::residual_layer_norm``: ``y = act(LayerNorm(dropout(z, p; seed) + x))`` for
    contiguous float32 CPU ``z, x [rows, h]`` and LayerNorm ``weight, bias [h]``; also the normalised
    rows ``xhat [rows, h]`` and ``rstd [rows]`` (1 / std per row) that the backward needs."""
    rows, h = z.shape
    check_buffer("z", z, (rows, h))
    check_buffer("x", x, (rows, h))
    check_buffer("weight", weight, (h,))
    check_buffer("bias", bias, (h,))
    check_buffer("seed", seed, (), dtype=torch.int64)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    threshold, scale, seed_value = _mask_args(seed, p)
    y, xhat = empty_buffer(z), empty_buffer(z)
    rstd = empty_buffer(z, (rows,))
    cpp_extension().residual_norm_fwd(z.data_ptr(), x.data_ptr(), weight.data_ptr(), bias.data_ptr(), rows, h, threshold,
                                   scale, seed_value, eps, act, y.data_ptr(), xhat.data_ptr(), rstd.data_ptr(),
                                   threads())
    return y, xhat, rstd


def _forward_fake(z, x, weight, bias, seed, p, eps, act):
    return torch.empty_like(z), torch.empty_like(z), z.new_empty((z.shape[0],))


def _backward_impl(gy: torch.Tensor, y: torch.Tensor, xhat: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor,
                   seed: torch.Tensor, p: float, act: int, want_z: bool, want_x: bool, want_w: bool,
                   want_b: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``mstein_fast::residual_layer_norm_bwd``: the gradients w.r.t. ``z``, ``x``, ``weight`` and
    ``bias`` from ``gy = dL/dy`` (and ``y`` when ``act`` is not 0) and the forward's ``xhat``,
    ``rstd``; the ones not wanted come back empty (``[0]``)."""
    rows, h = xhat.shape
    check_buffer("gy", gy, (rows, h))
    if act:
        check_buffer("y", y, (rows, h))
    check_buffer("xhat", xhat, (rows, h))
    check_buffer("rstd", rstd, (rows,))
    check_buffer("weight", weight, (h,))
    threshold, scale, seed_value = _mask_args(seed, p)
    out = [empty_buffer(xhat, shape if want else (0,))
           for want, shape in ((want_z, (rows, h)), (want_x, (rows, h)), (want_w, (h,)), (want_b, (h,)))]
    cpp_extension().residual_norm_bwd(gy.data_ptr(), y.data_ptr() if act else 0, act, xhat.data_ptr(), rstd.data_ptr(),
                                   weight.data_ptr(), rows, h, threshold, scale, seed_value,
                                   *(t.data_ptr() if want else 0
                                     for t, want in zip(out, (want_z, want_x, want_w, want_b))),
                                   threads())
    return tuple(out)


def _backward_fake(gy, y, xhat, rstd, weight, seed, p, act, want_z, want_x, want_w, want_b):
    rows, h = xhat.shape
    return tuple(gy.new_empty(shape if want else (0,))
                 for want, shape in ((want_z, (rows, h)), (want_x, (rows, h)), (want_w, (h,)), (want_b, (h,))))


backward_op = define_op(
    "residual_layer_norm_bwd",
    "(Tensor gy, Tensor y, Tensor xhat, Tensor rstd, Tensor weight, Tensor seed, float p, int act, bool want_z, "
    "bool want_x, bool want_w, bool want_b) -> (Tensor, Tensor, Tensor, Tensor)",
    _backward_impl, _backward_fake)


def _setup_context(ctx, inputs, output):
    _, _, weight, _, seed, p, _, act = inputs
    y, xhat, rstd = output
    ctx.mark_non_differentiable(xhat, rstd)
    ctx.save_for_backward(y if act else None, xhat, rstd, weight, seed)  # act' is taken from the output
    ctx.p, ctx.act = p, act


def _backward(ctx, gy, _g_xhat, _g_rstd):
    y, xhat, rstd, weight, seed = ctx.saved_tensors
    want = ctx.needs_input_grad[:4]
    grads = backward_op(gy.contiguous(), xhat.new_empty(0) if y is None else y, xhat, rstd, weight, seed, ctx.p,
                        ctx.act, *want)
    return (*(g if w else None for g, w in zip(grads, want)), None, None, None, None)


forward_op = define_op(
    "residual_layer_norm",
    "(Tensor z, Tensor x, Tensor weight, Tensor bias, Tensor seed, float p, float eps, int act) "
    "-> (Tensor, Tensor, Tensor)",
    _forward, _forward_fake, backward=_backward, setup_context=_setup_context)


def _cpp_usable(*tensors: torch.Tensor) -> bool:
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and cpp_available())


def residual_layer_norm(z: torch.Tensor, x: torch.Tensor, norm: nn.LayerNorm, p: float = 0.0, training: bool = True,
                        activation: str | None = None) -> torch.Tensor:
    """``activation(norm(dropout(z, p, training) + x))`` for ``z, x [..., h]`` and a LayerNorm over
    the last dim with weight and bias (``activation``: None or ``"elu_plus_one"``, the covariance
    activation). One fused pass each way on float32 CPU tensors (see the module doc); the separate
    ops elsewhere. Same dropout masks as :func:`mstein_fast.nn.dropout.dropout` from the same
    generator state."""
    if activation not in NORM_ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(a for a in NORM_ACTIVATIONS if a)} or None, got {activation!r}")
    if z.shape != x.shape:
        raise ValueError(f"z and x must have the same shape, got {tuple(z.shape)} and {tuple(x.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    p = p if training else 0.0
    fused = (norm.weight is not None and norm.bias is not None and len(norm.normalized_shape) == 1 and z.dim() > 0
             and p < 1.0 and _cpp_usable(z, x, norm.weight, norm.bias))
    if not fused:
        y = F.layer_norm(dropout(z, p, training) + x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return y if activation is None else activations.elu_plus_one(y)
    h = z.shape[-1]
    if norm.normalized_shape[0] != h:
        raise ValueError(f"the LayerNorm normalises {norm.normalized_shape[0]} features, the inputs have {h}")
    # the seed as the dropout op draws it (the same generator stream; none without dropout)
    seed = torch.randint(0, 2**63 - 1, (), dtype=torch.int64) if p > 0.0 else torch.zeros((), dtype=torch.int64)
    y = forward_op(z.reshape(-1, h).contiguous(), x.reshape(-1, h).contiguous(), norm.weight.contiguous(),
                   norm.bias.contiguous(), seed, float(p), float(norm.eps), NORM_ACTIVATIONS[activation])[0]
    return y.reshape(z.shape)
