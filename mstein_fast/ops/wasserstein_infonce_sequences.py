"""``wasserstein_infonce_sequences``: the MStein contrastive loss on flattened sequence outputs,
with the work on shared leading positions skipped.

MStein contrasts whole sequences: each view row is ``[L, H]`` per-position Gaussians flattened to
``D = L * H``. When the leading positions of a row hold exactly the values that every other row
holds there too (left padding computed once per position and shared, the opt-in
``shared_padding`` of the trainer), those coordinates add nothing to ``W(r, c)`` for a pair that
shares them. This op finds, per row, how many trailing positions differ from a reference row
(exact comparison, no assumption about the caller), groups rows by that width, and computes the
Gram products of ``x = [mean ; sqrt(cov)]`` only over the coordinates where both rows of a block
can be non-zero. The result equals :func:`mstein_fast.wasserstein_infonce` on the flattened
inputs (to float32 rounding); when the rows share too little to pay off it simply calls it.

Layout: ``mean``/``cov`` ``[2N, L, H]``, rows ``0..N-1`` view A and ``N..2N-1`` view B (the
positive of row ``r`` is ``r +- N``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mstein_fast import reference
from mstein_fast._checks import check_choice
from mstein_fast.numerics import stack
from mstein_fast.ops._stack import empty_buffer
from mstein_fast.ops._wasserstein_infonce import REDUCTIONS, SIMILARITIES, _keep_limit_bytes, wasserstein_infonce

MAX_GROUPS = 12  # row groups of distinct width (more groups: less wasted work, more small products)
# the sparse path runs when its Gram flops are below this fraction of the fused kernel's (1.5
# Gram-sized products); otherwise the fused kernel is faster
_SPARSE_WORTH = 0.6


def _row_widths(y: torch.Tensor) -> torch.Tensor:
    """Per row of ``y`` ``[R, L, C]``: the number of trailing positions from its first non-zero one on."""
    nonzero = (y != 0).any(-1)  # [R, L]
    L = y.shape[1]
    none = torch.full_like(nonzero[:, 0], L, dtype=torch.long)
    first = torch.where(nonzero.any(1), nonzero.to(torch.int8).argmax(1), none)
    return L - first


def _groups(widths: torch.Tensor, max_groups: int = MAX_GROUPS) -> list[tuple[torch.Tensor, int]]:
    """Rows grouped by width, widest group first: ``[(rows, width), ...]`` (every row once; a
    group's width is the largest of its rows). Adjacent distinct widths are merged, cheapest extra
    work first (``rows of the narrower group x width difference``), until at most ``max_groups`` remain."""
    sorted_w, order = torch.sort(widths, descending=True, stable=True)
    values, counts = torch.unique_consecutive(sorted_w, return_counts=True)
    groups = [[int(w), int(c)] for w, c in zip(values.tolist(), counts.tolist())]
    while len(groups) > max_groups:
        i = min(range(len(groups) - 1), key=lambda j: groups[j + 1][1] * (groups[j][0] - groups[j + 1][0]))
        groups[i][1] += groups[i + 1][1]
        del groups[i + 1]
    out, start = [], 0
    for w, c in groups:
        out.append((order[start:start + c], w))
        start += c
    return out


def _sparse_flops(groups, per_position: int, rows: int, positions: int) -> tuple[float, float]:
    """(multiply-adds of the sparse forward + backward, of the fused kernel: 1.5 Gram products of
    the full width) for ``groups`` of rows whose width is counted in positions."""
    sizes = [(len(r), w * per_position) for r, w in groups]
    fwd = sum(n_i * n_j * k_j for i, (n_i, _) in enumerate(sizes) for n_j, k_j in sizes[i:])
    bwd = rows * sum(n * k for n, k in sizes)
    return float(fwd + bwd), 1.5 * rows * rows * positions * per_position


class _GroupedSquaredDistances(torch.autograd.Function):
    """``W = ||y_r - y_c||^2`` for all rows of ``y`` ``[R, K]``, in the row order of the groups
    (``order = cat(rows of each group)``), where the rows of a group of width ``k`` are zero outside
    their last ``k`` columns. Blocks ``I <= J`` (``k_I >= k_J``) multiply only the last ``k_J`` columns."""

    @staticmethod
    def forward(ctx, y, groups):
        R, K = y.shape
        norms = (y * y).sum(1)
        parts = [y[:, K - k:].index_select(0, rows) if k else None for rows, k in groups]
        bounds = [0]
        for rows, _ in groups:
            bounds.append(bounds[-1] + len(rows))
        order = torch.cat([rows for rows, _ in groups])
        norms_sorted = norms[order]
        w = empty_buffer(y, (R, R))
        for i, ((rows_i, k_i), y_i) in enumerate(zip(groups, parts)):
            ri = slice(bounds[i], bounds[i + 1])
            for j in range(i, len(groups)):
                rj = slice(bounds[j], bounds[j + 1])
                k_j = groups[j][1]
                block = norms_sorted[ri, None] + norms_sorted[None, rj]
                if k_j:
                    block = torch.addmm(block, y_i[:, k_i - k_j:], parts[j].T, beta=1.0, alpha=-2.0)
                w[ri, rj] = block
                if j != i:
                    w[rj, ri] = block.T
        ctx.save_for_backward(y, order)
        ctx.groups, ctx.bounds = groups, bounds
        return w

    @staticmethod
    def backward(ctx, grad_w):
        # dL/dy_r = 2 sum_c Q(r, c) (y_r - y_c) with Q = G + G^T (W is symmetric in its two rows)
        y, order = ctx.saved_tensors
        groups, bounds = ctx.groups, ctx.bounds
        R, K = y.shape
        q = grad_w + grad_w.T
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(R, device=order.device)
        grad = y * (2.0 * q.sum(1))[inverse, None]
        # (Q Y) column band by column band: band b (between the widths of groups b and b + 1) is
        # non-zero only in the rows of groups 0..b, a prefix of the sorted rows
        widths = [k for _, k in groups] + [0]
        bands = []
        if widths[0] < K:
            bands.append(y.new_zeros((R, K - widths[0])))
        for b in range(len(groups)):
            lo, hi = K - widths[b], K - widths[b + 1]
            if hi > lo:
                prefix = order[:bounds[b + 1]]
                bands.append(q[:, :bounds[b + 1]] @ y[:, lo:hi].index_select(0, prefix))
        grad.index_add_(0, order, torch.cat(bands, 1), alpha=-2.0)
        return grad, None


def wasserstein_infonce_sequences(
    mean: torch.Tensor,
    cov: torch.Tensor,
    *,
    temperature: float,
    similarity: str = "inv",
    reduction: str = "mean",
    backend: str = "auto",
    anchor: int = 0,
) -> torch.Tensor:
    """Wasserstein InfoNCE between the two views stacked in ``mean``/``cov`` ``[2N, L, H]``,
    each row flattened to ``L * H`` (the MStein contrastive loss), skipping shared leading positions.

    Same value and gradients as ``wasserstein_infonce(mean[:N].flatten(1), cov[:N].flatten(1),
    mean[N:].flatten(1), cov[N:].flatten(1), ...)``; faster when many rows hold exactly the same
    values in their leading positions (see the module docstring). Internal entry of the trainer:
    the arguments are not validated beyond what the chosen path does.

    ``anchor`` names a row whose leading positions hold the shared values (the row with the
    fewest items, say): the work skipped is that on the positions each row shares with it. Any
    row gives the same result; a poor choice only skips less (down to the fused kernel).
    """
    check_choice("similarity", similarity, SIMILARITIES)
    check_choice("reduction", reduction, REDUCTIONS)
    rows, L, H = mean.shape
    n = rows // 2

    def fused():
        flat_mean, flat_cov = mean.reshape(rows, L * H), cov.reshape(rows, L * H)
        return wasserstein_infonce(flat_mean[:n], flat_cov[:n], flat_mean[n:], flat_cov[n:], temperature=temperature,
                                   similarity=similarity, reduction=reduction, backend=backend)

    # the sparse path holds a few 2N x 2N matrices: only where the fused kernel would keep one too
    if rows % 2 or n == 0 or mean.dtype != torch.float32 or rows * rows * 4 > _keep_limit_bytes():
        return fused()
    x = stack(mean, cov)  # [2N, L, 2H]
    with torch.no_grad():
        # shift every row by the anchor row (W is translation invariant): the leading positions a
        # row shares with the anchor become exact zeros
        groups = _groups(_row_widths(x - x[anchor]))
        sparse, dense = _sparse_flops(groups, 2 * H, rows, L)
    if sparse > _SPARSE_WORTH * dense:
        return fused()
    y = (x - x[anchor].detach()).reshape(rows, -1)
    w = _GroupedSquaredDistances.apply(y, [(r.to(y.device), w * 2 * H) for r, w in groups])
    order = torch.cat([r for r, _ in groups]).to(y.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(rows, device=order.device)
    positive = inverse[(order + n) % rows]  # in the sorted order, the row of each row's other view
    logits = reference.similarity_from_w2(w, similarity) / temperature
    logits = logits.masked_fill(torch.eye(rows, dtype=torch.bool, device=y.device), float("-inf"))
    losses = F.cross_entropy(logits, positive, reduction="none")
    if reduction == "none":
        return losses[inverse]
    return losses.mean() if reduction == "mean" else losses.sum()
