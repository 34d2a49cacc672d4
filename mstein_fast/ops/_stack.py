"""The ``x = [mean ; sqrt(cov)]`` embedding that turns W2 into a squared Euclidean distance."""

from __future__ import annotations

import torch

COV_FLOOR = 1e-24  # as the official code: sqrt(clamp(cov, min=1e-24))


def stack_gaussian(mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``[..., D]`` mean and variances -> contiguous ``[..., 2D]`` float32 ``[mean, sqrt(cov)]`` (differentiable)."""
    mean = mean.float()
    std = torch.sqrt(torch.clamp(cov.float(), min=COV_FLOOR))
    return torch.cat([mean, std], dim=-1).contiguous()


def threads() -> int:
    """Threads the C++ kernels use: the same as PyTorch's intra-op pool."""
    return torch.get_num_threads()


def cpp_stack(ext, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """The C++ version of :func:`stack_gaussian` for contiguous float32 ``[rows, D]`` inputs (one pass)."""
    d = mean.shape[-1]
    x = torch.empty(mean.shape[:-1] + (2 * d,), dtype=torch.float32)
    ext.stack_gaussian(mean.data_ptr(), cov.data_ptr(), mean.numel() // d, d, x.data_ptr(), threads())
    return x


def cpp_unstack(ext, gx: torch.Tensor, x: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. mean and cov from the gradient ``gx`` w.r.t. ``x = cpp_stack(mean, cov)``."""
    d = cov.shape[-1]
    g_mean = torch.empty_like(cov)
    g_cov = torch.empty_like(cov)
    ext.unstack_gradient(gx.data_ptr(), x.data_ptr(), cov.data_ptr(), cov.numel() // d, d, g_mean.data_ptr(),
                         g_cov.data_ptr(), threads())
    return g_mean, g_cov
