"""One edge-case suite for every implementation of the Wasserstein InfoNCE and W2 (one
numerics core): the C++ kernels, the reference, the Triton kernels (interpreter on a CPU) and the
distributed tiles (the C++ and Triton rectangular primitives and the PyTorch tiles, run in-process
as one rank), against a float64 oracle written from the conventions of :mod:`mstein_fast.numerics` (variances floored at 1e-24, no
gradient below the floor, the row loss ``log(1 + others * exp(gap))``).

Cases: variances at zero / below the floor, means far from the origin, tiny and huge
temperatures, a softmax saturated on the positive. The reference ("torch") defines the semantics:
it runs in float64 and must match the oracle to float64 rounding; the kernels run in float32.
"""

from __future__ import annotations

import math

import pytest
import torch

import mstein_fast
from mstein_fast.ops._wasserstein_infonce import distributed
from mstein_fast.numerics import COV_FLOOR, infonce_row_loss

pytestmark = pytest.mark.core  # (docs/development.md: test markers)

HAS_CPP = "cpp" in mstein_fast.available_backends()
HAS_TRITON = "triton" in mstein_fast.available_backends() or __import__("os").environ.get("TRITON_INTERPRET") == "1"
INTERPRETING = __import__("os").environ.get("TRITON_INTERPRET") == "1"


def _needs(ok: bool, what: str):
    return pytest.mark.skipif(not ok, reason=f"{what} not available here")


BACKENDS = [
    pytest.param("cpp", marks=_needs(HAS_CPP, "the C++ extension")),
    "torch",
    pytest.param("triton", marks=_needs(HAS_TRITON, "Triton (GPU or interpreter)")),
    pytest.param("distributed-cpp", marks=_needs(HAS_CPP, "the C++ extension")),
    "distributed-torch",
    pytest.param("distributed-triton", marks=_needs(HAS_TRITON, "Triton (GPU or interpreter)")),
]


def device_of(backend: str) -> torch.device:
    """Where ``backend`` runs: the Triton kernels on the GPU, unless Triton's interpreter runs them
    on the CPU; everything else on the CPU."""
    on_gpu = backend.endswith("triton") and not INTERPRETING and torch.cuda.is_available()
    return torch.device("cuda" if on_gpu else "cpu")


# -- the oracle (float64, direct formulas) ---------------------------------------------------------

