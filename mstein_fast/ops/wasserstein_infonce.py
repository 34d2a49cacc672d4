"""``wasserstein_infonce``: the MStein contrastive loss, fused (no 2N x 2N matrix for large N)."""

from __future__ import annotations

import os

import torch

from mstein_fast import reference
from mstein_fast._checks import check_choice, check_gaussians, check_temperature
from mstein_fast.backends import cpp_extension, resolve_backend, triton_kernels
from mstein_fast.ops._stack import centre_rows_, cpp_stack, threads
from mstein_fast.ops.pairwise_w2 import pairwise_w2

SIMILARITIES = {"inv": 0, "neg": 1}
REDUCTIONS = ("mean", "sum", "none")

# Below this size the forward keeps the 2N x 2N distance matrix for the backward (saving a
# recomputation: fewer GEMM flops); above it only the per-row logsumexp is kept (O(N) memory).
_KEEP_LIMIT_BYTES = int(float(os.environ.get("MSTEIN_FAST_KEEP_MATRIX_MB", "64")) * 2**20)


class _WassersteinInfoNCECpp(torch.autograd.Function):
    """Per-row InfoNCE losses ``[2N]`` by the fused C++ kernels (contiguous float32 ``[N, D]`` views)."""

    @staticmethod
    def forward(ctx, mean_a, cov_a, mean_b, cov_b, temperature: float, similarity: str):
        ext = cpp_extension()
        n, d = mean_a.shape
        x = torch.empty((2 * n, 2 * d), dtype=torch.float32)
        x[:n] = cpp_stack(ext, mean_a, cov_a)
        x[n:] = cpp_stack(ext, mean_b, cov_b)
        centre_rows_(x.unsqueeze(0))
        kind = SIMILARITIES[similarity]
        losses = torch.empty(2 * n, dtype=torch.float32)
        lse = torch.empty((2, 2 * n), dtype=torch.float32)  # per row: max logit, log of the sum
        # keep W for the backward only if there will be one and the matrix is small
        keep = any(ctx.needs_input_grad[:4]) and (2 * n) ** 2 * 4 <= _KEEP_LIMIT_BYTES
        w = torch.empty((2 * n, 2 * n), dtype=torch.float32) if keep else None
        ext.infonce_forward(x.data_ptr(), n, 2 * d, temperature, kind, losses.data_ptr(), lse.data_ptr(),
                            w.data_ptr() if keep else 0, threads())
        ctx.save_for_backward(x, lse, cov_a, cov_b, *([w] if keep else []))
        ctx.temperature, ctx.kind, ctx.keep = temperature, kind, keep
        return losses

    @staticmethod
    def backward(ctx, grad_rows):
        ext = cpp_extension()
        x, lse, cov_a, cov_b, *rest = ctx.saved_tensors
        w = rest[0] if ctx.keep else None
        rows2, k = x.shape
        n = rows2 // 2
        grad_rows = grad_rows.float().contiguous()
        grads = [torch.empty_like(cov_a) for _ in range(4)]  # d mean_a, d cov_a, d mean_b, d cov_b
        ext.infonce_backward(x.data_ptr(), n, k, ctx.temperature, ctx.kind, grad_rows.data_ptr(), lse.data_ptr(),
                             w.data_ptr() if w is not None else 0, cov_a.data_ptr(), cov_b.data_ptr(),
                             *(g.data_ptr() for g in grads), threads())
        g_mean_a, g_cov_a, g_mean_b, g_cov_b = grads
        return g_mean_a, g_cov_a, g_mean_b, g_cov_b, None, None


