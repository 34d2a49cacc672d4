"""``linear``: the dense layer ``y = act(x W^T + b)`` (``act``: none, ELU or the covariance
activation ELU + 1) and its gradients by the C++ extension for float32 CPU tensors.

The encoder's dense layers multiply tall, thin matrices (``[tokens, 64]`` by ``[64, 256]`` and back,
about a third of an MStein training epoch). On CPUs where the BLAS library runs these shapes far
below the vector units' peak (MKL on AMD Zen 5 here: 106-160 GFLOP/s of about 480), the
register-blocked micro-kernel of the fused InfoNCE does them 1.4-1.9x faster (csrc/linear.h;
benchmarks/RESULTS.md). Inside a training step the activations are much larger than the caches, so
the activation is applied to each block of outputs while it is in cache, and the backward computes
the input, weight and bias gradients in one sweep over the upstream gradient (applying the
activation's derivative, taken from the saved output, on the way). Same values as ``F.linear``
followed by :mod:`mstein_fast.nn.activations` up to the order of float32 sums; the sums over tokens
(weight and bias gradients) are split into one contiguous range per thread and added in thread
order, so results are deterministic for a fixed thread count. Other devices and dtypes (and builds
without the extension) use ``F.linear`` and the activation ops.

:func:`feed_forward` is the distributional encoder's feed-forward product ``ELU(x W1^T + b1) W2^T +
b2`` (or any two dense layers in a row, the hidden activation none, ELU or ELU + 1) as one op (csrc/feed_forward.h): the hidden layer (four times the width) stays in cache, is
not stored for the backward, and is recomputed there per block of tokens; the values and
gradients equal those of the two dense layers above bit for bit (same blocking, same order of sums).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mstein_fast.backends import cpp_available, cpp_extension, empty_buffer, threads
from mstein_fast.library import check_buffer, define_op
from mstein_fast.nn import activations
from mstein_fast.numerics import ACTIVATIONS


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: int) -> torch.Tensor:
    """``mstein_fast::linear``: ``act(x [t, k] w^T + b)`` (contiguous float32 CPU; ``w [n, k]``,
    ``b [n]`` or None; ``act`` a code of :data:`ACTIVATIONS`)."""
    t, k = x.shape
    n = w.shape[0]
    check_buffer("x", x, (t, k))
    check_buffer("w", w, (n, k))
    if b is not None:
        check_buffer("b", b, (n,))
    y = torch.empty((t, n), dtype=torch.float32)
    cpp_extension().linear_fwd(x.data_ptr(), w.data_ptr(), 0 if b is None else b.data_ptr(), y.data_ptr(), t, k, n, act,
                            threads())
    return y


def _linear_fake(x, w, b, act):
    return x.new_empty((x.shape[0], w.shape[0]))


def _linear_bwd(g: torch.Tensor, y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, act: int, want_x: bool,
                want_w: bool, want_b: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``mstein_fast::linear_bwd``: the gradients w.r.t. ``x``, ``w`` and ``b`` of ``y = act(x w^T + b)``
    from ``g = dL/dy`` (and ``y``, the forward's output, when ``act`` is not 0), in one sweep over the
    tokens; the ones not wanted come back empty (``[0]``)."""
    t, n = g.shape
    k = w.shape[1]
    check_buffer("g", g, (t, n))
    if act:
        check_buffer("y", y, (t, n))
    check_buffer("x", x, (t, k))
    check_buffer("w", w, (n, k))
    gx = torch.empty((t, k) if want_x else (0,), dtype=torch.float32)
    gw = torch.empty((n, k) if want_w else (0,), dtype=torch.float32)
    gb = torch.empty((n,) if want_b else (0,), dtype=torch.float32)
    cpp_extension().linear_bwd(g.data_ptr(), y.data_ptr() if act else 0, act, x.data_ptr(), w.data_ptr(),
                            gx.data_ptr() if want_x else 0, gw.data_ptr() if want_w else 0,
                            gb.data_ptr() if want_b else 0, t, k, n, threads())
    return gx, gw, gb


