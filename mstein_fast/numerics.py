"""The numerical conventions every implementation of the ops follows (reference, C++, Triton,
the distributed tiles, the models): one place for the covariance floor, the stacking of a
Gaussian into a Euclidean row, the way back for gradients, and the InfoNCE row loss.

Semantics (the reference, :mod:`mstein_fast.reference`, computes exactly these in float64):

- **Floor.** A variance is used as ``max(cov, COV_FLOOR)`` (the official code's
  ``sqrt(clamp(cov, min=1e-24))``; ELU + 1 underflows to 0 in float32 for inputs below -88). W2 is
  the distance between the Gaussians with the floored variances, so a variance below the floor
  gets **no gradient** (W does not depend on it there). The official code's expansion differentiates
  its unfloored ``sum(cov)`` term instead (gradient 1 per unit of W below the floor); that gradient
  belongs to no distance, and no backend here gives it.
- **Stacking.** ``x = [mean ; sqrt(max(cov, floor))]`` turns W2 into ``|x_i - x_j|^2``. The
  kernels may shift all rows by one vector (W is translation invariant) to remove the
  cancellation of ``|x|^2 + |y|^2 - 2 x.y`` when the rows sit far from the origin; standard
  deviations for the gradients are always taken from ``cov``, never from the shifted ``x``.
- **Unstacking.** ``d mean = dx[:D]``, ``d cov = dx[D:] / (2 sqrt(cov))`` where ``cov >= floor``,
  0 below.
- **Row loss.** With ``m`` the row's largest logit, ``others = sum over candidates c != positive of
  exp(logit_c - m)`` and ``gap = m - logit_positive >= 0``, the row's loss is
  ``log(1 + others * exp(gap))`` computed as ``log1p(others * exp(gap))``: no cancellation when
  the softmax saturates on the positive (the loss is then tiny, while ``lse - logit_positive``
  would subtract two numbers of the size of the logits, ~1e6 at temperature 1e-6).

The distributed kernels (C++ and Triton, over column ranges) keep ``run_max`` as the largest of the
*other* candidates (the positive excluded) and sum relative to it; ``infonce_row_loss`` is the
same formula for any reference ``top`` (it need not be the overall maximum), and
:func:`infonce_row_stats` derives the backward's per-row statistics from that state.

Who follows what: the reference, the distributed tiles, the Triton kernels and the C++ kernel
compute the row loss in this form (the reference through ``cross_entropy`` in float64, where it
is exact enough). The C++ kernel keeps the positive out of its running sums, merges them in
double precision and stores ``1 - softmax(positive)`` for its backward, which uses it at the label
(``softmax - 1`` formed in float32 would lose the whole label term on rows whose softmax is within
6e-8 of 1; tests/test_numerics_edges.py has the case). The C++ sources
(``csrc/gaussian_stack.h``) carry the same floor constant; the edge-case tests pin its behaviour
(no gradient below it).
"""

from __future__ import annotations

import torch

COV_FLOOR = 1e-24

# The ops' option codes, defined once: the Python ops, the Triton launchers and the C++ extension
# (csrc/op_codes.h, exported as ``_C.SIMILARITY_CODES`` / ``_C.ACTIVATION_CODES``; a test checks they agree).
SIMILARITIES = {"inv": 0, "neg": 1}  # W2 -> similarity: 1 / (1 + W) (the official code), -W (the slides)
REDUCTIONS = ("mean", "sum", "none")  # of the InfoNCE's 2N row losses
ACTIVATIONS = {None: 0, "elu": 1, "elu_plus_one": 2}  # the fused dense layers' activations


def std_from_cov(cov: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(cov, COV_FLOOR))``: the standard deviations W2 uses."""
    return torch.sqrt(torch.clamp(cov, min=COV_FLOOR))


def stack(mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``[..., 2D]`` rows ``[mean ; sqrt(max(cov, COV_FLOOR))]``: W2 is their squared distance."""
    return torch.cat([mean, std_from_cov(cov)], dim=-1)


def cov_gradient(g_std: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. ``cov`` from the gradient w.r.t. its standard deviation: ``g / (2 sqrt(cov))``
    where ``cov >= COV_FLOOR``, 0 below (W does not depend on a variance under the floor)."""
    above = cov >= COV_FLOOR
    return torch.where(above, g_std / (2 * std_from_cov(cov)), torch.zeros_like(g_std))


def infonce_row_loss(top: torch.Tensor, others: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """The InfoNCE loss of rows whose largest logit is ``top``, whose positive's logit is
    ``positive`` and whose other candidates sum to ``others = sum exp(logit_c - top)``:
    ``log1p(others * exp(top - positive))``, with ``exp`` kept finite (for gaps > 60 the loss is
    ``gap + log(others + exp(-gap))``, equal to double precision)."""
    gap = top - positive
    small = gap < 60
    near = torch.log1p(others * torch.exp(torch.where(small, gap, torch.zeros_like(gap))))
    far = gap + torch.log(others + torch.exp(-gap))
    return torch.where(small, near, far)


def infonce_row_stats(run_max: torch.Tensor, others: torch.Tensor, positive: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What an InfoNCE backward needs of a row, from the statistics of its forward: ``run_max`` the
    largest logit among the candidates other than the positive (-inf if none), ``others`` the sum
    of ``exp(logit_c - run_max)`` over them, ``positive`` the positive's logit.

    Returns ``(top, log_sum, not_pos, peak)``: ``top = max(run_max, positive)``, ``log_sum`` the log
    of the softmax denominator relative to ``top`` (so ``softmax_c = exp((logit_c - top) - log_sum)``
    without rounding a large ``top + log_sum``), ``not_pos = 1 - softmax(positive)`` formed as
    others / (others + positive) (no cancellation when the softmax saturates on the positive), and
    ``peak``, the softmax at ``run_max``. A row with no other candidate gets ``not_pos = peak = 0``.
    """
    top = torch.maximum(run_max, positive)
    rest = others * torch.exp(run_max - top)  # 0 when run_max = -inf
    total = rest + torch.exp(positive - top)
    return top, torch.log(total), rest / total, torch.exp(run_max - top) / total
