"""Dropout for float32 CPU tensors by the C++ extension (csrc/dropout.h).

PyTorch's CPU dropout draws every mask element from a Mersenne Twister in a serial loop (about as
slow as 15 elementwise multiplications on this project's machine), and the MStein encoder applies
dropout six times per position. Here the mask is a counter-based hash of ``(seed, index)``: one
vectorised, multi-threaded pass, nothing stored for the backward (the mask is regenerated), the
same result for any thread count. The seed is drawn from PyTorch's default generator, so
``torch.manual_seed`` makes runs reproducible as with ``torch.nn.Dropout``. Each element is
dropped with probability ``p`` rounded to a multiple of 2^-32; kept elements are scaled by
``1 / (1 - p)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mstein_fast.backends import cpp_available, cpp_extension, empty_buffer, threads
from mstein_fast.library import check_buffer, define_op
from mstein_fast.nn import activations
from mstein_fast.numerics import ACTIVATIONS


def _threshold(p: float) -> int:
    return min(round(p * 2**32), 2**32 - 1)


def _dropout(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """``mstein_fast::dropout``: ``x`` (contiguous float32) with each element dropped with
    probability ``p`` by the mask of the int64 scalar ``seed``, kept ones scaled by ``1 / (1 - p)``."""
    check_buffer("seed", seed, (), dtype=torch.int64)
    check_buffer("x", x, tuple(x.shape))
    out = torch.empty_like(x)
    cpp_extension().dropout(x.data_ptr(), out.data_ptr(), x.numel(), _threshold(p), 1.0 / (1.0 - p), int(seed.item()),
                         threads())
    return out


def _dropout_fake(x, seed, p):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    _, seed, p = inputs
    ctx.save_for_backward(seed)
    ctx.p = p


def _backward(ctx, grad):
    # linear in x: the gradient is dropped by the same mask (regenerated from the seed, nothing stored)
    (seed,) = ctx.saved_tensors
    return dropout_op(grad.contiguous(), seed, ctx.p), None, None


dropout_op = define_op("dropout", "(Tensor x, Tensor seed, float p) -> Tensor", _dropout, _dropout_fake,
                       backward=_backward, setup_context=_setup_context)


def _cpp_usable(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and cpp_available()


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True) -> torch.Tensor:
    """``torch.nn.functional.dropout``, by the C++ kernel for float32 CPU tensors (see the module doc).

    Other devices and dtypes (and builds without the extension) use PyTorch's dropout."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0 or not _cpp_usable(x):
        return F.dropout(x, p, training)
    # the seed stays a tensor: drawn inside a compiled graph, it costs no host sync there
    seed = torch.randint(0, 2**63 - 1, (), dtype=torch.int64)
    return dropout_op(x.contiguous(), seed, float(p))


