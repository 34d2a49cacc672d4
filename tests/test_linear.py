"""The dense-layer op (``mstein_fast.nn.linear``, csrc/linear.h) against float64 products.

Tolerance: a float32 dot product of depth ``K`` (summed in any order) is within ``K * u * sum_i
|a_i b_i|`` of the exact value (``u = 2^-24``; the classical bound ``gamma_K``); the tests check each
element against twice that bound computed from the float64 absolute values, so any wrong or missing
term (of size about ``sum |a_i b_i| / K``) fails, and no correct rounding can.

With an activation (ELU, or ELU + 1 for covariances) fused in: both are 1-Lipschitz, so the output is
within the product's bound plus a few units in the last place of the result (the kernel's ``expm1``
is within 2 ulp, ``+ 1`` rounds once); the backward takes the activation's derivative from the
float32 output ``y`` (as specified: ``1`` where ``x > 0``, else ``y + 1`` for ELU, ``y`` for ELU + 1,
``0`` where the floor binds), so its reference is the float64 product with that same ``g * act'(y)``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mstein_fast.backends import load_backend
from mstein_fast.nn import linear as linear_module
from mstein_fast.nn.linear import linear

needs_cpp = pytest.mark.skipif(isinstance(load_backend("cpp"), ImportError), reason="C++ extension not built")
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


ACTS = {0: None, 1: "elu", 2: "elu_plus_one"}


def act64(z: torch.Tensor, act: int) -> torch.Tensor:
    if act == 0:
        return z
    y = F.elu(z)
    return y if act == 1 else (y + 1).clamp_min(1e-24)


def dact_from_output(y: torch.Tensor, act: int) -> torch.Tensor:
    """The derivative the kernels use, from the float32 output ``y`` (float64 result)."""
    y = y.double()
    if act == 0:
        return torch.ones_like(y)
    if act == 1:
        return torch.where(y > 0, torch.ones_like(y), y + 1)
    floor = torch.tensor(1e-24, dtype=torch.float32).item()  # the float32 floor the kernels compare with
    return torch.where(y > 1, torch.ones_like(y), torch.where(y > floor, y, torch.zeros_like(y)))


def assert_act_within_bound(got, x, w, b, act):
    z = x.double() @ w.double().T + b.double()
    bound = 2 * x.shape[1] * U * (x.double().abs() @ w.double().abs().T) + 8 * U * (act64(z, act).abs() + (act == 2))
    err = (got.double() - act64(z, act)).abs()
    assert torch.isfinite(got).all() and (err <= bound + 1e-30).all(), f"error {(err / (bound + 1e-30)).max():.3g} x bound"


def bwd_call(ext, g, y, act, x, w, threads, want=(True, True, True)):
    t, n = g.shape
    k = x.shape[1]
    gx, gw, gb = (torch.full(s, float("nan")) for s in ((t, k), (n, k), (n,)))
    ext.linear_bwd(g.data_ptr(), y.data_ptr() if act else 0, act, x.data_ptr(), w.data_ptr(),
                   gx.data_ptr() if want[0] else 0, gw.data_ptr() if want[1] else 0, gb.data_ptr() if want[2] else 0,
                   t, k, n, threads)
    return gx, gw, gb


@needs_cpp
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("t,k,n", SHAPES)
def test_kernels_write_every_element_within_the_float32_bound(t, k, n, act, threads):
    # the extension's entry points on NaN-poisoned outputs: every element written, and right
    ext = load_backend("cpp")
    x, w, b, g = _tensors(t, k, n, seed=t * 7 + k * 3 + n + act)
    y = torch.full((t, n), float("nan"))
    ext.linear_fwd(x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), t, k, n, act, threads)
    assert_act_within_bound(y, x, w, b, act)
    if act == 0:
        ynb = torch.full((t, n), float("nan"))
        ext.linear_fwd(x.data_ptr(), w.data_ptr(), 0, ynb.data_ptr(), t, k, n, 0, threads)  # no bias
        assert_within_bound(ynb, x, w.T, k)
    gx, gw, gb = bwd_call(ext, g, y, act, x, w, threads)
    gp = g.double() * dact_from_output(y, act)  # g' (float64, from the kernel's own y)
    # g' is rounded once to float32 in the kernel: u |g'| more per term
    for got, a_, b_, depth in ((gx, gp, w, n), (gw, gp.T, x, t)):
        exact = a_ @ b_.double()
        bound = (2 * depth * U + U) * (a_.abs() @ b_.double().abs()) + 1e-30
        assert torch.isfinite(got).all() and ((got.double() - exact).abs() <= bound).all()
    bound_b = 2 * (min(t, 256) + 2) * U * gp.abs().sum(0) + 1e-30
    assert ((gb.double() - gp.sum(0)).abs() <= bound_b).all()


@needs_cpp
@pytest.mark.parametrize("want", [(True, False, False), (False, True, False), (False, False, True)])
def test_backward_computes_only_what_is_asked(want):
    ext = load_backend("cpp")
    x, w, _, g = _tensors(300, 64, 40, seed=9)
    full = bwd_call(ext, g, None, 0, x, w, 2)
    part = bwd_call(ext, g, None, 0, x, w, 2, want)
    for wanted, f, p in zip(want, full, part):
        if wanted:
            assert torch.equal(f, p)  # the same sums in the same order
        else:
            assert torch.isnan(p).all()  # left untouched


@needs_cpp
@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("t,k,n", [(1, 1, 1), (129, 64, 192), (1000, 256, 64)])
def test_op_value_and_gradients_under_a_random_upstream(t, k, n, act):
    x, w, b, g = _tensors(t, k, n, seed=11)
    xs, ws, bs = (v.clone().requires_grad_() for v in (x, w, b))
    y = linear(xs, ws, bs, ACTS[act])
    y.backward(g)
    assert_act_within_bound(y.detach(), x, w, b, act)
    gp = (g.double() * dact_from_output(y.detach(), act)).float()
    assert_within_bound(xs.grad, gp, w, n)
    assert_within_bound(ws.grad, gp.T, x, t)
    torch.testing.assert_close(bs.grad.double(), gp.double().sum(0), rtol=1e-5, atol=1e-5 * t ** 0.5)


@needs_cpp
def test_fused_activation_equals_the_separate_ops():
    # the encoder's old path (product, then the activation op) gives the same values bit for bit,
    # and the same input and weight gradients up to float32 rounding of their sums
    from mstein_fast.nn import activations
    x, w, b, g = _tensors(517, 64, 256, seed=21)
    for act, op in ((1, activations.elu), (2, activations.elu_plus_one)):
        xs, ws, bs = (v.clone().requires_grad_() for v in (x, w, b))
        fused = linear(xs, ws, bs, ACTS[act])
        fused.backward(g)
        xo, wo, bo = (v.clone().requires_grad_() for v in (x, w, b))
        separate = op(linear(xo, wo, bo))
        separate.backward(g)
        assert torch.equal(fused, separate)
        assert torch.equal(xs.grad, xo.grad) and torch.equal(ws.grad, wo.grad)
        torch.testing.assert_close(bs.grad, bo.grad, rtol=1e-5, atol=1e-5)


@needs_cpp
def test_the_floor_of_the_covariance_activation_passes_no_gradient():
    x = torch.tensor([[-40.0], [0.5], [-0.3]], requires_grad=True)
    w = torch.ones(1, 1, requires_grad=True)
    y = linear(x, w, None, "elu_plus_one")
    assert y[0, 0] == torch.tensor(1e-24) and y[1, 0].item() == 1.5
    y.sum().backward()
    assert x.grad[0, 0].item() == 0.0 and x.grad[1, 0].item() == 1.0
    torch.testing.assert_close(x.grad[2, 0], torch.exp(torch.tensor(-0.3)), rtol=1e-6, atol=0)


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
    for act in (0, 1, 2):
        torch.library.opcheck(linear_module.linear_op.op,
                              (x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_(), act))
    torch.library.opcheck(linear_module.linear_op.op, (x, w, None, 0))
    y = linear_module.linear_op(x, w, b, 1)
    torch.library.opcheck(linear_module.linear_bwd_op.op, (g, y, x, w, 1, True, True, True))
    torch.library.opcheck(linear_module.linear_bwd_op.op, (g, torch.zeros(0), x, w, 0, False, True, False))
    with pytest.raises(ValueError, match="w:"):
        linear_module.linear_op(x, w[:, :3], None, 0)
    with pytest.raises(ValueError, match="activation must be"):
        linear(x, w, b, "gelu")
    ext = load_backend("cpp")
    buf = torch.zeros(64)
    with pytest.raises(ValueError, match="negative size"):
        ext.linear_fwd(buf.data_ptr(), buf.data_ptr(), 0, buf.data_ptr(), -1, 2, 2, 0, 1)
    with pytest.raises(ValueError, match="act must be"):
        ext.linear_fwd(buf.data_ptr(), buf.data_ptr(), 0, buf.data_ptr(), 2, 2, 2, 3, 1)
    with pytest.raises(ValueError, match="null pointer"):
        ext.linear_bwd(0, 0, 0, buf.data_ptr(), buf.data_ptr(), buf.data_ptr(), 0, 0, 2, 2, 2, 1)
    with pytest.raises(ValueError, match="null pointer"):  # the output y is needed for act'
        ext.linear_bwd(buf.data_ptr(), 0, 1, buf.data_ptr(), buf.data_ptr(), buf.data_ptr(), 0, 0, 2, 2, 2, 1)


# -- the fused feed-forward product ELU(x W1^T + b1) W2^T + b2 ---------------------------------------

# (tokens t, k, hidden n, m): single tokens, sizes that are not multiples of the micro-tile or of the
# 256-token pass (t = 513: three passes, the last of one token), the encoder's own shape
FF_SHAPES = [(1, 64, 256, 64), (7, 3, 5, 2), (300, 33, 70, 17), (513, 64, 256, 64), (129, 64, 256, 64)]


def _ff_inputs(t, k, n, m, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t, k, generator=g), torch.randn(n, k, generator=g) / k**0.5, torch.randn(n, generator=g),
            torch.randn(m, n, generator=g) / n**0.5, torch.randn(m, generator=g), torch.randn(t, m, generator=g)]


def _values_and_grads(fn, x, w1, b1, w2, b2, g):
    leaves = [p.detach().clone().requires_grad_() for p in (x, w1, b1, w2, b2)]
    z = fn(*leaves)
    z.backward(g)
    return [z.detach()] + [p.grad for p in leaves]


def _act64(h: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return h
    return F.elu(h) if activation == "elu" else (F.elu(h) + 1).clamp_min(1e-24)


@needs_cpp
@pytest.mark.parametrize("activation", ["elu", None, "elu_plus_one"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("t,k,n,m", FF_SHAPES)
def test_feed_forward_equals_two_dense_layers_bit_for_bit(t, k, n, m, threads, activation, monkeypatch):
    monkeypatch.setenv("MSTEIN_FAST_POISON", "1")  # outputs start as NaN: an unwritten element shows
    *params, g = _ff_inputs(t, k, n, m, seed=t + k + n + m)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        fused = _values_and_grads(lambda *a: linear_module.feed_forward(*a, activation=activation), *params, g)
        separate = _values_and_grads(lambda x, w1, b1, w2, b2: linear(linear(x, w1, b1, activation), w2, b2),
                                     *params, g)
    finally:
        torch.set_num_threads(saved)
    for name, a, b in zip(["z", "dx", "dw1", "db1", "dw2", "db2"], fused, separate):
        assert torch.isfinite(a).all(), name
        assert torch.equal(a, b), f"{name}: largest difference {(a - b).abs().max().item():.3g}"
    # and against float64 (the separate layers are checked element-wise in the tests above)
    exact = _values_and_grads(lambda x, w1, b1, w2, b2: F.linear(_act64(F.linear(x, w1, b1), activation), w2, b2),
                              *[p.double() for p in params], g.double())
    for name, a, b in zip(["z", "dx", "dw1", "db1", "dw2", "db2"], fused, exact):
        err = (a.double() - b).norm() / b.norm().clamp_min(1e-30)
        assert err < 1e-5, f"{name}: relative error {err:.3g} against float64"


@needs_cpp
@pytest.mark.parametrize("want", [(True, False, False, False, False), (False, True, False, False, False),
                                  (False, False, True, False, True), (False, False, False, True, False)])
def test_feed_forward_backward_computes_only_what_is_asked(want):
    *params, g = _ff_inputs(300, 64, 256, 64, seed=4)
    full = _values_and_grads(linear_module.feed_forward, *params, g)[1:]
    leaves = [p.detach().clone().requires_grad_(w) for p, w in zip(params, want)]
    linear_module.feed_forward(*leaves).backward(g)
    for leaf, w, ref in zip(leaves, want, full):
        if w:
            assert torch.equal(leaf.grad, ref)
        else:
            assert leaf.grad is None


@needs_cpp
def test_feed_forward_leading_dims_no_bias_and_fallback():
    *params, _ = _ff_inputs(24, 16, 40, 8, seed=5)
    x, w1, b1, w2, b2 = params
    x3 = x.reshape(2, 3, 4, 16)
    got = linear_module.feed_forward(x3, w1, None, w2, b2)
    assert got.shape == (2, 3, 4, 8)
    assert torch.equal(got.reshape(24, 8), linear(linear(x, w1, None, "elu"), w2, b2))
    got64 = linear_module.feed_forward(x.double(), w1.double(), b1.double(), w2.double(), b2.double())
    assert got64.dtype == torch.float64
    torch.testing.assert_close(got64, F.linear(F.elu(F.linear(x.double(), w1.double(), b1.double())), w2.double(),
                                               b2.double()), rtol=0, atol=0)


@needs_cpp
def test_feed_forward_opcheck_and_boundary_checks():
    *params, g = _ff_inputs(9, 6, 10, 4, seed=6)
    x, w1, b1, w2, b2 = params
    for act in (0, 1, 2):
        torch.library.opcheck(linear_module.ff_op.op, (*(p.clone().requires_grad_() for p in params), act))
        torch.library.opcheck(linear_module.ff_bwd_op.op, (g, x, w1, b1, w2, act, [True, True, True, True, True]))
    torch.library.opcheck(linear_module.ff_op.op, (x, w1, None, w2, None, 1))
    torch.library.opcheck(linear_module.ff_bwd_op.op, (g, x, w1, None, w2, 1, [False, True, False, False, True]))
    with pytest.raises(ValueError, match="w2"):
        linear_module.ff_op(x, w1, b1, w2[:, :3].contiguous(), b2, 1)
    with pytest.raises(ValueError, match="activation"):
        linear_module.feed_forward(x, w1, b1, w2, b2, activation="gelu")
    ext = load_backend("cpp")
    z = torch.empty(9, 4)
    with pytest.raises(ValueError, match="null pointer"):
        ext.ff_fwd(x.data_ptr(), 0, 0, w2.data_ptr(), 0, z.data_ptr(), 9, 6, 10, 4, 1, 1)
    with pytest.raises(ValueError, match="act must be"):
        ext.ff_fwd(x.data_ptr(), w1.data_ptr(), 0, w2.data_ptr(), 0, z.data_ptr(), 9, 6, 10, 4, 3, 1)
    with pytest.raises(ValueError, match="negative size"):
        ext.ff_bwd(g.data_ptr(), x.data_ptr(), w1.data_ptr(), 0, w2.data_ptr(), 0, 0, 0, 0, 0, -1, 6, 10, 4, 1, 1)
