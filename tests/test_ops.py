"""The public ops against an independent float64 oracle, values and all four gradients.

The oracle below is written from the formulas of docs/maths.md, not from
``mstein_fast.reference``: W from broadcast differences of ``x = [mean, sqrt(cov)]`` (no
``|x|^2 + |y|^2 - 2 x.y`` expansion) and the InfoNCE by an explicit max-shifted logsumexp over the
candidates ``c != r`` of the 2N rows. Its gradients come from autograd through that direct formula.

Backends: ``"cpp"`` (skipped with a reason when the extension is not built) and ``"torch"`` (the
reference in float32: a sanity check of the oracle and of the tolerances themselves).

Errors are relative RMS errors ``||a - b|| / ||b||`` (robust for long reductions) with a NaN/inf
check. Where the problem itself is ill-conditioned in float32 (temperature 1e-6, large offsets),
the kernel may be at most 2x as wrong as the float32 reference computation, plus a small floor.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zlib

import pytest
import torch

import mstein_fast
from mstein_fast import reference, testing
from mstein_fast.ops import _wasserstein_infonce as infonce_module

pytestmark = pytest.mark.core  # (docs/development.md: test markers)

HAS_CPP = "cpp" in mstein_fast.available_backends()
NEEDS_CPP = pytest.mark.skipif(not HAS_CPP, reason="C++ extension mstein_fast._C not built/importable")
BACKENDS = [pytest.param("cpp", marks=NEEDS_CPP), "torch"]
# Where a case's tolerance is "2x the float32 reference's own error" (ill-conditioned inputs), the
# "torch" backend IS that reference: the comparison could not fail, so it is not run (the
# reference's semantics are checked in float64 by test_reference_*, and its edge cases in
# test_numerics_edges.py).
SELF_BASELINE = "the float32 reference is this case's tolerance baseline: comparing it with itself cannot fail"
# C++ InfoNCE with the 2N x 2N distance matrix stored for the backward, or recomputed ("stream")
BACKEND_PATHS = [
    pytest.param("cpp", True, marks=NEEDS_CPP, id="cpp-stored"),
    pytest.param("cpp", False, marks=NEEDS_CPP, id="cpp-stream"),
    pytest.param("torch", None, id="torch"),
]

# --------------------------------------------------------------------------------------------------
# The oracle (float64, direct formulas)
# --------------------------------------------------------------------------------------------------


def oracle_w2(mean1, cov1, mean2, cov2):
    """Squared W2 by broadcast differences of ``x = [mean, sqrt(cov)]``: ``sum_k (x_ik - y_jk)^2``.

    ``[..., N, D]``, ``[..., M, D]`` -> ``[..., N, M]``. Materialises ``[..., N, M, 2D]`` (at most
    ~140 MB here): simple rather than frugal.
    """
    x = torch.cat([mean1, torch.sqrt(cov1)], dim=-1)
    y = torch.cat([mean2, torch.sqrt(cov2)], dim=-1)
    return ((x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2).sum(-1)


def oracle_similarity(w, similarity):
    return 1.0 / (1.0 + w) if similarity == "inv" else -w


def oracle_infonce_rows(mean_a, cov_a, mean_b, cov_b, temperature, similarity):
    """The 2N per-row losses (rows of A first): logsumexp over ``c != r`` minus the positive's logit."""
    n = mean_a.shape[0]
    mean, cov = torch.cat([mean_a, mean_b]), torch.cat([cov_a, cov_b])
    logits = oracle_similarity(oracle_w2(mean, cov, mean, cov), similarity) / temperature
    rows = torch.arange(2 * n)
    candidates = rows.unsqueeze(1) != rows.unsqueeze(0)  # c != r
    masked = logits.masked_fill(~candidates, -math.inf)
    top = masked.max(dim=1, keepdim=True).values.detach()  # the shift does not change the value
    lse = top.squeeze(1) + torch.log(torch.exp(masked - top).sum(dim=1))
    positive = torch.cat([rows[n:], rows[:n]])  # p(r) = r + N for A rows, r - N for B rows
    return lse - logits[rows, positive]