class Dropout(nn.Dropout):
    """``torch.nn.Dropout`` that runs :func:`dropout` (fast on float32 CPU tensors)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


# -- gathered rows, dropped out and activated in one pass (csrc/position_dropout.h) --------------


def _position_dropout(table: torch.Tensor, pos: torch.Tensor, seed: torch.Tensor, p: float, act: int) -> torch.Tensor:
    """``mstein_fast::position_dropout``: ``act(dropout(table[pos]))`` for a contiguous float32
    ``table [P, H]`` and int64 ``pos [T]`` in ``[0, P)`` (``p == 0``: no dropout, ``seed`` unused)."""
    rows, h = table.shape
    check_buffer("table", table, (rows, h))
    check_buffer("pos", pos, (pos.shape[0],), dtype=torch.int64)
    check_buffer("seed", seed, (), dtype=torch.int64)
    y = empty_buffer(table, (pos.shape[0], h))
    cpp_extension().position_dropout_fwd(table.data_ptr(), pos.data_ptr(), pos.shape[0], h, rows,
                                      _threshold(p) if p > 0 else 0, 1.0 / (1.0 - p), int(seed.item()), act,
                                      y.data_ptr(), threads())
    return y


def _position_dropout_fake(table, pos, seed, p, act):
    return table.new_empty((pos.shape[0], table.shape[1]))


def _position_dropout_bwd(g: torch.Tensor, y: torch.Tensor, pos: torch.Tensor, seed: torch.Tensor, p: float,
                          act: int, rows: int) -> torch.Tensor:
    """``mstein_fast::position_dropout_bwd``: the gradient ``[rows, H]`` w.r.t. the table of
    :func:`_position_dropout` from ``g = dL/dy`` and its output ``y``."""
    tokens, h = y.shape
    check_buffer("g", g, (tokens, h))
    check_buffer("y", y, (tokens, h))
    check_buffer("pos", pos, (tokens,), dtype=torch.int64)
    check_buffer("seed", seed, (), dtype=torch.int64)
    gtable = empty_buffer(y, (rows, h))
    cpp_extension().position_dropout_bwd(g.data_ptr(), y.data_ptr(), pos.data_ptr(), tokens, h, rows,
                                      _threshold(p) if p > 0 else 0, 1.0 / (1.0 - p), int(seed.item()), act,
                                      gtable.data_ptr(), threads())
    return gtable


def _position_dropout_bwd_fake(g, y, pos, seed, p, act, rows):
    return y.new_empty((rows, y.shape[1]))


def _position_setup_context(ctx, inputs, output):
    table, pos, seed, p, act = inputs
    ctx.save_for_backward(output, pos, seed)
    ctx.p, ctx.act, ctx.rows = p, act, table.shape[0]


def _position_backward(ctx, grad):
    y, pos, seed = ctx.saved_tensors
    return position_dropout_bwd_op(grad.contiguous(), y, pos, seed, ctx.p, ctx.act, ctx.rows), None, None, None, None


position_dropout_bwd_op = define_op(
    "position_dropout_bwd", "(Tensor g, Tensor y, Tensor pos, Tensor seed, float p, int act, int rows) -> Tensor",
    _position_dropout_bwd, _position_dropout_bwd_fake)
position_dropout_op = define_op(
    "position_dropout", "(Tensor table, Tensor pos, Tensor seed, float p, int act) -> Tensor",
    _position_dropout, _position_dropout_fake, backward=_position_backward, setup_context=_position_setup_context)


def position_dropout_usable(table: torch.Tensor) -> bool:
    """Whether :func:`position_dropout` runs its C++ pass for ``table`` (float32 on the CPU, with the
    extension built); elsewhere it is the separate gather, dropout and activation."""
    return _cpp_usable(table)


def position_dropout(table: torch.Tensor, pos: torch.Tensor, p: float = 0.5, training: bool = True,
                     activation: str | None = None) -> torch.Tensor:
    """``activation(dropout(table[pos], p, training))`` for a table ``[P, H]`` and int64 positions
    ``[T]`` -> ``[T, H]`` (activation None, ``"elu"`` or ``"elu_plus_one"``, as
    :mod:`mstein_fast.nn.activations`).

    On float32 CPU tensors one C++ pass each way: the rows are never gathered into a tensor of
    their own, and the backward sums the gradient per table row directly. The dropout masks (and
    the seed drawn for them) are those of :func:`dropout` on the gathered ``[T, H]`` tensor, so the
    result equals the separate gather, dropout and activation bit for bit. Elsewhere (other
    devices, dtypes, ``p == 1``) it is that composition."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'elu' or 'elu_plus_one', got {activation!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if table.dim() != 2 or pos.dim() != 1 or pos.dtype != torch.int64:
        raise ValueError(f"position_dropout needs a [P, H] table and int64 positions [T], got {tuple(table.shape)} "
                         f"and {pos.dtype} {tuple(pos.shape)}")
    p_eff = p if training else 0.0
    if p_eff == 1.0 or not _cpp_usable(table) or pos.device != table.device:
        out = dropout(table.index_select(0, pos), p, training)
        if activation == "elu":
            return activations.elu(out)
        return activations.elu_plus_one(out) if activation == "elu_plus_one" else out
    # the seed is drawn exactly when dropout() would draw it
    seed = (torch.randint(0, 2**63 - 1, (), dtype=torch.int64) if p_eff > 0
            else torch.zeros((), dtype=torch.int64))
    return position_dropout_op(table.contiguous(), pos.contiguous(), seed, float(p_eff), ACTIVATIONS[activation])
