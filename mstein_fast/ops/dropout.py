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

from mstein_fast.backends import _load
from mstein_fast.ops._library import check_buffer, define_op
from mstein_fast.ops._stack import threads


def _threshold(p: float) -> int:
    return min(round(p * 2**32), 2**32 - 1)


def _dropout(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """``mstein_fast::dropout``: ``x`` (contiguous float32) with each element dropped with
    probability ``p`` by the mask of the int64 scalar ``seed``, kept ones scaled by ``1 / (1 - p)``."""
    check_buffer("seed", seed, (), dtype=torch.int64)
    check_buffer("x", x, tuple(x.shape))
    out = torch.empty_like(x)
    _load("cpp").dropout(x.data_ptr(), out.data_ptr(), x.numel(), _threshold(p), 1.0 / (1.0 - p), int(seed.item()),
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
    return x.device.type == "cpu" and x.dtype == torch.float32 and not isinstance(_load("cpp"), ImportError)


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
