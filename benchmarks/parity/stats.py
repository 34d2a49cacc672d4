"""Two-sample statistics of the distribution checks (``dropout``, ``views``): a z-test of means, and
for a gradient's draws the shift of its mean and the ratio of its spread."""

from __future__ import annotations

import math

import numpy as np
import torch


def z_score(a: np.ndarray, b: np.ndarray) -> float:
    """``|mean(a) - mean(b)|`` over its standard error (two independent samples of draws); 0 when
    both are constant and equal, inf when constant and different."""
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    diff = abs(float(a.mean()) - float(b.mean()))
    return diff / se if se > 0 else (0.0 if diff == 0 else math.inf)


def mean_shift(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|mean(a) - mean(b)|^2 / (sum(var(a) + var(b)) / n)`` over the draws (dim 0, n each): about 1
    when both sides draw from one distribution (the squared distance of the two means against what
    the draws' spread alone gives), much larger for a systematic difference; 0 when both sides
    are constant and equal, inf when constant and different."""
    n = a.shape[0]
    diff = float(((a.mean(0) - b.mean(0)) ** 2).sum())
    noise = float((a.var(0) + b.var(0)).sum()) / n
    if noise == 0:
        return 0.0 if diff == 0 else math.inf
    return diff / noise


def spread_ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    """``sum(var(b)) / sum(var(a))`` over the draws (dim 0): the spread of ``b``'s draws against
    ``a``'s, about 1 when both sides draw from one distribution (a check of the noise, where
    :func:`mean_shift` checks the means); 1 when both are constant, inf when only ``a`` is."""
    va, vb = float(a.var(0).sum()), float(b.var(0).sum())
    if va == 0:
        return 1.0 if vb == 0 else math.inf
    return vb / va