def oracle_infonce(mean_a, cov_a, mean_b, cov_b, temperature, similarity, reduction):
    per_row = oracle_infonce_rows(mean_a, cov_a, mean_b, cov_b, temperature, similarity)
    return {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]


def oracle_positive_logits(mean_a, cov_a, mean_b, cov_b, temperature, similarity, reduction):
    """``logit(r, p(r))`` per row, reduced like the loss: the size of the terms whose difference is
    the loss (the scale for absolute error floors when the loss cancels to ~0)."""
    mean, cov = torch.cat([mean_a, mean_b]), torch.cat([cov_a, cov_b])
    partner_mean, partner_cov = torch.cat([mean_b, mean_a]), torch.cat([cov_b, cov_a])
    x = torch.cat([mean, torch.sqrt(cov)], dim=-1)
    y = torch.cat([partner_mean, torch.sqrt(partner_cov)], dim=-1)
    per_row = oracle_similarity(((x - y) ** 2).sum(-1), similarity) / temperature
    return {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]


def oracle_alignment_uniformity(mean_a, cov_a, mean_b, cov_b, temperature):
    w = oracle_w2(mean_a, cov_a, mean_b, cov_b)
    alignment = torch.diagonal(w).mean()
    z = -w / temperature
    top = z.max(dim=1, keepdim=True).values.detach()
    uniformity = (top.squeeze(1) + torch.log(torch.exp(z - top).sum(dim=1))).mean()
    return alignment, uniformity


# --------------------------------------------------------------------------------------------------
# Comparison helpers
# --------------------------------------------------------------------------------------------------


# Tolerances for float32 kernels on well-conditioned inputs (values O(1), W computed with a
# condition number (|x|^2 + |y|^2) / W of a few): float32 rounding (6e-8) accumulated over at most
# 2D <= 200 products and 2N <= 600 softmax terms gives relative RMS errors of ~1e-7..5e-6 (measured
# for both the float32 reference and the kernel); 2e-5 leaves 4x margin and still catches any
# indexing, masking or scaling bug (errors O(1e-2..1)).
TOL32 = 2e-5
# Ill-conditioned cases (T = 1e-6, means offset by 1e3): the kernel may be 2x as wrong as the float32
# reference computation, plus this relative floor (~16 float32 ulps) for when the reference happens
# to be exact.
FLOOR_ILL = 1e-6
# InfoNCE losses and gradients can be exactly 0 or tiny by cancellation (a softmax saturated on the
# positive: loss = lse - logit(positive) = log(1 + tiny)), where a relative error is meaningless.
# There errors are measured against the size of the positive-logit term (its value and gradient,
# the scale of both terms that cancel): float32 leaves ~1e-8 of it (measured 1e-9..1e-7);
# 1e-6 of it (16 ulps) is the floor. A wrong softmax weight anywhere costs O(1e-2..1) of it.
FLOOR_SCALE = 1e-6