def _reduce(rows: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return rows.mean()
    if reduction == "sum":
        return rows.sum()
    return rows


def wasserstein_infonce(
    mean_a: torch.Tensor,
    cov_a: torch.Tensor,
    mean_b: torch.Tensor,
    cov_b: torch.Tensor,
    *,
    temperature: float = 1.0,
    similarity: str = "inv",
    reduction: str = "mean",
    backend: str = "auto",
    group=None,
) -> torch.Tensor:
    """Wasserstein InfoNCE between two views of N diagonal Gaussians (SPEC section 2).

    With ``Z = [A; B]`` (2N rows), row ``r``'s positive is its other view and its candidates
    are all other 2N - 1 rows; ``logit(r, c) = s(W(r, c)) / temperature`` with
    ``s(W) = 1 / (1 + W)`` (``"inv"``, the official code) or ``s(W) = -W`` (``"neg"``).

    Args:
        mean_a, cov_a, mean_b, cov_b: ``[N, D]`` means and variances (``cov > 0``) of each view.
        temperature: positive float; 1e-6 with ``"inv"`` (the official setting) is supported.
        similarity: ``"inv"`` or ``"neg"``.
        reduction: ``"mean"`` or ``"sum"`` over the 2N rows, or ``"none"`` for the ``[2N]`` losses.
        backend: ``"auto"``, ``"cpp"``, ``"triton"`` or ``"torch"`` (the reference).
        group: ``None`` (single process), or a ``torch.distributed`` process group (e.g.
            ``torch.distributed.group.WORLD``): the inputs are this rank's rows and the loss is
            that of the global batch, see :func:`mstein_fast.distributed.wasserstein_infonce`.

    Returns:
        The loss in the input dtype, differentiable w.r.t. all four inputs.
    """
    if group is not None:
        from mstein_fast import distributed

        return distributed.wasserstein_infonce(mean_a, cov_a, mean_b, cov_b, temperature=temperature,
                                               similarity=similarity, reduction=reduction, backend=backend,
                                               group=group)
    check_gaussians([("mean_a", mean_a, "cov_a", cov_a), ("mean_b", mean_b, "cov_b", cov_b)], same_rows=True)
    if mean_a.dim() != 2:
        raise ValueError(f"mean_a must be [N, D], got shape {tuple(mean_a.shape)}")
    temperature = check_temperature(temperature, mean_a.dtype)
    check_choice("similarity", similarity, SIMILARITIES)
    check_choice("reduction", reduction, REDUCTIONS)
    name = resolve_backend(backend, mean_a.device)
    if name == "torch" or (name == "cpp" and mean_a.dtype == torch.float64):
        return reference.wasserstein_infonce(
            mean_a, cov_a, mean_b, cov_b, temperature=temperature, similarity=similarity, reduction=reduction
        )
    if name == "triton":
        rows = triton_kernels().wasserstein_infonce_rows(mean_a, cov_a, mean_b, cov_b, temperature, similarity)
    else:
        views = [t.float().contiguous() for t in (mean_a, cov_a, mean_b, cov_b)]
        rows = _WassersteinInfoNCECpp.apply(*views, temperature, similarity)
    return _reduce(rows, reduction).to(mean_a.dtype)


def wasserstein_alignment_uniformity(
    mean_a: torch.Tensor,
    cov_a: torch.Tensor,
    mean_b: torch.Tensor,
    cov_b: torch.Tensor,
    *,
    temperature: float = 1.0,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The alignment and uniformity terms of the Wasserstein InfoNCE (slides' decomposition).

    ``alignment = mean_i W(a_i, b_i)`` (``||mu_a - mu_b||^2 + ||cov_a^1/2 - cov_b^1/2||^2`` of the
    positive pairs) and ``uniformity = mean_i logsumexp_j(-W(a_i, b_j) / temperature)``, so that
    ``alignment / temperature + uniformity`` equals the A -> B InfoNCE with ``s(W) = -W``. (The
    slides write the uniformity without the minus sign; with it the term rewards spreading the
    Gaussians apart, which is what a uniformity term is for.) Both are differentiable scalars.
    The N x N distance matrix is formed (through :func:`pairwise_w2`); inputs are ``[N, D]``.
    """
    check_gaussians([("mean_a", mean_a, "cov_a", cov_a), ("mean_b", mean_b, "cov_b", cov_b)], same_rows=True)
    if mean_a.dim() != 2:
        raise ValueError(f"mean_a must be [N, D], got shape {tuple(mean_a.shape)}")
    temperature = check_temperature(temperature, mean_a.dtype)
    w = pairwise_w2(mean_a, cov_a, mean_b, cov_b, backend=backend)
    alignment = torch.diagonal(w, dim1=-2, dim2=-1).mean()
    uniformity = torch.logsumexp(-w / temperature, dim=-1).mean()
    return alignment, uniformity
