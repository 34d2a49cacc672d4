"""Triton Wasserstein InfoNCE (docs/maths.md): the 2N x 2N logit matrix is never stored.

``Z = [A; B]`` is stacked once into (centered) ``x = [mean ; sqrt(cov)]`` rows (``R = 2N`` of them, ``K = 2D``
columns) with their squared norms ``sq``; a logit tile is ``s(sq_r + sq_c - 2 x_r . x_c) / T``.

Forward: each program owns a block of rows and a range of columns (the columns are split over
several programs only when there are too few row blocks to fill the GPU) and keeps per row an
online max ``m`` and sums of exponentials over the candidates (diagonal excluded) and over the
candidates other than the positive, the positive's logit and the column of the maximum. The
partial results of the column ranges are merged by a few torch ops on ``[R]`` vectors. Saved per
row (O(N) memory): the logsumexp, ``1 - softmax(positive)`` computed as (sum over the other
candidates) / (sum over all), not by a subtraction (when the positive dominates, ``softmax - 1``
would cancel to noise; the loss is likewise ``log1p(others / positive)``, not ``lse - logit(p)``),
and the top column with its softmax ``1 / sum``. The backward recomputes logits whose rounding may
differ from the forward's; at T = 1e-6 an ulp of a logit is ~0.03, so ``exp(logit - lse)`` of a
dominant entry could come out as 0.97 instead of ~1: the saved values are used for the two
entries of a row that carry weight ~1 (its positive and its top candidate).

Backward: ``dL/dW(r, c) = P(r, c) = g_r (softmax(r, c) - [c = p(r)]) s'(W) / T``; W is symmetric,
so ``dx_r = 2 sum_c Q(r, c) (x_r - x_c)`` with ``Q = P + P^T``, i.e. ``2 (q_r x_r - (Q x)_r)``
with ``q = rowsum(Q)``. The kernels recompute the tiles and accumulate ``Q x`` and ``q``:
- ``K <= _MAX_REGISTER_K`` (e.g. D = 64): row-stationary, ``(Q x)_r`` for the program's rows in
  registers over its columns (both ``P(r, c)`` and ``P(c, r)`` from one W tile), one atomic add
  per program at the end (only when the columns are split);
- larger K (e.g. D = 3200, where a ``[rows, K]`` accumulator does not fit in registers): each
  upper-triangle tile pair computes W once and adds ``Q x_c`` to its rows and ``Q^T x_r`` to its
  columns with atomics, chunk by chunk of K.

:func:`forward` and :func:`backward` launch them (inputs validated by the caller); the
``torch.library`` ops and the autograd formula around them are in
``mstein_fast/ops/_wasserstein_infonce/triton.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    acc_dtype,
    configs,
    cross_gram,
    device_guard,
    empty,
    gaussian_grads,
    kernel_dtypes,
    multiprocessors,
    stack_centered,
)


# Largest K = 2D whose [BLOCK_M, K] gradient accumulator is kept in registers (row-stationary
# backward); beyond it the backward works on triangle tiles with atomics.
_MAX_REGISTER_K = 256


def _column_split(rows: int, k: int, device: torch.device) -> int:
    """Columns per program: all of them unless the row blocks alone would leave the GPU idle."""
    if device.type != "cuda":
        return rows
    row_blocks = triton.cdiv(rows, 128)  # the fewest row programs any config launches
    wanted = 2 * multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
    min_cols = max(128, 65536 // k)  # keep each program's share of the work (~columns x K) sizeable
    splits = min(triton.cdiv(wanted, row_blocks), triton.cdiv(rows, min_cols))
    if splits <= 1:
        return rows
    return triton.cdiv(triton.cdiv(rows, splits), 128) * 128


@triton.jit
def _logits_and_slope(dots, sq_r, sq_c, inv_temp, SIM_INV: tl.constexpr):
    """Logit tile ``s(W) / T`` and its derivative w.r.t. W, ``s'(W) / T``."""
    w = sq_r[:, None] + sq_c[None, :] - 2.0 * dots
    if SIM_INV:
        sim = 1.0 / (1.0 + w)
        logit = sim * inv_temp
        slope = -(sim * sim) * inv_temp
    else:
        logit = -w * inv_temp
        slope = tl.full(w.shape, -1.0, w.dtype) * inv_temp
    return logit, slope


@triton.jit
def _partner(rows, N_VIEW):
    """The positive of row r: its other view, r + N or r - N."""
    return tl.where(rows < N_VIEW, rows + N_VIEW, rows - N_VIEW)