def oracle_rows(mean_a, cov_a, mean_b, cov_b, temperature, similarity):
    mean, cov = torch.cat([mean_a, mean_b]), torch.cat([cov_a, cov_b])
    x = torch.cat([mean, torch.sqrt(torch.clamp(cov, min=COV_FLOOR))], -1)
    w = ((x.unsqueeze(1) - x.unsqueeze(0)) ** 2).sum(-1)
    logits = (1.0 / (1.0 + w) if similarity == "inv" else -w) / temperature
    n2 = logits.shape[0]
    rows = torch.arange(n2)
    partner = torch.cat([rows[n2 // 2:], rows[:n2 // 2]])
    positive = logits[rows, partner]
    others = logits.masked_fill(torch.eye(n2, dtype=torch.bool), -math.inf)  # not itself
    others[rows, partner] = -math.inf  # nor its positive
    top = torch.maximum(others.max(1).values, positive).detach()
    return infonce_row_loss(top, torch.exp(others - top.unsqueeze(1)).sum(1), positive)


def rows_of(backend, inputs, temperature, similarity):
    """The backend's per-row losses of ``inputs`` (moved to the backend's device), back on the CPU."""
    device = device_of(backend)
    return _rows_on(backend, [t.to(device) for t in inputs], temperature, similarity).cpu()


def _rows_on(backend, inputs, temperature, similarity):
    if backend.startswith("distributed"):
        n = inputs[0].shape[0]
        return distributed._DistributedInfoNCE.apply(*inputs, temperature, similarity, None,
                                                     backend.split("-")[1], [n])
    return mstein_fast.wasserstein_infonce(*inputs, temperature=temperature, similarity=similarity,
                                           reduction="none", backend=backend)


def run(fn, inputs, upstream):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(upstream.to(out.dtype))
    return out.detach(), [t.grad for t in leaves]


def check(backend, inputs64, temperature, similarity, tol32, seed=0):
    """Rows and the four gradients of ``backend`` (float64 for the reference, float32 for the
    kernels) against the oracle: relative RMS error <= tol (``tol32`` for float32, 1e-10 for the
    float64 reference), with an absolute floor of 1e-6 (float64: 1e-12) of the positive-logit term
    (the size of what cancels when a row's loss is ~0)."""
    dtype = torch.float64 if backend == "torch" else torch.float32
    tol, floor = (1e-10, 1e-12) if dtype == torch.float64 else (tol32, 1e-6)
    inputs = [t.to(dtype) for t in inputs64]
    upstream = torch.randn(2 * inputs64[0].shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    want, want_g = run(lambda *a: oracle_rows(*a, temperature, similarity), [t.double() for t in inputs], upstream)
    got, got_g = run(lambda *a: rows_of(backend, a, temperature, similarity), inputs, upstream)
    scale_rows, scale_g = run(lambda *a: positive_logits(*a, temperature, similarity), [t.double() for t in inputs],
                              upstream)
    names = ["rows", "d mean_a", "d cov_a", "d mean_b", "d cov_b"]
    errors = {}
    for name, g, w, s in zip(names, [got, *got_g], [want, *want_g], [scale_rows, *scale_g]):
        assert g.dtype == dtype, f"{name}: dtype {g.dtype}"
        assert torch.isfinite(g).all(), f"{backend} {name}: non-finite values"
        diff = (g.double() - w).norm().item()
        allowed = tol * w.norm().item() + floor * s.norm().item()
        errors[name] = diff / max(w.norm().item(), 1e-300)
        assert diff <= allowed, f"{backend} {name}: ||a - b|| = {diff:.3g} > {allowed:.3g} (relative {errors[name]:.3g})"
    return got_g


def positive_logits(mean_a, cov_a, mean_b, cov_b, temperature, similarity):
    mean, cov = torch.cat([mean_a, mean_b]), torch.cat([cov_a, cov_b])
    other_mean, other_cov = torch.cat([mean_b, mean_a]), torch.cat([cov_b, cov_a])
    w = ((mean - other_mean) ** 2).sum(-1) + ((torch.sqrt(torch.clamp(cov, min=COV_FLOOR))
                                               - torch.sqrt(torch.clamp(other_cov, min=COV_FLOOR))) ** 2).sum(-1)
    return (1.0 / (1.0 + w) if similarity == "inv" else -w) / temperature


def views(n, d, seed, mean_scale=1.0, offset=0.0, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    mean_a = torch.randn(n, d, generator=g, dtype=torch.float64) * mean_scale / math.sqrt(d) + offset
    mean_b = mean_a + noise * torch.randn(n, d, generator=g, dtype=torch.float64) * mean_scale / math.sqrt(d)
    cov_a = (0.5 + torch.rand(n, d, generator=g, dtype=torch.float64)) / d
    cov_b = (0.5 + torch.rand(n, d, generator=g, dtype=torch.float64)) / d
    # round to float32 once, so that every backend sees the same values
    return [t.float().double() for t in (mean_a, cov_a, mean_b, cov_b)]


# -- the cases -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_variances_below_the_floor_get_no_gradient(backend):
    inputs = views(13, 9, seed=1)
    cov_a, cov_b = inputs[1], inputs[3]
    cov_a[::3, ::2] = 1e-36  # (the ops refuse 0: variances must be > 0)
    cov_a[1::4, 1::3] = 1e-30
    cov_b[::5, 3] = 1e-26
    cov_b[2, :] = 1e-22  # above the floor: a real (large) gradient
    grads = check(backend, inputs, 0.5, "inv", tol32=2e-5)
    for g, cov in ((grads[1], cov_a), (grads[3], cov_b)):
        below = cov < COV_FLOOR
        assert below.any() and (g[below] == 0).all(), f"{backend}: nonzero gradient below the floor"
        assert (g[~below] != 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity", ["inv", "neg"])
def test_means_far_from_the_origin(backend, similarity):
    # means 300 + O(1): |x|^2 ~ 1e5 D while W = O(1): the expansion |x|^2 + |y|^2 - 2 x.y would
    # lose ~5 digits in float32; every kernel removes the common offset first (translation
    # invariance), leaving float32 rounding of O(1) values: 2e-4 covers the 1/T = 10 amplification
    inputs = views(11, 7, seed=2, offset=300.0)
    check(backend, inputs, 0.1, similarity, tol32=2e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature,similarity,tol32", [(1e-8, "inv", 1e-2), (1e4, "inv", 2e-5), (1e4, "neg", 2e-5)])
def test_tiny_and_huge_temperatures(backend, temperature, similarity, tol32):
    # T = 1e-8: logits ~1e8 / (1 + W) differ by ~1e6 per unit of W: float32 rounding of W (~1e-7 x
    # |x|^2) moves them by ~10, so only a 1e-2 relative agreement (with the positive-logit floor) is
    # meaningful. T = 1e4: a nearly uniform softmax, gradients ~1e-4 of the usual: plain float32.
    inputs = views(9, 6, seed=3)
    check(backend, inputs, temperature, similarity, tol32=tol32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_saturated_on_the_positive(backend):
    # positives 1e-3 apart, other rows ~10 apart, T = 0.01 with "neg": every other candidate's
    # weight is ~exp(-1000) = 0 and the losses are ~0: the cancellation-free row loss must give
    # them (and zero-ish gradients) without NaN, and the larger ones accurately
    inputs = views(10, 5, seed=4, mean_scale=30.0, noise=1e-4)
    rows = rows_of(backend, [t.to(torch.float64 if backend == "torch" else torch.float32) for t in inputs], 0.01, "neg")
    assert torch.isfinite(rows).all() and (rows >= 0).all()
    check(backend, inputs, 0.01, "neg", tol32=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [1.0, 1e-3])
def test_nearly_saturated_rows_keep_their_small_loss_and_gradient(backend, temperature):
    # every row's softmax is 1 - ~1e-8 on its positive (W to the positive ~1, to the 8 others ~22,
    # "neg" logits -W / T with the geometry scaled by T): the losses and all gradients are ~1e-8 of
    # their usual size, below float32's resolution of 1 - softmax. A kernel that forms softmax - 1
    # at the label in float32 loses that term entirely (it was the C++ backward's defect); the
    # cancellation-free form keeps every value to float32 rounding of the logits (~1e-5 relative
    # here), so the check is relative to these tiny values, with no absolute floor.
    n, d, s = 5, 7, 3.3
    g = torch.Generator().manual_seed(11)
    scale = math.sqrt(temperature)  # W scales with the square of the geometry, the logits with 1 / T
    mean_a = torch.zeros(n, d, dtype=torch.float64)
    mean_a[torch.arange(n), torch.arange(n)] = s
    step = torch.randn(n, d, generator=g, dtype=torch.float64)
    mean_b = mean_a + step / step.norm(dim=1, keepdim=True)
    cov_a = 0.4 + 0.2 * torch.rand(n, d, generator=g, dtype=torch.float64)
    cov_b = 0.4 + 0.2 * torch.rand(n, d, generator=g, dtype=torch.float64)
    inputs = [t.float().double() for t in (mean_a * scale, cov_a * temperature, mean_b * scale, cov_b * temperature)]
    dtype = torch.float64 if backend == "torch" else torch.float32
    upstream = 1.0 + torch.rand(2 * n, generator=g, dtype=torch.float64)
    want, want_g = run(lambda *a: oracle_rows(*a, temperature, "neg"), inputs, upstream)
    assert 1e-10 < want.min() and want.max() < 1e-6  # the regime of the test: saturated, not exactly
    got, got_g = run(lambda *a: rows_of(backend, a, temperature, "neg"), [t.to(dtype) for t in inputs], upstream)
    # float64 reference (log_softmax): ~2e-9 measured; float32 kernels: ~3e-6 measured (W rounded to
    # float32 at |x|^2 ~ 11 moves exp(-W / T) by a few 1e-6 relative)
    tol = 1e-7 if dtype == torch.float64 else 1e-4
    for name, a, b in zip(["rows", "d mean_a", "d cov_a", "d mean_b", "d cov_b"], [got, *got_g], [want, *want_g]):
        err = ((a.double() - b).norm() / b.norm()).item()
        assert err <= tol, f"{backend} {name}: relative error {err:.3g} > {tol:g}"
