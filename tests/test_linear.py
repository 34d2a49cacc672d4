"""The dense-layer op (``mstein_fast.ops.linear``, csrc/linear.h) against float64 products.

Tolerance: a float32 dot product of depth ``K`` (summed in any order) is within ``K * u * sum_i
|a_i b_i|`` of the exact value (``u = 2^-24``; the classical bound ``gamma_K``); the tests check each
element against twice that bound computed from the float64 absolute values, so any wrong or missing
term (of size about ``sum |a_i b_i| / K``) fails, and no correct rounding can.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mstein_fast.backends import _load
from mstein_fast.ops import linear as linear_module
from mstein_fast.ops.linear import linear

needs_cpp = pytest.mark.skipif(isinstance(_load("cpp"), ImportError), reason="C++ extension not built")
U = 2.0**-24

# (tokens t, input features k, outputs n): single elements, sizes that are not multiples of the
# micro-tile (8 rows x 32 columns), of the row block (128) or of the depth pass (256), depths above
# one pass (k = 300 forward, t = 1000 in the weight gradient), and the encoder's own shapes
SHAPES = [(1, 1, 1), (1, 64, 256), (7, 3, 5), (129, 64, 192), (257, 70, 33), (50, 300, 40), (1000, 256, 64),
          (600, 64, 64)]


def assert_within_bound(got: torch.Tensor, a: torch.Tensor, b: torch.Tensor, depth: int) -> None:
    """``got`` (float32) against the float64 product ``a @ b``, within 2 gamma_depth of ``|a| @ |b|``."""
    exact = a.double() @ b.double()
    bound = 2 * depth * U * (a.double().abs() @ b.double().abs()) + 1e-30
    err = (got.double() - exact).abs()
    worst = (err / bound).max().item() if got.numel() else 0.0
    assert got.shape == exact.shape and torch.isfinite(got).all()
    assert worst <= 1.0, f"error {worst:.3g} x the float32 bound (largest error {err.max().item():.3g})"


def _tensors(t, k, n, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(t, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g),
            torch.randn(t, n, generator=g))


@needs_cpp
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("t,k,n", SHAPES)
def test_kernels_write_every_element_within_the_float32_bound(t, k, n, threads):
    # the extension's entry points on NaN-poisoned outputs: every element written, and right
    ext = _load("cpp")
    x, w, b, g = _tensors(t, k, n, seed=t * 7 + k * 3 + n)
    y = torch.full((t, n), float("nan"))
    ext.linear_fwd(x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), t, k, n, threads)
    assert_within_bound(y - b, x, w.T, k)
    ext.linear_fwd(x.data_ptr(), w.data_ptr(), 0, y.fill_(float("nan")).data_ptr(), t, k, n, threads)  # no bias
    assert_within_bound(y, x, w.T, k)
    gx = torch.full((t, k), float("nan"))
    ext.linear_bwd_input(g.data_ptr(), w.data_ptr(), gx.data_ptr(), t, k, n, threads)
    assert_within_bound(gx, g, w, n)
    gw = torch.full((n, k), float("nan"))
    ext.linear_bwd_weight(g.data_ptr(), x.data_ptr(), gw.data_ptr(), t, k, n, threads)
    assert_within_bound(gw, g.T, x, t)


@needs_cpp
@pytest.mark.parametrize("t,k,n", [(1, 1, 1), (129, 64, 192), (1000, 256, 64)])
def test_op_value_and_gradients_under_a_random_upstream(t, k, n):
    x, w, b, g = _tensors(t, k, n, seed=11)
    xs, ws, bs = (v.clone().requires_grad_() for v in (x, w, b))
    y = linear(xs, ws, bs)
    y.backward(g)
    assert_within_bound(y - b, x, w.T, k)
    assert_within_bound(xs.grad, g, w, n)
    assert_within_bound(ws.grad, g.T, x, t)
    torch.testing.assert_close(bs.grad.double(), g.double().sum(0), rtol=1e-5, atol=1e-5 * t ** 0.5)


@needs_cpp
def test_leading_dims_non_contiguous_input_and_a_row_slice_of_the_weight():
    # as the encoder calls it: [B, L, H] activations, a transposed view, the values' rows of a QKV weight
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 9, 16, generator=gen).transpose(0, 1)  # [9, 5, 16], not contiguous
    qkv = torch.randn(48, 16, generator=gen, requires_grad=True)
    bias = torch.randn(48, generator=gen, requires_grad=True)
    xs = x.clone().requires_grad_()
    y = linear(xs, qkv[32:], bias[32:])
    assert y.shape == (9, 5, 16)
    g = torch.randn(y.shape, generator=gen)
    y.backward(g)
    x64, w64, b64 = (v.detach().double().requires_grad_() for v in (x, qkv, bias))
    F.linear(x64, w64[32:], b64[32:]).backward(g.double())
    torch.testing.assert_close(y.double(), F.linear(x.double(), qkv.detach().double()[32:], bias.detach().double()[32:]),
                               rtol=1e-5, atol=1e-5)
    for got, want in ((xs.grad, x64.grad), (qkv.grad, w64.grad), (bias.grad, b64.grad)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert qkv.grad[:32].abs().max() == 0  # the other rows get no gradient


@needs_cpp
def test_deterministic_and_empty_inputs():
    x, w, b, g = _tensors(700, 64, 96, seed=5)
    xs = x.clone().requires_grad_()
    ws = w.clone().requires_grad_()
    runs = []
    for _ in range(2):
        xs.grad = ws.grad = None
        y = linear(xs, ws, b)
        y.backward(g)
        runs.append((y, xs.grad.clone(), ws.grad.clone()))
    for first, second in zip(*runs):
        assert torch.equal(first, second)
    empty = linear(torch.zeros(0, 64), w, b)
    assert empty.shape == (0, 96)
    ze = torch.zeros(0, 64, requires_grad=True)
    wz = w.clone().requires_grad_()
    linear(ze, wz, b).sum().backward()
    assert torch.equal(wz.grad, torch.zeros_like(w))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_dtypes_use_pytorch(dtype):
    x, w, b, _ = (v.to(dtype) for v in _tensors(6, 5, 4, seed=2))
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))


@needs_cpp
def test_opcheck_and_boundary_checks():
    x, w, b, g = _tensors(13, 6, 5, seed=3)
    torch.library.opcheck(linear_module.linear_op.op, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_()))
    torch.library.opcheck(linear_module.linear_op.op, (x.detach(), w.detach(), None))
    torch.library.opcheck(linear_module.grad_input_op.op, (g, w.detach()))
    torch.library.opcheck(linear_module.grad_weight_op.op, (g, x.detach()))
    with pytest.raises(ValueError, match="w:"):
        linear_module.linear_op(x.detach(), w.detach()[:, :3], None)
    ext = _load("cpp")
    buf = torch.zeros(64)
    with pytest.raises(ValueError, match="negative size"):
        ext.linear_fwd(buf.data_ptr(), buf.data_ptr(), 0, buf.data_ptr(), -1, 2, 2, 1)
    with pytest.raises(ValueError, match="null pointer"):
        ext.linear_bwd_weight(0, buf.data_ptr(), buf.data_ptr(), 2, 2, 2, 1)