def _linear_bwd_fake(g, y, x, w, act, want_x, want_w, want_b):
    t, n = g.shape
    k = w.shape[1]
    return (g.new_empty((t, k) if want_x else (0,)), g.new_empty((n, k) if want_w else (0,)),
            g.new_empty((n,) if want_b else (0,)))


linear_bwd_op = define_op(
    "linear_bwd",
    "(Tensor g, Tensor y, Tensor x, Tensor w, int act, bool want_x, bool want_w, bool want_b) -> (Tensor, Tensor, Tensor)",
    _linear_bwd, _linear_bwd_fake)


def _setup_context(ctx, inputs, output):
    x, w, b, act = inputs
    ctx.save_for_backward(x, w, output if act else None)  # act' is taken from the output
    ctx.has_bias, ctx.act = b is not None, act


def _backward(ctx, grad):
    x, w, y = ctx.saved_tensors
    want = ctx.needs_input_grad
    gx, gw, gb = linear_bwd_op(grad.contiguous(), x.new_empty(0) if y is None else y, x, w, ctx.act, want[0], want[1],
                               ctx.has_bias and want[2])
    return (gx if want[0] else None, gw if want[1] else None, gb if ctx.has_bias and want[2] else None, None)


linear_op = define_op("linear", "(Tensor x, Tensor w, Tensor? b, int act) -> Tensor", _linear, _linear_fake,
                      backward=_backward, setup_context=_setup_context)


