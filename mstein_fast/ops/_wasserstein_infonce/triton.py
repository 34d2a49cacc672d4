"""The Triton path of ``wasserstein_infonce``: the ``mstein_fast::wasserstein_infonce_triton_fwd`` and
``mstein_fast::wasserstein_infonce_triton_bwd`` ops (their fake implementations and autograd
formula) around the launchers of :mod:`mstein_fast.kernels.wasserstein_infonce`. Importing it
imports Triton (``ImportError`` when absent)."""

from __future__ import annotations

import torch

from mstein_fast import reference
from mstein_fast.kernels import acc_dtype
from mstein_fast.kernels import wasserstein_infonce as kernels
from mstein_fast.library import define_op, graph_backward
from mstein_fast.numerics import SIMILARITIES


def _fwd_fake(mean_a, cov_a, mean_b, cov_b, temperature, similarity):
    n, d = mean_a.shape
    return (mean_a.new_empty((2 * n,)), mean_a.new_empty((2 * n, 2 * d)),
            mean_a.new_empty((3, 2 * n), dtype=acc_dtype(mean_a.dtype)),
            mean_a.new_empty((2 * n,), dtype=torch.int32))


def _bwd_fake(grad_rows, x, stats, top, cov_a, cov_b, temperature, similarity):
    return tuple(c.new_empty(c.shape) for c in (cov_a, cov_a, cov_b, cov_b))  # contiguous, as kernels.backward's


def _setup_context(ctx, inputs, output):
    mean_a, cov_a, mean_b, cov_b, temperature, similarity = inputs
    _, x, stats, top = output
    ctx.mark_non_differentiable(x, stats, top)
    # the means: only for a double backward (references to the inputs, no copies)
    ctx.save_for_backward(x, stats, top, cov_a, cov_b, mean_a, mean_b)
    ctx.temperature, ctx.similarity = temperature, similarity


def _backward(ctx, grad_rows, _grad_x, _grad_stats, _grad_top):
    x, stats, top, cov_a, cov_b, mean_a, mean_b = ctx.saved_tensors
    if torch.is_grad_enabled():  # a create_graph=True backward: differentiable gradients
        acc = acc_dtype(mean_a.dtype)

        def rows(*views):  # the per-row losses by the PyTorch reference, in the accumulation dtype
            return reference.wasserstein_infonce(*(t.to(acc) for t in views), temperature=ctx.temperature,
                                                 similarity=ctx.similarity, reduction="none")

        grads = graph_backward(rows, (mean_a, cov_a, mean_b, cov_b), ctx.needs_input_grad[:4], grad_rows.to(acc))
        return (*grads, None, None)
    grads = wasserstein_infonce_triton_bwd(grad_rows.contiguous(), x, stats, top, cov_a, cov_b, ctx.temperature,
                                           ctx.similarity)
    return (*grads, None, None)


# registered for every device type: CUDA, and CPU tensors under TRITON_INTERPRET=1
wasserstein_infonce_triton_bwd = define_op(
    "wasserstein_infonce_triton_bwd",
    "(Tensor grad_rows, Tensor x, Tensor stats, Tensor top, Tensor cov_a, Tensor cov_b, float temperature, "
    "str similarity) -> (Tensor, Tensor, Tensor, Tensor)",
    kernels.backward, _bwd_fake, device_types=None)
wasserstein_infonce_triton_fwd = define_op(
    "wasserstein_infonce_triton_fwd",
    "(Tensor mean_a, Tensor cov_a, Tensor mean_b, Tensor cov_b, float temperature, str similarity) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    kernels.forward, _fwd_fake, backward=_backward, setup_context=_setup_context, device_types=None,
    double_backward=True)


def wasserstein_infonce_rows(
    mean_a: torch.Tensor,
    cov_a: torch.Tensor,
    mean_b: torch.Tensor,
    cov_b: torch.Tensor,
    temperature: float,
    similarity: str,
) -> torch.Tensor:
    """The 2N per-row Wasserstein InfoNCE losses (rows of A, then of B) of two ``[N, D]`` views.

    ``similarity``: ``"inv"`` (``1 / (1 + W)``) or ``"neg"`` (``-W``); ``temperature > 0``. Inputs
    are validated by the caller. Output in the input dtype (accumulated in float32, float64 for
    float64), differentiable w.r.t. all four inputs; memory O(N D), no N x N buffer.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {tuple(SIMILARITIES)}, got {similarity!r}")
    return wasserstein_infonce_triton_fwd(mean_a, cov_a, mean_b, cov_b, float(temperature), similarity)[0]