def compare(fn, inputs, oracle_fn, seed, *, tol=None, baseline_fn=None, scale_fn=None, floor=FLOOR_SCALE):
    """:func:`mstein_fast.testing.compare` of ``fn`` on ``inputs`` with the oracle on their float64
    copy, outputs and the four gradients under a random upstream gradient: ``tol`` relative, or
    with ``baseline_fn`` (run on ``inputs``) ``2 x its relative error + FLOOR_ILL``; with
    ``scale_fn`` plus ``floor`` x the norm of its value / gradient. Returns the relative errors."""
    return testing.compare(fn, oracle_fn, inputs, seed=seed + 1, tol=tol, baseline_fn=baseline_fn,
                           ill_floor=FLOOR_ILL, scale_fn=scale_fn, floor=floor)


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def gaussians(n, d, *, regime="unit", batch=(), seed=0, paired_with=None):
    """float32 ``(mean, cov)`` of shape ``[*batch, n, d]``.

    ``"unit"``: W = O(1) whatever D (means and stds scaled by 1/sqrt(D)) so that temperatures 1 and
    0.1 give a softmax that is neither uniform nor fully saturated.
    ``"official"``: ELU-like means (0.3 randn) and ELU+1-like variances in [0.5, 1.5] (the official
    trainer's inputs; with T = 1e-6 the softmax is nearly one-hot).
    ``"spread"``: W ~ 1e4: with "inv" and T = 1e-6 logits ~ 100 that differ by tens, so most softmax
    weights underflow float32 and a few percent are denormal (the regime of docs/maths.md, Denormals).
    ``paired_with``: the other view; then mean = its mean + noise of the same size (a positive that
    is closer than a random row on average, but not always the nearest: losses are not all 0).
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (*batch, n, d)
    scale = {"unit": 1 / math.sqrt(d), "official": 0.3, "spread": math.sqrt(5000.0 / d)}[regime]
    noise = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    mean = noise if paired_with is None else paired_with[0].double() + noise
    if regime == "unit":
        std = (0.5 + torch.rand(shape, generator=gen, dtype=torch.float64)) / math.sqrt(d)
        cov = std * std
    else:
        cov = 0.5 + torch.rand(shape, generator=gen, dtype=torch.float64)
    return mean.float(), cov.float()


def two_views(n, d, regime, seed, *, paired=True):
    """``[mean_a, cov_a, mean_b, cov_b]`` float32 ``[n, d]``."""
    mean_a, cov_a = gaussians(n, d, regime=regime, seed=seed)
    mean_b, cov_b = gaussians(n, d, regime=regime, seed=seed + 1000, paired_with=(mean_a, cov_a) if paired else None)
    return [mean_a, cov_a, mean_b, cov_b]


def regime_for(temperature):
    return "official" if temperature < 1e-3 else "unit"


def _seed(*parts) -> int:
    """A seed per test case, stable across runs (unlike ``hash`` of strings)."""
    return zlib.crc32(repr(parts).encode())


# --------------------------------------------------------------------------------------------------
# The reference itself equals the oracle (float64)
# --------------------------------------------------------------------------------------------------

# float64 expansion |x|^2 + |y|^2 - 2x.y vs direct differences: eps 1e-16 x a condition number of a
# few, times the logit scale (1e6 at T = 1e-6, on values ~1e4): relative errors ~1e-12 and below.
# 1e-9 is tight for float64 yet safe; the absolute floor (losses that cancel to ~0) is 1e-12 of the
# positive-logit term.
TOL64 = 1e-9
FLOOR64 = 1e-12


@pytest.mark.parametrize("similarity", ["inv", "neg"])
@pytest.mark.parametrize("temperature", [1.0, 0.1, 1e-6])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reference_infonce_equals_oracle(similarity, temperature, reduction):
    seed = _seed("ref", similarity, temperature, reduction)
    inputs = [t.double() for t in two_views(13, 9, regime_for(temperature), seed)]
    compare(
        lambda *a: reference.wasserstein_infonce(
            *a, temperature=temperature, similarity=similarity, reduction=reduction
        ),
        inputs,
        lambda *a: oracle_infonce(*a, temperature, similarity, reduction),
        seed,
        tol=TOL64,
        scale_fn=lambda *a: oracle_positive_logits(*a, temperature, similarity, reduction),
        floor=FLOOR64,
    )


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_reference_pairwise_equals_oracle(batch):
    m1, c1 = gaussians(7, 5, regime="official", batch=batch, seed=11)
    m2, c2 = gaussians(4, 5, regime="official", batch=batch, seed=12)
    compare(reference.pairwise_w2, [t.double() for t in (m1, c1, m2, c2)], oracle_w2, seed=5, tol=TOL64)


@pytest.mark.parametrize("temperature", [1.0, 1e-6])
def test_reference_alignment_uniformity_equals_oracle(temperature):
    inputs = [t.double() for t in two_views(10, 6, regime_for(temperature), seed=21)]
    compare(
        lambda *a: reference.wasserstein_alignment_uniformity(*a, temperature=temperature),
        inputs,
        lambda *a: oracle_alignment_uniformity(*a, temperature),
        seed=6,
        tol=TOL64,
    )


# --------------------------------------------------------------------------------------------------
# pairwise_w2
# --------------------------------------------------------------------------------------------------

PAIRWISE_SHAPES = [  # (batch, N, M, D)
    ((), 1, 1, 1),
    ((), 1, 5, 7),
    ((), 5, 1, 3),
    ((), 95, 96, 33),  # around the 96-row block (AVX2 builds)
    ((), 127, 129, 20),  # around the 128-row block (AVX-512 builds)
    ((), 97, 191, 16),
    ((), 193, 97, 100),  # D not a multiple of 16/32, N and M past two blocks
    ((), 31, 33, 32),  # around the 32-wide micro-tile
    ((3,), 5, 7, 3),
    ((2, 3), 9, 4, 17),
    # the attention's shapes: many short sequences (tiles cover only the micro-tiles in use)
    ((6,), 50, 50, 32),
    ((5,), 13, 50, 32),  # N not a multiple of the 6/8-row micro-tile, M past the 32-wide one
    ((4,), 1, 50, 32),  # a scoring pass's last query
    ((3,), 37, 9, 40),
]


def pairwise(backend):
    return lambda *a: mstein_fast.pairwise_w2(*a, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch,n,m,d", PAIRWISE_SHAPES)
def test_pairwise_w2(backend, batch, n, m, d, monkeypatch):
    monkeypatch.setenv("MSTEIN_FAST_POISON", "1")  # outputs and gradients start as NaN: unwritten ones show
    seed = _seed("pw", batch, n, m, d)
    m1, c1 = gaussians(n, d, regime="official", batch=batch, seed=seed)
    m2, c2 = gaussians(m, d, regime="official", batch=batch, seed=seed + 1)
    out = mstein_fast.pairwise_w2(m1, c1, m2, c2, backend=backend)
    assert out.shape == (*batch, n, m) and out.dtype == torch.float32
    compare(pairwise(backend), [m1, c1, m2, c2], oracle_w2, seed, tol=TOL32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pairwise_w2_non_contiguous(backend):
    gen = torch.Generator().manual_seed(7)
    n, m, d = 37, 29, 11
    mean1 = (0.3 * torch.randn(d, n, generator=gen)).t()  # transposed view
    cov1 = (0.5 + torch.rand(n, 2 * d, generator=gen))[:, ::2]  # strided slice
    mean2 = (0.3 * torch.randn(m + 3, d, generator=gen))[3:]  # offset slice
    cov2 = (0.5 + torch.rand(d, m, generator=gen)).t()
    assert not (mean1.is_contiguous() or cov1.is_contiguous() or cov2.is_contiguous())
    compare(pairwise(backend), [mean1, cov1, mean2, cov2], oracle_w2, seed=8, tol=TOL32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pairwise_w2_large_means(backend):
    # Means at the 1e3 scale, spread as much as they are large: W ~ 1e6 D, condition number ~2.
    m1, c1 = gaussians(21, 13, regime="official", seed=9)
    m2, c2 = gaussians(18, 13, regime="official", seed=10)
    compare(pairwise(backend), [m1 * 3e3, c1, m2 * 3e3, c2], oracle_w2, seed=9, tol=TOL32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pairwise_w2_large_offset_means(backend):
    # Means 1e3 + O(1): W = O(D) but |x|^2 ~ 1e6 D, so any float32 formula via |x|^2 + |y|^2 - 2x.y
    # loses ~6 digits (as the official code does): accept 2x the float32 reference's error.
    if backend == "torch":
        pytest.skip(SELF_BASELINE)
    m1, c1 = gaussians(21, 13, regime="official", seed=19)
    m2, c2 = gaussians(18, 13, regime="official", seed=20)
    compare(pairwise(backend), [m1 + 1e3, c1, m2 + 1e3, c2], oracle_w2, seed=19, baseline_fn=reference.pairwise_w2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pairwise_w2_tiny_covariances(backend):
    # Variances 1e-8..1e-6: sqrt(cov) ~ 1e-4..1e-3 and d/dcov = d/dstd / (2 sqrt(cov)) amplifies by
    # up to 5e3, uniformly across the tensor, so relative errors stay at float32 level.
    gen = torch.Generator().manual_seed(31)
    n, m, d = 40, 23, 9
    m1, m2 = 0.3 * torch.randn(n, d, generator=gen), 0.3 * torch.randn(m, d, generator=gen)
    c1 = 10 ** (-8 + 2 * torch.rand(n, d, generator=gen))
    c2 = 10 ** (-8 + 2 * torch.rand(m, d, generator=gen))
    compare(pairwise(backend), [m1, c1, m2, c2], oracle_w2, seed=31, tol=TOL32)


# --------------------------------------------------------------------------------------------------
# wasserstein_infonce
# --------------------------------------------------------------------------------------------------

INFONCE_SHAPES = [  # (N per view, D); the 2N rows go through 96-row (AVX2) or 128-row (AVX-512) blocks
    (1, 1),  # 2 rows: the only candidate is the positive, loss 0
    (1, 7),
    (3, 1),
    (5, 33),
    (47, 100),  # 2N = 94
    (48, 16),  # 2N = 96: exactly one block
    (49, 7),  # 2N = 98
    (63, 9),  # 2N = 126
    (64, 17),  # 2N = 128: exactly one AVX-512 block
    (65, 3),  # 2N = 130
    (95, 7),
    (96, 33),
    (97, 5),
    (191, 3),
    (193, 7),
]


def _keep_path(monkeypatch, keep) -> None:
    """Force the stored-matrix (``keep``) or the stream (recompute) path of the C++ InfoNCE."""
    if keep is not None:
        monkeypatch.setattr(infonce_module, "_KEEP_LIMIT_BYTES", 1 << 40 if keep else 0)


def _check_path_taken(rows: torch.Tensor, keep: bool) -> None:
    """When the autograd node exposes which path ran (``ctx.keep`` in the C++ glue), check it."""
    taken = getattr(rows.grad_fn, "keep", None)
    if taken is not None:
        assert taken == keep, f"expected the {'stored-matrix' if keep else 'stream'} path, the other one ran"


def infonce_case(backend, inputs, temperature, similarity, reduction, seed, keep=None):
    """Compare the public op with the oracle; at T < 1e-3 by the 2x-float32-reference rule."""

    def fn(*a):
        out = mstein_fast.wasserstein_infonce(
            *a, temperature=temperature, similarity=similarity, reduction=reduction, backend=backend
        )
        if backend == "cpp" and keep is not None and reduction == "none":
            _check_path_taken(out, keep)
        return out

    def ref32(*a):
        return reference.wasserstein_infonce(*a, temperature=temperature, similarity=similarity, reduction=reduction)

    def oracle(*a):
        return oracle_infonce(*a, temperature, similarity, reduction)

    def positive_logits(*a):
        return oracle_positive_logits(*a, temperature, similarity, reduction)

    kwargs = {"scale_fn": positive_logits}
    if temperature < 1e-3 and backend == "torch":
        pytest.skip(SELF_BASELINE)
    if temperature < 1e-3:
        # logits up to 1e6: float32 rounding of W (~1e-7 |x|^2) moves logits by ~0.1..1, so even the
        # float32 reference is off by ~1e-6..1e-3 relative: accept 2x its error plus the floors.
        kwargs["baseline_fn"] = ref32
    else:
        kwargs["tol"] = TOL32
    return compare(fn, inputs, oracle, seed, **kwargs)


@pytest.mark.parametrize("backend,keep", BACKEND_PATHS)
@pytest.mark.parametrize("similarity", ["inv", "neg"])
@pytest.mark.parametrize("temperature", [1.0, 0.1, 1e-6])
@pytest.mark.parametrize("n,d", INFONCE_SHAPES)
def test_infonce(backend, keep, similarity, temperature, n, d, monkeypatch):
    _keep_path(monkeypatch, keep)
    seed = _seed("nce", similarity, temperature, n, d)
    inputs = two_views(n, d, regime_for(temperature), seed)
    infonce_case(backend, inputs, temperature, similarity, "none", seed, keep=keep)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity", ["inv", "neg"])
@pytest.mark.parametrize("temperature", [1.0, 1e-6])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_infonce_reductions(backend, similarity, temperature, reduction):
    seed = _seed("red", similarity, temperature, reduction)
    inputs = two_views(37, 11, regime_for(temperature), seed)
    out = mstein_fast.wasserstein_infonce(*inputs, reduction=reduction, backend=backend)
    assert out.shape == ((74,) if reduction == "none" else ()) and out.dtype == torch.float32
    infonce_case(backend, inputs, temperature, similarity, reduction, seed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_infonce_rows_of_view_a_first(backend):
    # reduction="none" gives [losses of A's rows; losses of B's rows]: swapping the views swaps halves.
    inputs = two_views(9, 4, "unit", seed=41)
    ab = mstein_fast.wasserstein_infonce(*inputs, reduction="none", backend=backend)
    ba = mstein_fast.wasserstein_infonce(*inputs[2:], *inputs[:2], reduction="none", backend=backend)
    torch.testing.assert_close(ba, torch.cat([ab[9:], ab[:9]]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,keep", BACKEND_PATHS)
@pytest.mark.parametrize("similarity,temperature", [("inv", 1e-6), ("neg", 1.0), ("inv", 0.1)])
def test_infonce_bigger(backend, keep, similarity, temperature, monkeypatch):
    # 2N = 600 rows: several 96-row blocks per side and many block pairs per thread, both paths.
    _keep_path(monkeypatch, keep)
    seed = _seed("big", similarity, temperature)
    inputs = two_views(300, 24, regime_for(temperature), seed)
    infonce_case(backend, inputs, temperature, similarity, "none", seed, keep=keep)


@pytest.mark.slow
def test_keep_limit_env_var_is_read():
    # MSTEIN_FAST_KEEP_MATRIX_MB=0 makes every problem take the stream path (no stored matrix).
    code = "from mstein_fast.ops import _wasserstein_infonce as m; print(m._keep_limit_bytes())"
    env = dict(os.environ, MSTEIN_FAST_KEEP_MATRIX_MB="0")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [1.0, 1e-6])
def test_infonce_non_contiguous(backend, temperature):
    gen = torch.Generator().manual_seed(61)
    n, d = 23, 10
    mean_a = (torch.randn(d, n, generator=gen) / math.sqrt(d)).t()  # transposed view
    cov_a = ((0.5 + torch.rand(n, 3 * d, generator=gen)) / d)[:, 1::3]  # strided slice
    mean_b = mean_a + (torch.randn(n + 2, d, generator=gen) / math.sqrt(d))[2:]  # offset slice
    cov_b = ((0.5 + torch.rand(d, n, generator=gen)) / d).t()
    assert not any(t.is_contiguous() for t in (mean_a, cov_a, cov_b))
    infonce_case(backend, [mean_a, cov_a, mean_b, cov_b], temperature, "inv", "none", seed=62)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity", ["inv", "neg"])
def test_infonce_large_means(backend, similarity):
    # Means at the 1e3 scale and spread: "neg" logits ~ -1e6 D (a saturated softmax: the losses are
    # gaps between W values ~1e7, each rounded at ~1 in float32), "inv" logits ~ 1e-7 (a nearly
    # uniform softmax with gradients ~1e-13). Ill-conditioned like T = 1e-6: the float32 rule.
    if backend == "torch":
        pytest.skip(SELF_BASELINE)
    inputs = two_views(17, 6, "official", seed=71)
    inputs = [inputs[0] * 3e3, inputs[1], inputs[2] * 3e3, inputs[3]]
    compare(
        lambda *a: mstein_fast.wasserstein_infonce(*a, similarity=similarity, reduction="none", backend=backend),
        inputs,
        lambda *a: oracle_infonce(*a, 1.0, similarity, "none"),
        seed=71,
        baseline_fn=lambda *a: reference.wasserstein_infonce(*a, similarity=similarity, reduction="none"),
        scale_fn=lambda *a: oracle_positive_logits(*a, 1.0, similarity, "none"),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [1.0, 1e-6])
def test_infonce_tiny_covariances(backend, temperature):
    # Variances 1e-8..1e-6 (d/dcov amplified up to 5e3) with O(1) W from the means.
    gen = torch.Generator().manual_seed(81)
    n, d = 31, 12
    mean_a = torch.randn(n, d, generator=gen) / math.sqrt(d)
    mean_b = mean_a + torch.randn(n, d, generator=gen) / math.sqrt(d)
    cov_a = 10 ** (-8 + 2 * torch.rand(n, d, generator=gen))
    cov_b = 10 ** (-8 + 2 * torch.rand(n, d, generator=gen))
    infonce_case(backend, [mean_a, cov_a, mean_b, cov_b], temperature, "inv", "none", seed=82)


@pytest.mark.parametrize("backend,keep", BACKEND_PATHS)
def test_infonce_denormal_regime(backend, keep, monkeypatch):
    # "inv", T = 1e-6, W ~ 1e4: logits ~ 100 differing by tens, so most softmax weights and backward
    # terms underflow float32 and some are denormal. The loss must stay finite and match.
    _keep_path(monkeypatch, keep)
    n, d, temperature = 150, 16, 1e-6
    inputs = two_views(n, d, "spread", seed=91, paired=False)
    with torch.no_grad():  # the inputs are in the intended regime
        mean = torch.cat([inputs[0], inputs[2]]).double()
        cov = torch.cat([inputs[1], inputs[3]]).double()
        logits = 1.0 / (1.0 + oracle_w2(mean, cov, mean, cov)) / temperature
        weights = torch.softmax(logits.fill_diagonal_(-math.inf), dim=1)[~torch.eye(2 * n, dtype=torch.bool)]
        tiny = torch.finfo(torch.float32).tiny
        assert (weights < tiny).double().mean() > 0.5, "most weights should underflow float32's normal range"
        assert ((weights < tiny) & (weights > 1e-45)).double().mean() > 0.01, "some weights should be denormal"
    infonce_case(backend, inputs, temperature, "inv", "none", seed=92, keep=keep)


# --------------------------------------------------------------------------------------------------
# wasserstein_alignment_uniformity
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [1.0, 0.1, 1e-6])
@pytest.mark.parametrize("n,d", [(1, 1), (5, 7), (97, 33)])
def test_alignment_uniformity(backend, temperature, n, d):
    seed = _seed("au", temperature, n, d)
    inputs = two_views(n, d, regime_for(temperature), seed)

    def fn(*a):
        return mstein_fast.wasserstein_alignment_uniformity(*a, temperature=temperature, backend=backend)

    def oracle(*a):
        return oracle_alignment_uniformity(*a, temperature)

    def ref32(*a):
        return reference.wasserstein_alignment_uniformity(*a, temperature=temperature)

    if temperature < 1e-3 and backend == "torch":
        pytest.skip(SELF_BASELINE)
    if temperature < 1e-3:  # uniformity ~ -W_min / T: W's float32 rounding amplified by 1e6
        compare(fn, inputs, oracle, seed, baseline_fn=ref32)
    else:
        compare(fn, inputs, oracle, seed, tol=TOL32)


# --------------------------------------------------------------------------------------------------
# Other dtypes and gradcheck
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_cpp(dtype):
    # The C++ path computes in float32 and rounds outputs and gradients to the input dtype, whose
    # own rounding (bf16: 2^-9 relative, fp16: 2^-12) bounds the error: 1e-2 / 2e-3 with margin.
    # (The "torch" backend computes in the half dtype itself: not compared here.)
    if not HAS_CPP:
        pytest.skip("C++ extension mstein_fast._C not built/importable")
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    inputs = [t.to(dtype) for t in two_views(19, 6, "unit", seed=101)]
    compare(
        lambda *a: mstein_fast.wasserstein_infonce(*a, reduction="none", backend="cpp"),
        inputs,
        lambda *a: oracle_infonce(*a, 1.0, "inv", "none"),
        seed=101,
        tol=tol,
    )
    compare(pairwise("cpp"), inputs, oracle_w2, seed=102, tol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_inputs_match_oracle(backend):
    # float64 inputs are computed in float64 (the C++ backend routes them to the reference).
    inputs = [t.double() for t in two_views(11, 5, "official", seed=111)]
    out = mstein_fast.wasserstein_infonce(*inputs, temperature=1e-6, reduction="none", backend=backend)
    assert out.dtype == torch.float64
    compare(
        lambda *a: mstein_fast.wasserstein_infonce(*a, temperature=1e-6, reduction="none", backend=backend),
        inputs,
        lambda *a: oracle_infonce(*a, 1e-6, "inv", "none"),
        seed=111,
        tol=TOL64,
        scale_fn=lambda *a: oracle_positive_logits(*a, 1e-6, "inv", "none"),
        floor=FLOOR64,
    )


def _gradcheck_inputs(shapes, seed):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        out.append((0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)).requires_grad_())
        # variances >= 0.5: the finite-difference step (1e-6) never leaves the domain cov > 0
        out.append((0.5 + torch.rand(shape, generator=gen, dtype=torch.float64)).requires_grad_())
    return out


# gradcheck needs float64, which the C++ kernels do not compute (float64 inputs go to the
# reference): these check the reference's autograd only. The C++ gradients (float32) are checked
# against the float64 oracle's autograd by every compare() case above, and in
# test_numerics_edges.py.
GRADCHECK_BACKENDS = ["torch"]


@pytest.mark.parametrize("backend", GRADCHECK_BACKENDS)
def test_gradcheck_pairwise_w2(backend):
    inputs = _gradcheck_inputs([(2, 3, 4), (2, 5, 4)], seed=121)
    assert torch.autograd.gradcheck(pairwise(backend), inputs)


@pytest.mark.parametrize("backend", GRADCHECK_BACKENDS)
@pytest.mark.parametrize("similarity", ["inv", "neg"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_infonce(backend, similarity, reduction):
    inputs = _gradcheck_inputs([(3, 4), (3, 4)], seed=122)
    assert torch.autograd.gradcheck(
        lambda *a: mstein_fast.wasserstein_infonce(
            *a, temperature=0.5, similarity=similarity, reduction=reduction, backend=backend
        ),
        inputs,
    )


@pytest.mark.parametrize("backend", GRADCHECK_BACKENDS)
def test_gradcheck_alignment_uniformity(backend):
    inputs = _gradcheck_inputs([(4, 3), (4, 3)], seed=123)
    assert torch.autograd.gradcheck(
        lambda *a: mstein_fast.wasserstein_alignment_uniformity(*a, temperature=0.7, backend=backend), inputs
    )
