"""``linear``: the dense layer ``y = x W^T + b`` and its gradients by the C++ extension for float32
CPU tensors.

The encoder's dense layers multiply tall, thin matrices (``[tokens, 64]`` by ``[64, 256]`` and back,
about 40% of an MStein training epoch). On CPUs where the BLAS library runs these shapes far below
the vector units' peak (MKL on AMD Zen 5 here: 106-160 GFLOP/s of about 480), the register-blocked
micro-kernel of the fused InfoNCE does them 1.4-1.9x faster (csrc/linear.h; benchmarks/RESULTS.md).
Same products in float32, summed in another order; the weight gradient's sum over tokens is split
into one contiguous range per thread, added in thread order, so it is deterministic for a fixed
thread count. Other devices and dtypes (and builds without the extension) use ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mstein_fast.backends import _load
from mstein_fast.ops._library import check_buffer, define_op
from mstein_fast.ops._stack import threads


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``mstein_fast::linear``: ``x [t, k] w^T + b`` (contiguous float32 CPU; ``w [n, k]``, ``b [n]`` or None)."""
    t, k = x.shape
    n = w.shape[0]
    check_buffer("x", x, (t, k))
    check_buffer("w", w, (n, k))
    if b is not None:
        check_buffer("b", b, (n,))
    y = torch.empty((t, n), dtype=torch.float32)
    _load("cpp").linear_fwd(x.data_ptr(), w.data_ptr(), 0 if b is None else b.data_ptr(), y.data_ptr(), t, k, n,
                            threads())
    return y


def _linear_fake(x, w, b):
    return x.new_empty((x.shape[0], w.shape[0]))


def _grad_input(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``mstein_fast::linear_grad_input``: ``g [t, n] w`` (``w [n, k]``)."""
    t, n = g.shape
    k = w.shape[1]
    check_buffer("g", g, (t, n))
    check_buffer("w", w, (n, k))
    gx = torch.empty((t, k), dtype=torch.float32)
    _load("cpp").linear_bwd_input(g.data_ptr(), w.data_ptr(), gx.data_ptr(), t, k, n, threads())
    return gx


def _grad_input_fake(g, w):
    return g.new_empty((g.shape[0], w.shape[1]))


def _grad_weight(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``mstein_fast::linear_grad_weight``: ``g [t, n]^T x [t, k]``."""
    t, n = g.shape
    k = x.shape[1]
    check_buffer("g", g, (t, n))
    check_buffer("x", x, (t, k))
    gw = torch.empty((n, k), dtype=torch.float32)
    _load("cpp").linear_bwd_weight(g.data_ptr(), x.data_ptr(), gw.data_ptr(), t, k, n, threads())
    return gw


def _grad_weight_fake(g, x):
    return g.new_empty((g.shape[1], x.shape[1]))


grad_input_op = define_op("linear_grad_input", "(Tensor g, Tensor w) -> Tensor", _grad_input, _grad_input_fake)
grad_weight_op = define_op("linear_grad_weight", "(Tensor g, Tensor x) -> Tensor", _grad_weight, _grad_weight_fake)


def _setup_context(ctx, inputs, output):
    x, w, b = inputs
    ctx.save_for_backward(x, w)
    ctx.has_bias = b is not None


def _backward(ctx, grad):
    x, w = ctx.saved_tensors
    grad = grad.contiguous()
    gx = grad_input_op(grad, w) if ctx.needs_input_grad[0] else None
    gw = grad_weight_op(grad, x) if ctx.needs_input_grad[1] else None
    gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return gx, gw, gb


linear_op = define_op("linear", "(Tensor x, Tensor w, Tensor? b) -> Tensor", _linear, _linear_fake,
                      backward=_backward, setup_context=_setup_context)


def _cpp_usable(*tensors: torch.Tensor | None) -> bool:
    return (all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors)
            and not isinstance(_load("cpp"), ImportError))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.nn.functional.linear(x, weight, bias)`` (``x [..., k]``, ``weight [n, k]``, ``bias [n]``),
    by the C++ kernels for float32 CPU tensors, ``F.linear`` otherwise."""
    if not _cpp_usable(x, weight, bias) or x.dim() == 0 or weight.dim() != 2:
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    y = linear_op(x.reshape(-1, x.shape[-1]).contiguous(), weight.contiguous(),
                  None if bias is None else bias.contiguous())
    return y.reshape(*lead, weight.shape[0])