def _cfg(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


# A few candidates each (every one costs a compile at the first call per K and dtype); the last
# of each list fits float64 tiles in shared memory.
_FWD_CONFIGS = configs(
    [_cfg(128, 64, 64, 8, 3), _cfg(128, 64, 128, 8, 2), _cfg(128, 128, 32, 8, 2), _cfg(64, 64, 64, 4, 3)],
    _cfg(64, 64, 64, 1, 1),
)


@triton.autotune(configs=_FWD_CONFIGS, key=["K"])
@triton.jit
def _infonce_fwd_kernel(
    x_ptr, sq_ptr, temp_ptr, part_ptr, arg_ptr, R, N_VIEW, COLS_PER_PROGRAM,
    K: tl.constexpr, SIM_INV: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, QDOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Per row and column range: running max ``m``, sum of ``exp(logit - m)`` over the candidates
    and over the candidates but the positive, and the positive's logit: ``part[0..3, split, row]``;
    the column of the maximum: ``arg[split, row]`` (-1 if the range holds no candidate).
    """
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    partner = _partner(rows, N_VIEW)
    sq_r = tl.load(sq_ptr + rows, mask=row_ok, other=0.0)
    inv_temp = tl.load(temp_ptr)

    c_lo = split * COLS_PER_PROGRAM
    c_hi = tl.minimum(c_lo + COLS_PER_PROGRAM, R)
    run_max = tl.full((BLOCK_M,), float("-inf"), ACC)
    run_sum = tl.zeros((BLOCK_M,), ACC)
    run_others = tl.zeros((BLOCK_M,), ACC)
    positive = tl.zeros((BLOCK_M,), ACC)
    run_arg = tl.full((BLOCK_M,), -1, tl.int32)
    for c0 in range(c_lo, c_hi, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < c_hi
        dots = cross_gram(x_ptr, rows, row_ok, x_ptr, cols, col_ok, K, BLOCK_K, ACC, UPCAST, PRECISION)
        sq_c = tl.load(sq_ptr + cols, mask=col_ok, other=0.0)
        logit, _ = _logits_and_slope(dots, sq_r, sq_c, inv_temp, SIM_INV)
        valid = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
        logit = tl.where(valid, logit, float("-inf"))
        is_positive = valid & (cols[None, :] == partner[:, None])
        positive += tl.sum(tl.where(is_positive, logit, 0.0), axis=1)
        tile_max = tl.max(logit, axis=1)
        run_arg = tl.where(tile_max > run_max, c0 + tl.argmax(logit, axis=1), run_arg)
        new_max = tl.maximum(run_max, tile_max)
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # no candidate yet: keep exp finite
        rescale = tl.exp(run_max - shift)
        e = tl.exp(logit - shift[:, None])
        run_sum = run_sum * rescale + tl.sum(e, axis=1)
        run_others = run_others * rescale + tl.sum(tl.where(is_positive, 0.0, e), axis=1)
        run_max = new_max

    out = part_ptr + split * R + rows
    stride = tl.num_programs(1) * R
    tl.store(out, run_max, mask=row_ok)
    tl.store(out + stride, run_sum, mask=row_ok)
    tl.store(out + 2 * stride, run_others, mask=row_ok)
    tl.store(out + 3 * stride, positive, mask=row_ok)
    tl.store(arg_ptr + split * R + rows, run_arg, mask=row_ok)


@triton.jit
def _load_row_stats(stats_ptr, arg_ptr, g_ptr, idx, ok, R):
    """Per row: logsumexp, 1 - softmax(positive), softmax(top), top column, upstream gradient."""
    lse = tl.load(stats_ptr + idx, mask=ok, other=0.0)
    miss = tl.load(stats_ptr + R + idx, mask=ok, other=0.0)
    peak = tl.load(stats_ptr + 2 * R + idx, mask=ok, other=0.0)
    top = tl.load(arg_ptr + idx, mask=ok, other=-1)
    g = tl.load(g_ptr + idx, mask=ok, other=0.0)
    return lse, miss, peak, top, g


@triton.jit
def _pair_weights(logit, slope, rows, cols, valid, lse_r, miss_r, peak_r, top_r, g_r, lse_c, miss_c, peak_c, top_c,
                  g_c, N_VIEW):
    """``Q(r, c) = P(r, c) + P(c, r)`` on a tile (zero outside ``valid``); ``P`` as in the module doc.

    At the positive, ``softmax - 1`` is ``-miss``; at the top column the softmax is ``peak``: both
    saved by the forward (see the module doc).
    """
    # softmax <= 1: the clamp only removes rounding excess (and overflow on masked-out entries)
    soft_rc = tl.exp(tl.minimum(logit - lse_r[:, None], 0.0))
    soft_cr = tl.exp(tl.minimum(logit - lse_c[None, :], 0.0))
    soft_rc = tl.where(cols[None, :] == top_r[:, None], peak_r[:, None], soft_rc)
    soft_cr = tl.where(rows[:, None] == top_c[None, :], peak_c[None, :], soft_cr)
    p_rc = g_r[:, None] * tl.where(cols[None, :] == _partner(rows, N_VIEW)[:, None], -miss_r[:, None], soft_rc)
    p_cr = g_c[None, :] * tl.where(rows[:, None] == _partner(cols, N_VIEW)[None, :], -miss_c[None, :], soft_cr)
    return tl.where(valid, (p_rc + p_cr) * slope, 0.0)


def _prune_register_configs(configs_, named_args, **kwargs):
    """Drop configs whose ``[BLOCK_M, KP]`` accumulator would not fit in registers."""
    kp = {**named_args, **kwargs}["KP"]
    kept = [c for c in configs_ if c.kwargs["BLOCK_M"] * kp <= 128 * 128]
    return kept or configs_[-1:]


def _rows_cfg(bm, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


_BWD_ROWS_CONFIGS = configs(
    [_rows_cfg(128, 64, 8, 2), _rows_cfg(64, 64, 4, 2), _rows_cfg(64, 32, 4, 2)],
    _rows_cfg(64, 64, 1, 1),
)


@triton.autotune(configs=_BWD_ROWS_CONFIGS, key=["K"], reset_to_zero=["prod_ptr", "weight_ptr"],
                 prune_configs_by={"early_config_prune": _prune_register_configs})
@triton.jit
def _infonce_bwd_rows_kernel(
    x_ptr, sq_ptr, temp_ptr, stats_ptr, arg_ptr, g_ptr, prod_ptr, weight_ptr, R, N_VIEW, COLS_PER_PROGRAM,
    K: tl.constexpr, KP: tl.constexpr, SIM_INV: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, QDOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Row-stationary backward (``K <= KP``, the whole row in registers): adds ``(Q x)_r`` and ``q_r``."""
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    ks = tl.arange(0, KP)
    k_ok = ks < K
    sq_r = tl.load(sq_ptr + rows, mask=row_ok, other=0.0)
    lse_r, miss_r, peak_r, top_r, g_r = _load_row_stats(stats_ptr, arg_ptr, g_ptr, rows, row_ok, R)
    inv_temp = tl.load(temp_ptr)
    x_r = tl.load(x_ptr + rows.to(tl.int64)[:, None] * K + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                  other=0.0)
    if UPCAST:
        x_r = x_r.to(ACC)

    c_lo = split * COLS_PER_PROGRAM
    c_hi = tl.minimum(c_lo + COLS_PER_PROGRAM, R)
    prod = tl.zeros((BLOCK_M, KP), ACC)
    weight = tl.zeros((BLOCK_M,), ACC)
    for c0 in range(c_lo, c_hi, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < c_hi
        x_c = tl.load(x_ptr + cols.to(tl.int64)[:, None] * K + ks[None, :], mask=col_ok[:, None] & k_ok[None, :],
                      other=0.0)
        if UPCAST:
            x_c = x_c.to(ACC)
        dots = tl.dot(x_r, tl.trans(x_c), input_precision=PRECISION, out_dtype=ACC)
        sq_c = tl.load(sq_ptr + cols, mask=col_ok, other=0.0)
        lse_c, miss_c, peak_c, top_c, g_c = _load_row_stats(stats_ptr, arg_ptr, g_ptr, cols, col_ok, R)
        logit, slope = _logits_and_slope(dots, sq_r, sq_c, inv_temp, SIM_INV)
        valid = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
        q = _pair_weights(logit, slope, rows, cols, valid, lse_r, miss_r, peak_r, top_r, g_r, lse_c, miss_c, peak_c,
                          top_c, g_c, N_VIEW)
        weight += tl.sum(q, axis=1)
        prod = tl.dot(q.to(QDOT), x_c.to(QDOT), prod, input_precision=PRECISION, out_dtype=ACC)

    tl.atomic_add(prod_ptr + rows.to(tl.int64)[:, None] * K + ks[None, :], prod, mask=row_ok[:, None] & k_ok[None, :])
    tl.atomic_add(weight_ptr + rows, weight, mask=row_ok)


def _tile_cfg(block, bk, warps, stages):
    return triton.Config({"BLOCK": block, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


_BWD_TILES_CONFIGS = configs(
    [_tile_cfg(128, 32, 8, 2), _tile_cfg(64, 64, 4, 2), _tile_cfg(64, 32, 4, 2)],
    _tile_cfg(64, 64, 1, 1),
)


@triton.autotune(configs=_BWD_TILES_CONFIGS, key=["K"], reset_to_zero=["prod_ptr", "weight_ptr"])
@triton.jit
def _infonce_bwd_tiles_kernel(
    x_ptr, sq_ptr, temp_ptr, stats_ptr, arg_ptr, g_ptr, prod_ptr, weight_ptr, R, N_VIEW,
    K: tl.constexpr, SIM_INV: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, QDOT: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Triangle-tile backward (any K): tile (i, j), i <= j, adds ``Q x_j`` to rows i, ``Q^T x_i`` to rows j."""
    bi = tl.program_id(0)
    bj = tl.program_id(1)
    if bi <= bj:
        rows = bi * BLOCK + tl.arange(0, BLOCK)
        cols = bj * BLOCK + tl.arange(0, BLOCK)
        row_ok = rows < R
        col_ok = cols < R
        inv_temp = tl.load(temp_ptr)
        dots = cross_gram(x_ptr, rows, row_ok, x_ptr, cols, col_ok, K, BLOCK_K, ACC, UPCAST, PRECISION)
        sq_r = tl.load(sq_ptr + rows, mask=row_ok, other=0.0)
        sq_c = tl.load(sq_ptr + cols, mask=col_ok, other=0.0)
        lse_r, miss_r, peak_r, top_r, g_r = _load_row_stats(stats_ptr, arg_ptr, g_ptr, rows, row_ok, R)
        lse_c, miss_c, peak_c, top_c, g_c = _load_row_stats(stats_ptr, arg_ptr, g_ptr, cols, col_ok, R)
        logit, slope = _logits_and_slope(dots, sq_r, sq_c, inv_temp, SIM_INV)
        valid = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
        # on a diagonal tile (i == j) this is already (P + P^T) of the block: rows only, once
        q = _pair_weights(logit, slope, rows, cols, valid, lse_r, miss_r, peak_r, top_r, g_r, lse_c, miss_c, peak_c,
                          top_c, g_c, N_VIEW)
        off_diagonal = bi != bj
        tl.atomic_add(weight_ptr + rows, tl.sum(q, axis=1), mask=row_ok)
        tl.atomic_add(weight_ptr + cols, tl.sum(q, axis=0), mask=col_ok & off_diagonal)
        q_dot = q.to(QDOT)
        r_off = rows.to(tl.int64)[:, None] * K
        c_off = cols.to(tl.int64)[:, None] * K
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            x_c = tl.load(x_ptr + c_off + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            prod_r = tl.dot(q_dot, x_c.to(QDOT), input_precision=PRECISION, out_dtype=ACC)
            tl.atomic_add(prod_ptr + r_off + ks[None, :], prod_r, mask=row_ok[:, None] & k_ok[None, :])
            if off_diagonal:
                x_r = tl.load(x_ptr + r_off + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                prod_c = tl.dot(tl.trans(q_dot), x_r.to(QDOT), input_precision=PRECISION, out_dtype=ACC)
                tl.atomic_add(prod_ptr + c_off + ks[None, :], prod_c, mask=col_ok[:, None] & k_ok[None, :])


def _merge_column_ranges(part: torch.Tensor, top_cols: torch.Tensor):
    """``[4, S, R]`` partial (max, sum, sum of the others, positive logit) and ``[S, R]`` top columns
    -> losses ``[R]``, ``stats`` ``[3, R]`` = (logsumexp, 1 - softmax(positive), softmax(top)) and
    the top column ``[R]`` for the backward."""
    run_max, run_sum, run_others, positive = part.unbind(0)
    best = run_max.argmax(0, keepdim=True)
    top_col = top_cols.gather(0, best).squeeze(0)
    top = run_max.gather(0, best).squeeze(0)  # finite: every row has a candidate (2N >= 2)
    rescale = torch.exp(run_max - top)
    total = (run_sum * rescale).sum(0)
    others = (run_others * rescale).sum(0)
    positive = positive.sum(0)
    gap = top - positive  # >= 0: how far the positive is below the best candidate
    # loss = log(1 + others / exp(positive - top)): accurate even when the loss is tiny; far below
    # the top (gap > 60, where exp(gap) could overflow) the direct lse - positive is just as good
    losses = torch.where(gap < 60, torch.log1p(others * torch.exp(gap.clamp(max=60))), gap + torch.log(total))
    return losses, torch.stack([top + torch.log(total), others / total, 1 / total]), top_col


def forward(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor, temperature: float,
            similarity: str):
    """The kernel of ``mstein_fast::wasserstein_infonce_triton_fwd``: the ``[2N]`` row losses (input dtype), and
    for the backward the centred stacked rows ``x`` ``[2N, 2D]`` (input dtype), the per-row
    statistics ``[3, 2N]`` and top columns ``[2N]`` (int32) of :func:`_merge_column_ranges`."""
    n = mean_a.shape[0]
    rows = 2 * n
    (x,) = stack_centered((torch.cat([mean_a, mean_b]), torch.cat([cov_a, cov_b])))  # [2N, 2D]
    k = x.shape[1]
    acc = acc_dtype(x.dtype)
    sq = x.to(acc).square().sum(1)
    inv_temp = torch.full((1,), 1.0 / temperature, dtype=acc, device=x.device)
    cols = _column_split(rows, k, x.device)
    splits = triton.cdiv(rows, cols)
    part = empty((4, splits, rows), acc, x.device)
    top = empty((splits, rows), torch.int32, x.device)
    with device_guard(x.device):
        grid = lambda cfg: (triton.cdiv(rows, cfg["BLOCK_M"]), splits)
        _infonce_fwd_kernel[grid](x, sq, inv_temp, part, top, rows, n, cols, K=k, SIM_INV=similarity == "inv",
                                  **kernel_dtypes(x.dtype))
    losses, stats, top = _merge_column_ranges(part, top)
    return losses.to(mean_a.dtype), x, stats, top


def backward(grad_rows: torch.Tensor, x: torch.Tensor, stats: torch.Tensor, top: torch.Tensor, cov_a: torch.Tensor,
             cov_b: torch.Tensor, temperature: float, similarity: str):
    """The kernel of ``mstein_fast::wasserstein_infonce_triton_bwd``: gradients w.r.t. ``mean_a, cov_a, mean_b,
    cov_b`` of ``sum(grad_rows * losses)`` from the forward's ``x``, ``stats`` and ``top``."""
    rows, k = x.shape
    n = rows // 2
    acc = acc_dtype(x.dtype)
    sq = x.to(acc).square().sum(1)  # as in the forward
    inv_temp = torch.full((1,), 1.0 / temperature, dtype=acc, device=x.device)
    g = grad_rows.to(acc).contiguous()
    prod = torch.zeros((rows, k), dtype=acc, device=x.device)  # atomics accumulate into these
    weight = torch.zeros(rows, dtype=acc, device=x.device)
    common = dict(K=k, SIM_INV=similarity == "inv", **kernel_dtypes(x.dtype))
    with device_guard(x.device):
        if k <= _MAX_REGISTER_K:
            cols = _column_split(rows, k, x.device)
            grid = lambda cfg: (triton.cdiv(rows, cfg["BLOCK_M"]), triton.cdiv(rows, cols))
            kp = max(16, triton.next_power_of_2(k))  # tl.dot needs an inner dimension >= 16 on GPUs
            _infonce_bwd_rows_kernel[grid](x, sq, inv_temp, stats, top, g, prod, weight, rows, n, cols,
                                           KP=kp, **common)
        else:
            grid = lambda cfg: (triton.cdiv(rows, cfg["BLOCK"]), triton.cdiv(rows, cfg["BLOCK"]))
            _infonce_bwd_tiles_kernel[grid](x, sq, inv_temp, stats, top, g, prod, weight, rows, n, **common)
    g_mean_a, g_cov_a = gaussian_grads(x[:n], prod[:n], weight[:n], cov_a)
    g_mean_b, g_cov_b = gaussian_grads(x[n:], prod[n:], weight[n:], cov_b)
    return tuple(t.contiguous() for t in (g_mean_a, g_cov_a, g_mean_b, g_cov_b))
