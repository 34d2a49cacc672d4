"""The ``x = [mean ; sqrt(cov)]`` embedding that turns W2 into a squared Euclidean distance
(built and undone by the C++ extension, csrc/gaussian_stack.h, with the official
sqrt(clamp(cov, min=1e-24)))."""

from __future__ import annotations

import torch

from mstein_fast.backends import threads


def cpp_stack(ext, mean: torch.Tensor, cov: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``[mean, sqrt(max(cov, 1e-24))]`` of contiguous float32 ``[rows, D]`` inputs, in one C++ pass,
    into ``out`` (contiguous ``[..., 2D]``, e.g. a row range of a larger matrix) or a new tensor."""
    d = mean.shape[-1]
    shape = mean.shape[:-1] + (2 * d,)
    if out is None:
        out = torch.empty(shape, dtype=torch.float32)
    elif out.shape != shape or not out.is_contiguous() or out.dtype != torch.float32:
        raise ValueError(f"out must be a contiguous float32 tensor of shape {tuple(shape)}, got {out.dtype} "
                         f"{tuple(out.shape)}")
    ext.stack_gaussian(mean.data_ptr(), cov.data_ptr(), mean.numel() // d, d, out.data_ptr(), threads())
    return out


def cpp_unstack(ext, gx: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. mean and cov from the gradient ``gx`` w.r.t. ``x = cpp_stack(mean, cov)`` (or a shift of it)."""
    d = cov.shape[-1]
    g_mean = torch.empty_like(cov)
    g_cov = torch.empty_like(cov)
    ext.unstack_gradient(gx.data_ptr(), cov.data_ptr(), cov.numel() // d, d, g_mean.data_ptr(),
                         g_cov.data_ptr(), threads())
    return g_mean, g_cov


def centre_rows_(*mats: torch.Tensor) -> None:
    """Shift the rows of ``mats`` (``[B, rows_i, K]`` each, float32) in place by their common mean
    row, per batch, when that mean dominates the spread of the rows.

    W is translation invariant, so this changes no result mathematically; in float32 it removes the
    cancellation in ``|x|^2 + |y|^2 - 2 x.y`` when the Gaussians sit far from the origin compared
    with their distances. Where they do not, the shift would only add rounding, so it is skipped.
    """
    rows = sum(m.shape[1] for m in mats)
    shift = sum(m.sum(1, keepdim=True) for m in mats) / rows
    mean_sq = sum(torch.linalg.vector_norm(m, dim=(1, 2)) ** 2 for m in mats) / rows  # mean |x|^2 per batch
    shift_sq = shift.square().sum((1, 2))
    dominant = shift_sq > mean_sq - shift_sq
    if not bool(dominant.any()):
        return
    shift = shift * dominant.to(shift.dtype).view(-1, 1, 1)
    for m in mats:
        m -= shift