def _cpp_usable(*tensors: torch.Tensor | None) -> bool:
    return (all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors)
            and cpp_available())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           activation: str | None = None) -> torch.Tensor:
    """``torch.nn.functional.linear(x, weight, bias)`` (``x [..., k]``, ``weight [n, k]``, ``bias [n]``)
    followed by ``activation``: None, ``"elu"`` (:func:`mstein_fast.nn.activations.elu`) or
    ``"elu_plus_one"`` (:func:`mstein_fast.nn.activations.elu_plus_one`, the covariance activation).
    The C++ kernels for float32 CPU tensors apply the activation to each block of outputs while it is
    in cache (and its derivative in the backward's sweep); ``F.linear`` and the activation otherwise."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(a for a in ACTIVATIONS if a)} or None, got {activation!r}")
    if not _cpp_usable(x, weight, bias) or x.dim() == 0 or weight.dim() != 2:
        y = F.linear(x, weight, bias)
        if activation is None:
            return y
        return activations.elu(y) if activation == "elu" else activations.elu_plus_one(y)
    lead = x.shape[:-1]
    y = linear_op(x.reshape(-1, x.shape[-1]).contiguous(), weight.contiguous(),
                  None if bias is None else bias.contiguous(), ACTIVATIONS[activation])
    return y.reshape(*lead, weight.shape[0])


# -- the feed-forward product ELU(x W1^T + b1) W2^T + b2 ------------------------------------------

def _ff(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
        b2: torch.Tensor | None, act: int) -> torch.Tensor:
    """``mstein_fast::feed_forward``: ``act(x [t, k] w1^T + b1) w2^T + b2`` (contiguous float32 CPU;
    ``w1 [n, k]``, ``w2 [m, n]``, biases ``[n]``, ``[m]`` or None; ``act`` a code of :data:`ACTIVATIONS`)."""
    t, k = x.shape
    n, m = w1.shape[0], w2.shape[0]
    check_buffer("x", x, (t, k))
    check_buffer("w1", w1, (n, k))
    check_buffer("w2", w2, (m, n))
    for name, b, size in (("b1", b1, n), ("b2", b2, m)):
        if b is not None:
            check_buffer(name, b, (size,))
    z = empty_buffer(x, (t, m))
    cpp_extension().ff_fwd(x.data_ptr(), w1.data_ptr(), 0 if b1 is None else b1.data_ptr(), w2.data_ptr(),
                        0 if b2 is None else b2.data_ptr(), z.data_ptr(), t, k, n, m, act, threads())
    return z


def _ff_fake(x, w1, b1, w2, b2, act):
    return x.new_empty((x.shape[0], w2.shape[0]))


def _ff_bwd(g: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
            act: int, want: list[bool]) -> tuple[torch.Tensor, ...]:
    """``mstein_fast::feed_forward_bwd``: the gradients w.r.t. ``x, w1, b1, w2, b2`` of :func:`_ff`
    from ``g = dL/dz`` (the hidden layer recomputed from ``x``); the ones not wanted (``want``, five
    flags) come back empty (``[0]``)."""
    t, m = g.shape
    k = x.shape[1]
    n = w1.shape[0]
    check_buffer("g", g, (t, m))
    check_buffer("x", x, (t, k))
    check_buffer("w1", w1, (n, k))
    check_buffer("w2", w2, (m, n))
    if b1 is not None:
        check_buffer("b1", b1, (n,))
    shapes = [(t, k), (n, k), (n,), (m, n), (m,)]
    out = [empty_buffer(x, shape if w else (0,)) for shape, w in zip(shapes, want)]
    cpp_extension().ff_bwd(g.data_ptr(), x.data_ptr(), w1.data_ptr(), 0 if b1 is None else b1.data_ptr(), w2.data_ptr(),
                        *(o.data_ptr() if w else 0 for o, w in zip(out, want)), t, k, n, m, act, threads())
    return tuple(out)


def _ff_bwd_fake(g, x, w1, b1, w2, act, want):
    t, m = g.shape
    k, n = x.shape[1], w1.shape[0]
    return tuple(g.new_empty(shape if w else (0,)) for shape, w in zip([(t, k), (n, k), (n,), (m, n), (m,)], want))


ff_bwd_op = define_op("feed_forward_bwd",
                      "(Tensor g, Tensor x, Tensor w1, Tensor? b1, Tensor w2, int act, bool[] want) -> "
                      "(Tensor, Tensor, Tensor, Tensor, Tensor)", _ff_bwd, _ff_bwd_fake)


def _ff_setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, act = inputs
    ctx.save_for_backward(x, w1, b1, w2)  # no hidden layer: the backward recomputes it
    ctx.has_bias = (b1 is not None, b2 is not None)
    ctx.act = act


def _ff_backward(ctx, grad):
    x, w1, b1, w2 = ctx.saved_tensors
    need = ctx.needs_input_grad
    want = [need[0], need[1], ctx.has_bias[0] and need[2], need[3], ctx.has_bias[1] and need[4]]
    grads = ff_bwd_op(grad.contiguous(), x, w1, b1, w2, ctx.act, want)
    return *(gr if w else None for gr, w in zip(grads, want)), None


ff_op = define_op("feed_forward", "(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, int act) -> Tensor", _ff,
                  _ff_fake, backward=_ff_backward, setup_context=_ff_setup_context)


def feed_forward(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                 b2: torch.Tensor | None, activation: str | None = "elu") -> torch.Tensor:
    """``linear(linear(x, w1, b1, activation), w2, b2)`` for ``x [..., k]``, ``w1 [n, k]``, ``w2 [m, n]``
    (default: the feed-forward block's ELU; also None or ``"elu_plus_one"``): one op on float32 CPU
    tensors whose hidden layer never reaches memory (see the module doc; the same bits as
    :func:`linear` twice), the two :func:`linear` calls elsewhere."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(a for a in ACTIVATIONS if a)} or None, got {activation!r}")
    if not _cpp_usable(x, w1, b1, w2, b2) or x.dim() == 0 or w1.dim() != 2 or w2.dim() != 2:
        return linear(linear(x, w1, b1, activation), w2, b2)
    lead = x.shape[:-1]
    z = ff_op(x.reshape(-1, x.shape[-1]).contiguous(), w1.contiguous(), None if b1 is None else b1.contiguous(),
              w2.contiguous(), None if b2 is None else b2.contiguous(), ACTIVATIONS[activation])
    return z.reshape(*lead, w2.shape[0])
