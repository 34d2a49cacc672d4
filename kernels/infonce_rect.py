"""Triton rectangular InfoNCE primitive: local rows against one contiguous range of the global
columns, as the distributed loss visits them (the GPU twin of ``csrc/infonce_rect.h``).

Rows ``[r, K]`` and columns ``[c, K]`` are stacked Gaussians ``x = [mean ; sqrt(cov)]``, so
``W = |row|^2 + |col|^2 - 2 row . col`` and the logit is ``s(W) / T``. Per row the caller names,
relative to the range, the row's own column ``self_col`` (masked) and its positive's ``pos_col``
(-1 when outside the range), and keeps a float64 running state across the ranges:

* ``run_max``: the largest logit among the *other* candidates (neither the row nor its positive);
* ``run_others``: the sum of ``exp(logit - run_max)`` over them;
* ``pos``: the positive's logit (written by the range that holds it);
* ``top_col``: the global column (``col0`` + index in the range) of ``run_max``.

After the last range the row loss is ``log1p(run_others * exp(run_max - pos))``
(:func:`mstein_fast.numerics.infonce_row_loss`): the positive stays out of the sums, so nothing
cancels when the softmax saturates on it.

Forward: each program owns a block of rows and a share of the range's columns (the columns are
split over programs only when the row blocks alone would leave the GPU idle) and keeps the online
(max, sum) per row in the accumulation dtype; the shares are folded into the float64 state by a
few torch ops on ``[r]`` vectors.

Backward: ``P = dloss/dW`` on a tile is ``g_r s'(W) / T softmax`` with
``softmax = exp((logit - top) - log_sum)``; at the positive it is ``-g_r s'(W) / T (1 - softmax(pos))``
and at the top column the softmax is the saved ``peak``, both from the forward's state (a
recomputed logit may round differently from the forward's, which at T = 1e-6, where an ulp of a
logit is ~0.06, would move a softmax weight near 1 by several per cent). Each tile program forms P
once and adds ``P cols`` and ``rowsum(P)`` to its rows, ``P^T rows`` and ``colsum(P)`` to its
columns, with atomics, K in chunks (any K); then ``d rows = 2 (rowsum(P) rows - P cols)`` and
``d cols = 2 (colsum(P) cols - P^T rows)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mstein_fast.numerics import SIMILARITIES

from ._common import acc_dtype, configs, cross_gram, device_guard, empty, kernel_dtypes, multiprocessors
from .wasserstein_infonce import _logits_and_slope


def _columns_per_program(r: int, c: int, k: int, device: torch.device) -> int:
    """Columns of the range per forward program: all of them unless the row blocks alone would
    leave the GPU idle (then a multiple of 128, so that every config's column tiles align)."""
    if device.type != "cuda" or c == 0:
        return max(c, 1)
    row_blocks = triton.cdiv(max(r, 1), 128)  # the fewest row programs any config launches
    wanted = 2 * multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
    min_cols = max(128, 65536 // max(k, 1))  # keep each program's share (~columns x K) sizeable
    splits = min(triton.cdiv(wanted, row_blocks), triton.cdiv(c, min_cols))
    if splits <= 1:
        return c
    return triton.cdiv(triton.cdiv(c, splits), 128) * 128


def _cfg(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


_FWD_CONFIGS = configs(
    [_cfg(128, 64, 64, 8, 3), _cfg(128, 64, 128, 8, 2), _cfg(128, 128, 32, 8, 2), _cfg(64, 64, 64, 4, 3)],
    _cfg(64, 64, 64, 1, 1),
)


@triton.autotune(configs=_FWD_CONFIGS, key=["K"])
@triton.jit
def _rect_fwd_kernel(
    rows_ptr, cols_ptr, sq_r_ptr, sq_c_ptr, self_ptr, pos_col_ptr, temp_ptr, part_ptr, arg_ptr, R, C,
    COLS_PER_PROGRAM,
    K: tl.constexpr, SIM_INV: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, QDOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Per row and share of the columns: max and sum of ``exp(logit - max)`` over the other
    candidates and the positive's logit (0 if not in the share): ``part[0..2, split, row]``;
    the column of the max: ``arg[split, row]`` (-1 if the share holds no other candidate)."""
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    self_c = tl.load(self_ptr + rows, mask=row_ok, other=-1)
    pos_c = tl.load(pos_col_ptr + rows, mask=row_ok, other=-1)
    sq_r = tl.load(sq_r_ptr + rows, mask=row_ok, other=0.0)
    inv_temp = tl.load(temp_ptr)

    c_lo = split * COLS_PER_PROGRAM
    c_hi = tl.minimum(c_lo + COLS_PER_PROGRAM, C)
    run_max = tl.full((BLOCK_M,), float("-inf"), ACC)
    run_others = tl.zeros((BLOCK_M,), ACC)
    positive = tl.zeros((BLOCK_M,), ACC)
    run_arg = tl.full((BLOCK_M,), -1, tl.int32)
    for c0 in range(c_lo, c_hi, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < c_hi
        dots = cross_gram(rows_ptr, rows, row_ok, cols_ptr, cols, col_ok, K, BLOCK_K, ACC, UPCAST, PRECISION)
        sq_c = tl.load(sq_c_ptr + cols, mask=col_ok, other=0.0)
        logit, _ = _logits_and_slope(dots, sq_r, sq_c, inv_temp, SIM_INV)
        valid = row_ok[:, None] & col_ok[None, :] & (cols[None, :] != self_c[:, None])
        is_pos = valid & (cols[None, :] == pos_c[:, None])
        positive += tl.sum(tl.where(is_pos, logit, 0.0), axis=1)
        logit = tl.where(valid & ~is_pos, logit, float("-inf"))
        tile_max = tl.max(logit, axis=1)
        run_arg = tl.where(tile_max > run_max, c0 + tl.argmax(logit, axis=1), run_arg)
        new_max = tl.maximum(run_max, tile_max)
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # no candidate yet: keep exp finite
        run_others = run_others * tl.exp(run_max - shift) + tl.sum(tl.exp(logit - shift[:, None]), axis=1)
        run_max = new_max

    out = part_ptr + split * R + rows
    stride = tl.num_programs(1) * R
    tl.store(out, run_max, mask=row_ok)
    tl.store(out + stride, run_others, mask=row_ok)
    tl.store(out + 2 * stride, positive, mask=row_ok)
    tl.store(arg_ptr + split * R + rows, run_arg, mask=row_ok)


def _tile_cfg(block, bk, warps, stages):
    return triton.Config({"BLOCK": block, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


_BWD_CONFIGS = configs(
    [_tile_cfg(128, 32, 8, 2), _tile_cfg(64, 64, 4, 2), _tile_cfg(64, 32, 4, 2)],
    _tile_cfg(64, 64, 1, 1),
)


@triton.autotune(configs=_BWD_CONFIGS, key=["K"],
                 reset_to_zero=["prod_r_ptr", "weight_r_ptr", "prod_c_ptr", "weight_c_ptr"])
@triton.jit
def _rect_bwd_kernel(
    rows_ptr, cols_ptr, sq_r_ptr, sq_c_ptr, self_ptr, pos_col_ptr, temp_ptr, stats_ptr, top_ptr, g_ptr,
    prod_r_ptr, weight_r_ptr, prod_c_ptr, weight_c_ptr, R, C, COL0,
    K: tl.constexpr, SIM_INV: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, QDOT: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Tile (i, j): P on rows block i x columns block j; adds ``P cols_j`` and ``rowsum(P)`` to
    rows i, ``P^T rows_i`` and ``colsum(P)`` to columns j."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < R
    col_ok = cols < C
    inv_temp = tl.load(temp_ptr)
    dots = cross_gram(rows_ptr, rows, row_ok, cols_ptr, cols, col_ok, K, BLOCK_K, ACC, UPCAST, PRECISION)
    sq_r = tl.load(sq_r_ptr + rows, mask=row_ok, other=0.0)
    sq_c = tl.load(sq_c_ptr + cols, mask=col_ok, other=0.0)
    logit, slope = _logits_and_slope(dots, sq_r, sq_c, inv_temp, SIM_INV)

    top = tl.load(stats_ptr + rows, mask=row_ok, other=0.0)
    log_sum = tl.load(stats_ptr + R + rows, mask=row_ok, other=0.0)
    not_pos = tl.load(stats_ptr + 2 * R + rows, mask=row_ok, other=0.0)
    peak = tl.load(stats_ptr + 3 * R + rows, mask=row_ok, other=0.0)
    top_c = tl.load(top_ptr + rows, mask=row_ok, other=-1) - COL0  # relative to this range
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0)
    self_c = tl.load(self_ptr + rows, mask=row_ok, other=-1)
    pos_c = tl.load(pos_col_ptr + rows, mask=row_ok, other=-1)

    # softmax <= 1: the clamp only removes rounding excess (and overflow where the row meets itself)
    soft = tl.exp(tl.minimum((logit - top[:, None]) - log_sum[:, None], 0.0))
    soft = tl.where(cols[None, :] == top_c[:, None], peak[:, None], soft)
    # softmax - 1 at the positive, as -(1 - softmax) without cancellation
    soft = tl.where(cols[None, :] == pos_c[:, None], -not_pos[:, None], soft)
    valid = row_ok[:, None] & col_ok[None, :] & (cols[None, :] != self_c[:, None])
    p = tl.where(valid, g[:, None] * soft * slope, 0.0)

    tl.atomic_add(weight_r_ptr + rows, tl.sum(p, axis=1), mask=row_ok)
    tl.atomic_add(weight_c_ptr + cols, tl.sum(p, axis=0), mask=col_ok)
    p_dot = p.to(QDOT)
    r_off = rows.to(tl.int64)[:, None] * K
    c_off = cols.to(tl.int64)[:, None] * K
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        y = tl.load(cols_ptr + c_off + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        x = tl.load(rows_ptr + r_off + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        prod_r = tl.dot(p_dot, y.to(QDOT), input_precision=PRECISION, out_dtype=ACC)
        tl.atomic_add(prod_r_ptr + r_off + ks[None, :], prod_r, mask=row_ok[:, None] & k_ok[None, :])
        prod_c = tl.dot(tl.trans(p_dot), x.to(QDOT), input_precision=PRECISION, out_dtype=ACC)
        tl.atomic_add(prod_c_ptr + c_off + ks[None, :], prod_c, mask=col_ok[:, None] & k_ok[None, :])


def _check(name: str, t: torch.Tensor, shape, dtype: torch.dtype, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype != dtype or t.device != device or not t.is_contiguous() or tuple(t.shape) != tuple(shape):
        raise ValueError(
            f"{name}: needs a contiguous {dtype} tensor of shape {tuple(shape)} on {device}, got {t.dtype} on "
            f"{t.device}, shape {tuple(t.shape)}{'' if t.is_contiguous() else ', not contiguous'}")


def _check_common(rows, cols, self_col, pos_col, temperature, similarity, validate):
    if not isinstance(rows, torch.Tensor) or not isinstance(cols, torch.Tensor) or rows.dim() != 2 or cols.dim() != 2:
        raise ValueError("rows and cols must be 2-D tensors")
    if rows.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"rows must be float32 or float64, got {rows.dtype}")
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {tuple(SIMILARITIES)}, got {similarity!r}")
    if not (float(temperature) > 0 and float(temperature) < float("inf")):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    r, k = rows.shape
    c = cols.shape[0]
    _check("rows", rows, (r, k), rows.dtype, rows.device)
    _check("cols", cols, (c, k), rows.dtype, rows.device)
    _check("self_col", self_col, (r,), torch.int64, rows.device)
    _check("pos_col", pos_col, (r,), torch.int64, rows.device)
    if validate and r:
        for name, idx in (("self_col", self_col), ("pos_col", pos_col)):
            bad = (idx < -1) | (idx >= c)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise ValueError(f"{name}[{i}] = {int(idx[i])} is neither -1 nor a column of the range [0, {c})")
        same = (self_col >= 0) & (self_col == pos_col)
        if bool(same.any()):
            i = int(same.nonzero()[0, 0])
            raise ValueError(f"self_col[{i}] == pos_col[{i}] = {int(self_col[i])}: a row cannot be its own positive")
    return r, c, k


def _norms_and_temperature(rows, cols, temperature):
    acc = acc_dtype(rows.dtype)
    sq_r = rows.to(acc).square().sum(1)
    sq_c = cols.to(acc).square().sum(1)
    inv_temp = torch.full((1,), 1.0 / float(temperature), dtype=acc, device=rows.device)
    return sq_r, sq_c, inv_temp


def rect_fwd(rows: torch.Tensor, cols: torch.Tensor, self_col: torch.Tensor, pos_col: torch.Tensor,
             temperature: float, similarity: str, run_max: torch.Tensor, run_others: torch.Tensor, pos: torch.Tensor,
             top_col: torch.Tensor, col0: int = 0, validate: bool = True) -> None:
    """Fold the column range ``cols`` ``[c, K]`` into the running state of ``rows`` ``[r, K]`` (in place).

    ``rows``, ``cols``: contiguous float32 or float64 tensors on one device (CUDA, or the CPU
    under ``TRITON_INTERPRET=1``); ``self_col``, ``pos_col``: int64 ``[r]``, -1 or a column of the
    range; ``run_max`` (start -inf), ``run_others`` (start 0), ``pos``: float64 ``[r]``; ``top_col``:
    int64 ``[r]``, the global column of ``run_max``, where ``col0`` is the global index of
    ``cols[0]``. ``validate``: check the index values (a host sync; the kernels never address
    memory through them, so a wrong index only gives a wrong loss). Raises ``ValueError`` on a
    wrong buffer or index.
    """
    r, c, k = _check_common(rows, cols, self_col, pos_col, temperature, similarity, validate)
    for name, t, dtype in (("run_max", run_max, torch.float64), ("run_others", run_others, torch.float64),
                           ("pos", pos, torch.float64), ("top_col", top_col, torch.int64)):
        _check(name, t, (r,), dtype, rows.device)
    if r == 0 or c == 0:
        return
    sq_r, sq_c, inv_temp = _norms_and_temperature(rows, cols, temperature)
    per_program = _columns_per_program(r, c, k, rows.device)
    splits = triton.cdiv(c, per_program)
    acc = acc_dtype(rows.dtype)
    part = empty((3, splits, r), acc, rows.device)
    arg = empty((splits, r), torch.int32, rows.device)
    with device_guard(rows.device):
        grid = lambda cfg: (triton.cdiv(r, cfg["BLOCK_M"]), splits)
        _rect_fwd_kernel[grid](rows, cols, sq_r, sq_c, self_col, pos_col, inv_temp, part, arg, r, c, per_program,
                               K=k, SIM_INV=similarity == "inv", **kernel_dtypes(rows.dtype))
    # fold the shares into the state, in float64
    part_max, part_others, part_pos = part.double().unbind(0)
    best_max, best = part_max.max(0)
    new_max = torch.maximum(run_max, best_max)
    shift = torch.where(new_max == float("-inf"), torch.zeros_like(new_max), new_max)
    run_others.mul_(torch.exp(run_max - shift)).add_((part_others * torch.exp(part_max - shift)).sum(0))
    best_arg = arg.gather(0, best.unsqueeze(0)).squeeze(0).to(torch.int64) + col0
    top_col.copy_(torch.where(best_max > run_max, best_arg, top_col))
    run_max.copy_(new_max)
    pos.copy_(torch.where(pos_col >= 0, part_pos.sum(0), pos))


def rect_bwd(rows: torch.Tensor, cols: torch.Tensor, self_col: torch.Tensor, pos_col: torch.Tensor,
             temperature: float, similarity: str, g: torch.Tensor, stats: torch.Tensor, top_col: torch.Tensor,
             g_rows: torch.Tensor, g_cols: torch.Tensor, col0: int = 0, validate: bool = True) -> None:
    """Gradients of ``sum_i g[i] * loss_i`` through the logits of this column range.

    Adds the gradient w.r.t. ``rows`` into ``g_rows`` ``[r, K]`` and writes the gradient w.r.t.
    ``cols`` into ``g_cols`` ``[c, K]`` (both in the dtype of ``rows``). ``g``: ``[r]`` and
    ``stats``: ``[4, r]`` (top logit, log-sum relative to it, 1 - softmax(positive), softmax at
    ``top_col``: :func:`mstein_fast.numerics.infonce_row_stats`) in the accumulation dtype
    (float64 for float64 rows, else float32); ``top_col`` and ``col0`` as in :func:`rect_fwd`.
    """
    r, c, k = _check_common(rows, cols, self_col, pos_col, temperature, similarity, validate)
    acc = acc_dtype(rows.dtype)
    _check("g", g, (r,), acc, rows.device)
    _check("stats", stats, (4, r), acc, rows.device)
    _check("top_col", top_col, (r,), torch.int64, rows.device)
    _check("g_rows", g_rows, (r, k), rows.dtype, rows.device)
    _check("g_cols", g_cols, (c, k), rows.dtype, rows.device)
    if c == 0:
        return
    if r == 0:
        g_cols.zero_()
        return
    sq_r, sq_c, inv_temp = _norms_and_temperature(rows, cols, temperature)
    prod_r = torch.zeros((r, k), dtype=acc, device=rows.device)  # atomics accumulate into these
    weight_r = torch.zeros(r, dtype=acc, device=rows.device)
    prod_c = torch.zeros((c, k), dtype=acc, device=rows.device)
    weight_c = torch.zeros(c, dtype=acc, device=rows.device)
    with device_guard(rows.device):
        grid = lambda cfg: (triton.cdiv(r, cfg["BLOCK"]), triton.cdiv(c, cfg["BLOCK"]))
        _rect_bwd_kernel[grid](rows, cols, sq_r, sq_c, self_col, pos_col, inv_temp, stats, top_col, g, prod_r,
                               weight_r, prod_c, weight_c, r, c, col0, K=k, SIM_INV=similarity == "inv",
                               **kernel_dtypes(rows.dtype))
    g_rows += (2 * (weight_r.unsqueeze(1) * rows.to(acc) - prod_r)).to(g_rows.dtype)
    g_cols.copy_(2 * (weight_c.unsqueeze(1) * cols.to(acc) - prod_c))
