"""The models' training losses as plain functions of distances or logits: the distributional
models' BPR-on-W2 with the pvn regulariser, SASRec's BCE, CoSeRec's dot-product InfoNCE (the
Wasserstein InfoNCE is the op :func:`mstein_fast.wasserstein_infonce`). ``original=True`` gives the
original code's numerically weaker form of a term (``--compat original``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(values * weights) / max(sum(weights), 1)`` (0 when every weight is 0)."""
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def bpr_pvn_sums(d_pos: torch.Tensor, d_neg: torch.Tensor, d_pos_neg: torch.Tensor, weight: torch.Tensor,
                 original: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over the positions of ``weight`` (1 at a real target, 0 at padding) of the BPR term
    ``-log sigmoid(W(seq, neg) - W(seq, pos))`` and the pvn term ``max(0, W(seq, pos) - W(pos, neg))``,
    and ``sum(weight)``: the caller divides once over all its pieces (length buckets).

    ``original``: ``-log(sigmoid(x + 1e-24))`` as the original code writes it, which is inf once the
    sigmoid underflows to 0 (``W(seq, pos) - W(seq, neg) > ~88``); otherwise a stable log-sigmoid."""
    if original:
        bpr = -torch.log(torch.sigmoid(d_neg - d_pos + 1e-24))
    else:
        bpr = -F.logsigmoid(d_neg - d_pos)
    return (bpr * weight).sum(), (F.relu(d_pos - d_pos_neg) * weight).sum(), weight.sum()


def bce(pos_logit: torch.Tensor, neg_logit: torch.Tensor, weight: torch.Tensor, original: bool = False) -> torch.Tensor:
    """SASRec's ``-log sigmoid(pos) - log sigmoid(-neg)`` averaged over the positions of ``weight``
    (``original``: ``-log(sigmoid + 1e-24)`` as the original code writes it)."""
    if original:
        terms = -torch.log(torch.sigmoid(pos_logit) + 1e-24) - torch.log(1 - torch.sigmoid(neg_logit) + 1e-24)
    else:
        terms = -F.logsigmoid(pos_logit) - F.logsigmoid(-neg_logit)
    return weighted_mean(terms, weight)


def dot_infonce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """CoSeRec's InfoNCE on dot products between two views ``[N, D]`` (the official ``NCELoss``):
    row ``r`` of ``[a; b]`` against its other view, every other row a candidate."""
    n = a.shape[0]
    sim11 = a @ a.T / temperature
    sim22 = b @ b.T / temperature
    sim12 = a @ b.T / temperature
    eye = torch.eye(n, dtype=torch.bool, device=a.device)
    sim11 = sim11.masked_fill(eye, float("-inf"))
    sim22 = sim22.masked_fill(eye, float("-inf"))
    logits = torch.cat([torch.cat([sim12, sim11], 1), torch.cat([sim22, sim12.T], 1)], 0)
    return F.cross_entropy(logits, torch.arange(2 * n, device=a.device))
