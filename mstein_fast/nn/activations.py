"""ELU and the covariance activation ``ELU + 1`` by the C++ extension for float32 CPU tensors.

The distributional encoder applies ELU or ``ELU + 1`` six times per position (embeddings, values,
both feed-forward blocks); where the activation follows a dense layer (the values' and the
feed-forward's) it is fused into that product (:mod:`mstein_fast.nn.linear`, the same lane
function), after the covariance feed-forward's LayerNorm into that pass
(:mod:`mstein_fast.nn.residual_norm`), and these ops serve the rest (the embeddings, item scoring). PyTorch computes ``(elu(x) + 1).clamp_min(1e-24)`` in three passes and
its backward in three more, and its ``elu_backward`` recomputes ``exp(x)`` from the saved input.
Here each is one vectorised, multi-threaded pass (csrc/activations.h), and the backward works from
the saved output: for ``x <= 0`` the derivative ``exp(x)`` equals ``elu(x) + 1``. Same values as
PyTorch's up to float rounding of ``expm1``; where the floor binds no gradient passes, as through
``clamp_min``. Other devices and dtypes (and builds without the extension) use PyTorch's ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mstein_fast.backends import cpp_available, cpp_extension, threads
from mstein_fast.library import check_buffer, define_op
from mstein_fast.numerics import COV_FLOOR


def _elu(x: torch.Tensor, plus_one: bool) -> torch.Tensor:
    """``mstein_fast::elu``: ``elu(x)``, or ``max(elu(x) + 1, 1e-24)`` with ``plus_one``
    (``x``: contiguous float32 CPU)."""
    check_buffer("x", x, tuple(x.shape))
    out = torch.empty_like(x)
    cpp_extension().elu_fwd(x.data_ptr(), out.data_ptr(), x.numel(), plus_one, threads())
    return out


def _elu_fake(x, plus_one):
    return torch.empty_like(x)


def _elu_bwd(grad: torch.Tensor, y: torch.Tensor, plus_one: bool) -> torch.Tensor:
    """``mstein_fast::elu_bwd``: the gradient w.r.t. the input of :func:`_elu` from its output ``y``."""
    check_buffer("y", y, tuple(y.shape))
    check_buffer("grad", grad, tuple(y.shape))
    out = torch.empty_like(y)
    cpp_extension().elu_bwd(grad.data_ptr(), y.data_ptr(), out.data_ptr(), y.numel(), plus_one, threads())
    return out


def _elu_bwd_fake(grad, y, plus_one):
    return torch.empty_like(y)


elu_bwd_op = define_op("elu_bwd", "(Tensor grad, Tensor y, bool plus_one) -> Tensor", _elu_bwd, _elu_bwd_fake)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.plus_one = inputs[1]


def _backward(ctx, grad):
    (y,) = ctx.saved_tensors
    return elu_bwd_op(grad.contiguous(), y, ctx.plus_one), None


elu_op = define_op("elu", "(Tensor x, bool plus_one) -> Tensor", _elu, _elu_fake, backward=_backward,
                   setup_context=_setup_context)


def _cpp_usable(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and cpp_available()


def elu(x: torch.Tensor) -> torch.Tensor:
    """``torch.nn.functional.elu(x)`` (alpha 1), by the C++ kernel for float32 CPU tensors."""
    if not _cpp_usable(x):
        return F.elu(x)
    return elu_op(x.contiguous(), False)


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """``ELU(x) + 1`` floored at 1e-24: the activation that makes covariances positive (no
    gradient where the floor binds). The C++ kernel for float32 CPU tensors, PyTorch otherwise."""
    if not _cpp_usable(x):
        return (F.elu(x) + 1.0).clamp_min(COV_FLOOR)
    return elu_op(x.contiguous(), True)
