"""The Triton path of ``pairwise_w2``: the ``mstein_fast::pairwise_w2_triton_fwd`` and
``mstein_fast::pairwise_w2_triton_bwd`` ops (their fake implementations and autograd formula)
around the launchers of :mod:`mstein_fast.kernels.pairwise_w2`. Importing it imports Triton
(``ImportError`` when absent)."""

from __future__ import annotations

import math

import torch

from mstein_fast import reference
from mstein_fast.kernels import acc_dtype
from mstein_fast.kernels import pairwise_w2 as kernels
from mstein_fast.library import define_op, graph_backward


def _fwd_fake(mean1, cov1, mean2, cov2):
    batch, (n, d), m = mean1.shape[:-2], mean1.shape[-2:], mean2.shape[-2]
    b = math.prod(batch)
    return mean1.new_empty((*batch, n, m)), mean1.new_empty((b, n, 2 * d)), mean1.new_empty((b, m, 2 * d))


def _bwd_fake(grad, x, y, cov1, cov2, need1=True, need2=True):
    # contiguous, as kernels.backward's
    return tuple(c.new_empty(c.shape if need else (0,)) for c, need in ((cov1, need1), (cov1, need1), (cov2, need2),
                                                                         (cov2, need2)))


def _setup_context(ctx, inputs, output):
    mean1, cov1, mean2, cov2 = inputs
    _, x, y = output
    ctx.mark_non_differentiable(x, y)
    ctx.save_for_backward(x, y, cov1, cov2, mean1, mean2)  # the means: only for a double backward (no copies)


def _reference_w2(mean1, cov1, mean2, cov2):
    """W by the PyTorch reference in the accumulation dtype (the double backward's formula)."""
    acc = acc_dtype(mean1.dtype)
    return reference.pairwise_w2(*(t.to(acc) for t in (mean1, cov1, mean2, cov2)))


def _backward(ctx, grad, _grad_x, _grad_y):
    x, y, cov1, cov2, mean1, mean2 = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if torch.is_grad_enabled():  # a create_graph=True backward: differentiable gradients
        return graph_backward(_reference_w2, (mean1, cov1, mean2, cov2), needs[:4], grad.to(acc_dtype(grad.dtype)))
    need1, need2 = bool(needs[0] or needs[1]), bool(needs[2] or needs[3])
    grads = pairwise_w2_triton_bwd(grad.contiguous(), x, y, cov1, cov2, need1, need2)
    return tuple(g if need else None for g, need in zip(grads, needs))


# registered for every device type: CUDA, and CPU tensors under TRITON_INTERPRET=1
pairwise_w2_triton_bwd = define_op(
    "pairwise_w2_triton_bwd",
    "(Tensor grad, Tensor x, Tensor y, Tensor cov1, Tensor cov2, bool need1=True, bool need2=True) -> "
    "(Tensor, Tensor, Tensor, Tensor)",
    kernels.backward, _bwd_fake, device_types=None)
pairwise_w2_triton_fwd = define_op(
    "pairwise_w2_triton_fwd", "(Tensor mean1, Tensor cov1, Tensor mean2, Tensor cov2) -> (Tensor, Tensor, Tensor)",
    kernels.forward, _fwd_fake, backward=_backward, setup_context=_setup_context, device_types=None,
    double_backward=True)


def pairwise_w2(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """Squared W2 ``[..., N, M]`` between ``[..., N, D]`` and ``[..., M, D]`` diagonal Gaussians.

    Inputs are validated by the caller (one dtype and device, finite, ``cov > 0``). Output in the
    input dtype, accumulated in float32 (float64 for float64); differentiable w.r.t. all four.
    """
    return pairwise_w2_triton_fwd(mean1, cov1, mean2, cov2)[0]
