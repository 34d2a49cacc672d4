"""The shared comparison helpers (``mstein_fast.testing``) catch what they are meant to catch: a
wrong value, a wrong gradient, a NaN, and they apply the 2x-the-baseline rule as documented."""

from __future__ import annotations

import math

import pytest
import torch

from mstein_fast import reference, testing

pytestmark = pytest.mark.core  # (docs/development.md: test markers)


def inputs(seed=0, n=7, m=5, d=6):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g), torch.rand(n, d, generator=g) + 0.5,
            torch.randn(m, d, generator=g), torch.rand(m, d, generator=g) + 0.5]


class _ScaledGrad(torch.autograd.Function):
    """Identity forward; backward scales the gradient by ``factor`` (a gradient-only bug)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


def test_the_float32_reference_passes_against_float64():
    errors = testing.compare(reference.pairwise_w2, reference.pairwise_w2, inputs(), tol=testing.TOL[torch.float32])
    assert set(errors) == {"output[0]", *testing.GAUSSIAN_NAMES}
    assert all(0 <= e < 1e-5 for e in errors.values())


def test_a_wrong_value_fails():
    def wrong(*a):
        return reference.pairwise_w2(*a) * (1 + 1e-3)

    with pytest.raises(AssertionError, match=r"output\[0\]: relative error 0\.001"):
        testing.compare(wrong, reference.pairwise_w2, inputs(), tol=1e-5)


def test_a_wrong_gradient_of_one_input_fails_and_is_named():
    def wrong(m1, c1, m2, c2):
        return reference.pairwise_w2(m1, _ScaledGrad.apply(c1, 1.01), m2, c2)

    with pytest.raises(AssertionError) as err:
        testing.compare(wrong, reference.pairwise_w2, inputs(), tol=1e-5)
    text = str(err.value)
    assert "d cov1/a" in text and "output[0]" not in text and "d mean1/a" not in text


def test_nan_fails_whatever_the_tolerance():
    def nan_at_one(*a):
        out = reference.pairwise_w2(*a)
        return out + torch.where(torch.arange(out.numel()).view_as(out) == 3, math.nan, 0.0)

    measured = testing.measure(nan_at_one, reference.pairwise_w2, inputs(), tol=1e9)
    assert not measured[0].passed and measured[0].error == math.inf


def test_baseline_rule_allows_twice_the_baseline_error_plus_the_floor():
    def baseline(*a):
        return reference.pairwise_w2(*a) * (1 + 1e-4)

    def kernel(factor):
        return lambda *a: reference.pairwise_w2(*a) * (1 + factor)

    m = testing.measure(kernel(1.9e-4), reference.pairwise_w2, inputs(), baseline_fn=baseline, ill_floor=0.0)
    assert m[0].reference_error == pytest.approx(1e-4, rel=1e-3) and m[0].rel == pytest.approx(2e-4, rel=1e-3)
    assert m[0].passed
    assert not testing.measure(kernel(2.1e-4), reference.pairwise_w2, inputs(), baseline_fn=baseline,
                               ill_floor=0.0)[0].passed
    # the fixed tolerance, when larger, wins
    assert testing.measure(kernel(2.1e-4), reference.pairwise_w2, inputs(), baseline_fn=baseline, ill_floor=0.0,
                           tol=5e-4)[0].passed


def test_scale_floor_admits_an_absolute_error_relative_to_the_scale():
    def off(*a):
        return reference.pairwise_w2(*a) + 1e-3

    def scale(*a):
        return torch.full_like(reference.pairwise_w2(*a), 1.0) + 0 * a[0].sum()

    assert not testing.measure(off, reference.pairwise_w2, inputs(), tol=1e-6)[0].passed
    assert testing.measure(off, reference.pairwise_w2, inputs(), tol=1e-6, scale_fn=scale, floor=2e-3)[0].passed


def test_assert_close_reports_the_worst_mismatch():
    want = torch.zeros(3, 4, dtype=torch.float64)
    got = want.clone()
    got[2, 1] = 0.5
    with pytest.raises(AssertionError, match=r"at \(2, 1\): got 0\.5"):
        testing.assert_close("x", got, want, 1e-6, 1e-3)
    assert testing.assert_close("x", want, want, 0.0) == 0.0
