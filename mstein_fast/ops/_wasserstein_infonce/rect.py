"""The rectangular InfoNCE primitive on the CPU (C++, ``csrc/infonce_rect.h``): local rows against
one contiguous range of the global columns, as the distributed loss visits them.

Rows and columns are stacked Gaussians ``x = [mean ; sqrt(max(cov, 1e-24))]`` (``W = |x_r - x_c|^2``,
logit ``s(W) / T``). Per row the caller gives, relative to the range, the row's own column
``self_col`` and its positive's ``pos_col`` (int64, -1 when outside the range) and keeps a float64
running state across the ranges: ``run_max`` (largest logit among the candidates that are neither
the row itself nor its positive; start at -inf), ``run_others`` (sum of ``exp(logit - run_max)``
over them; start at 0) and ``pos`` (the positive's logit). After the last range the row loss is
``mstein_fast.numerics.infonce_row_loss(run_max, run_others, pos)``, and
``mstein_fast.numerics.infonce_row_stats`` derives what the backward needs.
"""

from __future__ import annotations

import torch

from mstein_fast.backends import cpp_extension, threads
from mstein_fast.library import check_buffer
from mstein_fast.numerics import SIMILARITIES


def _check_common(rows: torch.Tensor, cols: torch.Tensor, self_col: torch.Tensor, pos_col: torch.Tensor,
                  similarity: str) -> tuple[int, int, int]:
    if rows.dim() != 2 or cols.dim() != 2:
        raise ValueError(f"rows and cols must be 2-D, got shapes {tuple(rows.shape)} and {tuple(cols.shape)}")
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {tuple(SIMILARITIES)}, got {similarity!r}")
    r, k = rows.shape
    c = cols.shape[0]
    check_buffer("rows", rows, (r, k))
    check_buffer("cols", cols, (c, k))
    check_buffer("self_col", self_col, (r,), torch.int64)
    check_buffer("pos_col", pos_col, (r,), torch.int64)
    return r, c, k


def infonce_rect_fwd(rows: torch.Tensor, cols: torch.Tensor, self_col: torch.Tensor, pos_col: torch.Tensor,
                     temperature: float, similarity: str, run_max: torch.Tensor, run_others: torch.Tensor,
                     pos: torch.Tensor) -> None:
    """Fold the column range ``cols`` ``[c, K]`` into the running state of ``rows`` ``[r, K]`` (in place).

    ``rows``, ``cols``: contiguous float32 CPU tensors; ``self_col``, ``pos_col``: int64 ``[r]``,
    each -1 or a column of the range (a row's own column may not be its positive's);
    ``run_max``, ``run_others``, ``pos``: float64 ``[r]``, updated (``pos[i]`` only where
    ``pos_col[i] >= 0``). Raises ``ValueError`` on a wrong buffer or index.
    """
    r, _, _ = _check_common(rows, cols, self_col, pos_col, similarity)
    for name, t in (("run_max", run_max), ("run_others", run_others), ("pos", pos)):
        check_buffer(name, t, (r,), torch.float64)
    ext = cpp_extension()
    ext.wasserstein_infonce_rect_fwd(rows.data_ptr(), cols.data_ptr(), r, cols.shape[0], rows.shape[1],
                                     self_col.data_ptr(), pos_col.data_ptr(), float(temperature),
                                     SIMILARITIES[similarity], run_max.data_ptr(), run_others.data_ptr(),
                                     pos.data_ptr(), threads())


def infonce_rect_bwd(rows: torch.Tensor, cols: torch.Tensor, self_col: torch.Tensor, pos_col: torch.Tensor,
                     temperature: float, similarity: str, g: torch.Tensor, stats: torch.Tensor, g_rows: torch.Tensor,
                     g_cols: torch.Tensor) -> None:
    """Gradients of ``sum_i g[i] * loss_i`` through the logits of this column range.

    Adds the gradient w.r.t. ``rows`` into ``g_rows`` ``[r, K]`` and writes the gradient w.r.t.
    ``cols`` into ``g_cols`` ``[c, K]`` (all entries). ``g``: float32 ``[r]``; ``stats``: float32
    ``[3, r]``: the first three of :func:`mstein_fast.numerics.infonce_row_stats` of the final
    forward state. Other arguments as in
    :func:`infonce_rect_fwd`. Raises ``ValueError`` on a wrong buffer or index.
    """
    r, c, k = _check_common(rows, cols, self_col, pos_col, similarity)
    check_buffer("g", g, (r,))
    check_buffer("stats", stats, (3, r))
    check_buffer("g_rows", g_rows, (r, k))
    check_buffer("g_cols", g_cols, (c, k))
    ext = cpp_extension()
    ext.wasserstein_infonce_rect_bwd(rows.data_ptr(), cols.data_ptr(), r, c, k, self_col.data_ptr(),
                                     pos_col.data_ptr(), float(temperature), SIMILARITIES[similarity], g.data_ptr(),
                                     stats.data_ptr(), g_rows.data_ptr(), g_cols.data_ptr(), threads())

