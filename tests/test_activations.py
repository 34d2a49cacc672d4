"""The fused ELU / ELU + 1 ops (mstein_fast.nn.activations) against float64 references, forward
and backward, on float32 CPU tensors (the C++ kernels) and through the PyTorch fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mstein_fast.backends import load_backend
from mstein_fast.nn import activations
from mstein_fast.numerics import COV_FLOOR

pytestmark = pytest.mark.core  # (docs/development.md: test markers)

needs_cpp = pytest.mark.skipif(isinstance(load_backend("cpp"), ImportError), reason="C++ extension not built")


def reference(x: torch.Tensor, plus_one: bool) -> torch.Tensor:
    """float64 ELU, or (ELU + 1) floored, computed the straightforward way."""
    y = F.elu(x.double())
    return (y + 1.0).clamp_min(COV_FLOOR) if plus_one else y


def inputs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # a wide range: the Taylor branch of expm1 (-0.5 < x <= 0), exp(x) - 1 below, the floor (x < -17)
    return torch.randn(n, generator=g) * torch.tensor([0.1, 1.0, 4.0, 30.0])[torch.randint(4, (n,), generator=g)]


@needs_cpp
@pytest.mark.parametrize("plus_one", [False, True])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 2**14 + 3, 3 * 2**14])
def test_forward_matches_float64(plus_one, n):
    x = inputs(n, n)
    y = activations.elu_op(x, plus_one)
    ref = reference(x, plus_one)
    # ELU: a few ulp relative (the float32 input is exact; expm1 by polynomial or exp - 1);
    # ELU + 1: the float32 sum elu + 1 rounds to half an ulp of max(1, |y|) (6e-8 below 1), so the
    # error is absolute there (where the floor binds both give exactly 1e-24)
    if plus_one:
        assert ((y.double() - ref).abs() / ref.abs().clamp_min(1.0)).max().item() <= 1.2e-7
        # far below the rounding band of expm1(x) + 1 (x ~ -16.6) the floor binds exactly
        assert (y[x < -18.0] == COV_FLOOR).all()
    else:
        err = (y.double() - ref).abs() / ref.abs().clamp_min(1e-30)
        assert err.max().item() <= 4e-7


@needs_cpp
@pytest.mark.parametrize("plus_one", [False, True])
@pytest.mark.parametrize("n", [1, 13, 2**14 + 5])
def test_backward_matches_float64(plus_one, n):
    x = inputs(n, 100 + n)
    g = torch.randn(n, generator=torch.Generator().manual_seed(n))
    xa = x.clone().requires_grad_()
    fn = activations.elu_plus_one if plus_one else activations.elu
    (fn(xa) * g).sum().backward()
    x64 = x.double().requires_grad_()
    (reference(x64, plus_one) * g.double()).sum().backward()
    expected = x64.grad
    if plus_one:  # where float32 clamps (x below ~ -17) no gradient passes, as through clamp_min
        clamped = (F.elu(x) + 1.0) <= COV_FLOOR
        expected = torch.where(clamped, 0.0, expected)
    # the derivative is taken from the rounded output (elu + 1 = exp(x) to an absolute 6e-8)
    assert (xa.grad.double() - expected).abs().max().item() <= 2e-7 * g.abs().max().item()


@needs_cpp
def test_edge_values():
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, -100.0, float("-inf"), float("inf"), float("nan"), 3.0, -3.0])
    y = activations.elu_op(x, False)
    assert torch.equal(y[:7], torch.tensor([0.0, 0.0, 1e-30, -1e-30, -1.0, -1.0, float("inf")]))
    assert torch.isnan(y[7])
    y1 = activations.elu_op(x, True)
    assert (y1[4:6] == COV_FLOOR).all() and torch.isnan(y1[7])
    xa = x.clone().requires_grad_()
    activations.elu_plus_one(xa).sum().backward()
    assert xa.grad[4].item() == 0.0 and xa.grad[5].item() == 0.0  # floored: no gradient
    assert xa.grad[0].item() == 1.0 and xa.grad[2].item() == 1.0 and xa.grad[6].item() == 1.0
    assert torch.isnan(xa.grad[7])  # a NaN input is not hidden by the backward


@needs_cpp
def test_outputs_are_written_and_inputs_untouched():
    x = inputs(3000, 5)
    before = x.clone()
    for plus_one in (False, True):
        y = activations.elu_op(x, plus_one)
        assert torch.isfinite(y).all()
        grad = activations.elu_bwd_op(torch.ones_like(x), y, plus_one)
        assert torch.isfinite(grad).all()
    assert torch.equal(x, before)


@needs_cpp
def test_non_contiguous_input_and_shapes():
    x = inputs(6 * 40, 9).reshape(6, 40)[:, ::3].requires_grad_()
    y = activations.elu_plus_one(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.double(), reference(x.detach(), True), rtol=1.2e-7, atol=1.2e-7)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_dtypes_use_pytorch(dtype):
    x = inputs(50, 3).to(dtype)
    assert torch.equal(activations.elu(x), F.elu(x))
    assert torch.equal(activations.elu_plus_one(x), (F.elu(x) + 1.0).clamp_min(COV_FLOOR))


@needs_cpp
def test_gradcheck_against_float64_formula():
    # the op's backward under a random upstream gradient equals the float64 derivative at points
    # away from 0 (where ELU's derivative is continuous anyway) and away from the floor
    x = (torch.rand(64, dtype=torch.float64) * 6 - 3).float().requires_grad_()
    g = torch.randn(64)
    (activations.elu(x) * g).sum().backward()
    x64 = x.detach().double()
    expected = g.double() * torch.where(x64 > 0, 1.0, torch.exp(x64))
    torch.testing.assert_close(x.grad.double(), expected, rtol=3e-7, atol=1e-7)


@needs_cpp
@pytest.mark.slow
def test_opcheck():
    x = inputs(33, 1).requires_grad_()
    torch.library.opcheck(activations.elu_op.op, (x, True))
    y = activations.elu_op(x.detach(), False)
    torch.library.opcheck(activations.elu_bwd_op.op, (torch.randn(33), y, False))
