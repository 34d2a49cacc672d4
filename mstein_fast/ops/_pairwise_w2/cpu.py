"""The C++ path of ``pairwise_w2`` (``csrc/pairwise_w2.h``): the ``mstein_fast::pairwise_w2_fwd`` and
``mstein_fast::pairwise_w2_bwd`` ops on contiguous float32 CPU tensors, with their fake (shape)
implementations and autograd formula."""

from __future__ import annotations

import torch

from mstein_fast import reference
from mstein_fast.backends import cpp_extension, empty_buffer, threads
from mstein_fast.library import check_buffer, check_dims, define_op, graph_backward
from mstein_fast.ops._stack import centre_rows_, cpp_stack, cpp_unstack


def _fwd(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor):
    """``mstein_fast::pairwise_w2_fwd``: ``W`` ``[B, N, M]`` of contiguous float32 ``[B, N, D]`` /
    ``[B, M, D]`` inputs, and the centred stacked rows ``x`` ``[B, N, 2D]``, ``y`` ``[B, M, 2D]``
    that the backward needs (the gradient formulas are shift invariant)."""
    ext = cpp_extension()
    check_dims("mean1", mean1, 3)
    check_dims("mean2", mean2, 3)
    b, n, d = mean1.shape
    m = mean2.shape[1]
    for name, t, rows in (("mean1", mean1, n), ("cov1", cov1, n), ("mean2", mean2, m), ("cov2", cov2, m)):
        check_buffer(name, t, (b, rows, d))
    x = cpp_stack(ext, mean1, cov1)
    y = cpp_stack(ext, mean2, cov2)
    centre_rows_(x, y)
    out = empty_buffer(x, (b, n, m))  # NaN under MSTEIN_FAST_POISON=1: every element must be written
    ext.pairwise_w2_fwd(x.data_ptr(), y.data_ptr(), out.data_ptr(), b, n, m, 2 * d, threads())
    return out, x, y


def _fwd_fake(mean1, cov1, mean2, cov2):
    b, n, d = mean1.shape
    m = mean2.shape[1]
    return mean1.new_empty((b, n, m)), mean1.new_empty((b, n, 2 * d)), mean1.new_empty((b, m, 2 * d))


def _bwd(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cov1: torch.Tensor, cov2: torch.Tensor):
    """``mstein_fast::pairwise_w2_bwd``: gradients w.r.t. ``mean1, cov1, mean2, cov2`` from the
    upstream gradient ``grad`` ``[B, N, M]`` and the ``x``, ``y`` of the forward."""
    ext = cpp_extension()
    check_dims("x", x, 3)
    check_dims("y", y, 3)
    b, n, k = x.shape
    m = y.shape[1]
    if k % 2:
        raise ValueError(f"x must hold stacked rows [mean ; sqrt(cov)] (an even last dim), got shape {tuple(x.shape)}")
    for name, t, shape in (("grad", grad, (b, n, m)), ("x", x, (b, n, k)), ("y", y, (b, m, k)),
                           ("cov1", cov1, (b, n, k // 2)), ("cov2", cov2, (b, m, k // 2))):
        check_buffer(name, t, shape)
    gx = empty_buffer(x)
    gy = empty_buffer(y)
    ext.pairwise_w2_bwd(grad.data_ptr(), x.data_ptr(), y.data_ptr(), gx.data_ptr(), gy.data_ptr(), b, n, m, k,
                        threads())
    return (*cpp_unstack(ext, gx, cov1), *cpp_unstack(ext, gy, cov2))


def _bwd_fake(grad, x, y, cov1, cov2):
    return torch.empty_like(cov1), torch.empty_like(cov1), torch.empty_like(cov2), torch.empty_like(cov2)


def _setup_context(ctx, inputs, output):
    mean1, cov1, mean2, cov2 = inputs
    _, x, y = output
    ctx.mark_non_differentiable(x, y)
    # the means only for a double backward (references to the inputs, no copies)
    ctx.save_for_backward(x, y, cov1, cov2, mean1, mean2)


def _backward(ctx, grad_out, _grad_x, _grad_y):
    x, y, cov1, cov2, mean1, mean2 = ctx.saved_tensors
    if torch.is_grad_enabled():  # a create_graph=True backward: differentiable gradients
        return graph_backward(reference.pairwise_w2, (mean1, cov1, mean2, cov2), ctx.needs_input_grad[:4], grad_out)
    return pairwise_w2_bwd(grad_out.contiguous(), x, y, cov1, cov2)


pairwise_w2_bwd = define_op(
    "pairwise_w2_bwd",
    "(Tensor grad, Tensor x, Tensor y, Tensor cov1, Tensor cov2) -> (Tensor, Tensor, Tensor, Tensor)",
    _bwd, _bwd_fake)
pairwise_w2_fwd = define_op(
    "pairwise_w2_fwd", "(Tensor mean1, Tensor cov1, Tensor mean2, Tensor cov2) -> (Tensor, Tensor, Tensor)",
    _fwd, _fwd_fake, backward=_backward, setup_context=_setup_context, double_backward=True)
