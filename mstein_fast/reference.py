"""Plain-PyTorch reference implementations (the oracle for every kernel).

Written for clarity, not speed: they materialise the full N x M distance matrix and, for the
InfoNCE loss, the full 2N x 2N logit matrix exactly as the official MStein code does
(``WassersteinNCELoss``: sim11, sim22 and sim12 with ``-inf`` diagonals, concatenated, then
cross-entropy with labels ``arange(2N)``). The fused kernels must agree with these functions.

Conventions (docs/maths.md): ``cov`` holds variances of diagonal Gaussians, ``W`` is the
*squared* 2-Wasserstein distance ``||mu_i - mu_j||^2 + ||sqrt(cov_i) - sqrt(cov_j)||^2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mstein_fast.numerics import COV_FLOOR, std_from_cov

__all__ = [
    "pairwise_w2",
    "similarity_from_w2",
    "wasserstein_alignment_uniformity",
    "wasserstein_infonce",
]



def pairwise_w2(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """Squared W2 between every pair of diagonal Gaussians, by the official expansion.

    ``mean1``/``cov1``: ``[..., N, D]``; ``mean2``/``cov2``: ``[..., M, D]``; returns ``[..., N, M]``.
    ``|mu1|^2 + |mu2|^2 - 2 mu1.mu2 + sum(cov1) + sum(cov2) - 2 sqrt(cov1).sqrt(cov2)`` with every
    variance floored at 1e-24 (:mod:`mstein_fast.numerics`; the original floors only the square
    roots, so a variance below the floor got the gradient of its ``sum(cov)`` term, which belongs to
    no distance: here it gets none, as in the kernels); not clamped at zero
    (cancellation may leave tiny negative values, as in the original code).
    """
    mean_sq1 = (mean1 * mean1).sum(-1, keepdim=True)
    mean_sq2 = (mean2 * mean2).sum(-1, keepdim=True)
    w_mean = mean_sq1 + mean_sq2.transpose(-1, -2) - 2 * torch.matmul(mean1, mean2.transpose(-1, -2))
    std1, std2 = std_from_cov(cov1), std_from_cov(cov2)
    cov_sum1 = torch.clamp(cov1, min=COV_FLOOR).sum(-1, keepdim=True)
    cov_sum2 = torch.clamp(cov2, min=COV_FLOOR).sum(-1, keepdim=True)
    w_cov = cov_sum1 + cov_sum2.transpose(-1, -2) - 2 * torch.matmul(std1, std2.transpose(-1, -2))
    return w_mean + w_cov


def similarity_from_w2(w: torch.Tensor, similarity: str) -> torch.Tensor:
    """Map a W2 distance to a similarity: ``"inv"`` -> ``1 / (1 + W)``, ``"neg"`` -> ``-W``."""
    if similarity == "inv":
        return 1.0 / (1.0 + w)
    if similarity == "neg":
        return -w
    raise ValueError(f"similarity must be 'inv' or 'neg', got {similarity!r}")


def wasserstein_infonce(
    mean_a: torch.Tensor,
    cov_a: torch.Tensor,
    mean_b: torch.Tensor,
    cov_b: torch.Tensor,
    *,
    temperature: float = 1.0,
    similarity: str = "inv",
    reduction: str = "mean",
) -> torch.Tensor:
    """Wasserstein InfoNCE over two views ``[N, D]``, in the official 2N x 2N formulation.

    Row ``r`` of ``Z = [A; B]`` has its other view as the positive and every other row as a
    candidate. ``reduction="none"`` returns the 2N per-row losses, rows of A first.
    """
    n = mean_a.shape[0]
    sim11 = similarity_from_w2(pairwise_w2(mean_a, cov_a, mean_a, cov_a), similarity) / temperature
    sim22 = similarity_from_w2(pairwise_w2(mean_b, cov_b, mean_b, cov_b), similarity) / temperature
    sim12 = similarity_from_w2(pairwise_w2(mean_a, cov_a, mean_b, cov_b), similarity) / temperature
    eye = torch.eye(n, dtype=torch.bool, device=mean_a.device)
    sim11 = sim11.masked_fill(eye, float("-inf"))
    sim22 = sim22.masked_fill(eye, float("-inf"))
    logits = torch.cat(
        [torch.cat([sim12, sim11], dim=-1), torch.cat([sim22, sim12.transpose(-1, -2)], dim=-1)], dim=-2
    )
    labels = torch.arange(2 * n, device=mean_a.device)
    return F.cross_entropy(logits, labels, reduction=reduction)


def wasserstein_alignment_uniformity(
    mean_a: torch.Tensor,
    cov_a: torch.Tensor,
    mean_b: torch.Tensor,
    cov_b: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alignment and uniformity terms of the Wasserstein InfoNCE (A -> B direction, ``"neg"`` map).

    ``alignment = mean_i W(a_i, b_i)`` and ``uniformity = mean_i logsumexp_j(-W(a_i, b_j) / T)``,
    so that ``alignment / T + uniformity`` is the cross-view InfoNCE with ``s(W) = -W``.
    """
    w = pairwise_w2(mean_a, cov_a, mean_b, cov_b)
    alignment = torch.diagonal(w).mean()
    uniformity = torch.logsumexp(-w / temperature, dim=-1).mean()
    return alignment, uniformity
