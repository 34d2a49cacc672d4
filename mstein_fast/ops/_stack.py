"""The ``x = [mean ; sqrt(cov)]`` embedding that turns W2 into a squared Euclidean distance."""

from __future__ import annotations

import torch

COV_FLOOR = 1e-24  # as the official code: sqrt(clamp(cov, min=1e-24))


def stack_gaussian(mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``[..., D]`` mean and variances -> contiguous ``[..., 2D]`` float32 ``[mean, sqrt(cov)]`` (differentiable)."""
    mean = mean.float()
    std = torch.sqrt(torch.clamp(cov.float(), min=COV_FLOOR))
    return torch.cat([mean, std], dim=-1).contiguous()
