"""The Triton backend through the public API, values and all four gradients, against float64.

Without a GPU, ``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` and the kernels run on CPU tensors
under Triton's interpreter (one fixed config of 64-wide tiles, ~1000x slower than torch): shapes
stay small but are chosen to hurt: N = 1, sizes straddling a 64 tile (2N = 66, 140), D not a
multiple of the 64-wide K block (2D = 74), batch dims, non-contiguous inputs. With a GPU the same
tests run on CUDA tensors (autotuned configs) and bf16 is tested too.

The oracle is ``mstein_fast.reference`` in float64 on the same input values, with gradients by
autograd under a random upstream gradient. Errors are relative RMS errors ``||a - b|| / ||b||``
with a NaN check; output buffers are NaN-poisoned (``MSTEIN_FAST_POISON=1``) so that entries a
kernel forgets to write fail.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

pytest.importorskip("triton")

import mstein_fast
from mstein_fast import reference, testing

pytestmark = pytest.mark.core  # (docs/development.md: test markers)

triton_infonce = pytest.importorskip("mstein_fast.kernels.wasserstein_infonce")
# the Triton paths of the ops (importing them registers mstein_fast::*_triton_* with torch.library)
from mstein_fast.ops._pairwise_w2 import triton as pairwise_triton  # noqa: E402
from mstein_fast.ops._wasserstein_infonce import triton as _infonce_triton  # noqa: E402, F401

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="bf16 tl.dot is wrong in the Triton interpreter: GPU only")

# Tolerances: mstein_fast.testing (TOL, ILL_FLOOR and its module docstring). For these shapes:
# float32 rounding (u = 6e-8) of W (the kernels expand |x|^2 + |y|^2 - 2 x.y on centered rows)
# over 2D <= 260 products and 2N <= 140 softmax terms: measured <= 2e-6 for the kernels against
# the fixed 1e-5. The float32 reference itself reaches 1e-4 on InfoNCE gradients here (sharp
# softmaxes amplify its logit errors), which the kernels must not exceed by more than 2x either;
# at T = 1e-6 (an ulp of a 1e6 logit is 0.06: ill-conditioned in float32) the 2x rule is the only one.


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("MSTEIN_FAST_POISON", "1")


def gaussians(n: int, d: int, *, batch=(), dtype=torch.float32, seed=0, offset=0.0, contiguous=True):
    """``[*batch, n, d]`` means ``randn / sqrt(d) + offset`` and variances ``(ELU(randn) + 1) / d``
    (the models' activation), scaled so that W is O(1) whatever d (softmaxes neither flat nor
    saturated). An ``offset`` shared by all means leaves W unchanged but makes the float32
    expansion ``|x|^2 + |y|^2 - 2 x.y`` cancel (ill-conditioned, as trained embeddings can be).

    ``contiguous=False`` returns views with a column stride of 2 (every other column of a wider tensor).
    """
    gen = torch.Generator().manual_seed(seed)
    width = d if contiguous else 2 * d
    mean = torch.randn(*batch, n, width, generator=gen, dtype=torch.float64) / math.sqrt(d) + offset
    cov = (torch.nn.functional.elu(torch.randn(*batch, n, width, generator=gen, dtype=torch.float64)) + 1.0) / d
    mean, cov = mean.to(DEVICE, dtype), cov.to(DEVICE, dtype)
    if not contiguous:
        mean, cov = mean[..., ::2], cov[..., ::2]
    return mean, cov


def check(fn, ref_fn, inputs, *, fixed=True, relative=True, seed=0,
          names=("value", "d mean1", "d cov1", "d mean2", "d cov2")):
    """:func:`mstein_fast.testing.compare` of ``fn(*inputs)`` (output and 4 gradients, random
    upstream) with ``ref_fn`` in float64: the fixed tolerance of the dtype (if ``fixed``) or (if
    ``relative``) twice the error of ``ref_fn`` run in the inputs' dtype plus its floor."""
    dtype = inputs[0].dtype
    errors = testing.compare(fn, ref_fn, inputs, seed=seed + 7, tol=testing.TOL[dtype] if fixed else None,
                             baseline_fn=ref_fn if relative else None, names=names)
    if os.environ.get("SHOW_ERRORS"):
        print(" ".join(f"ERR {name} {dtype} {err:.3g}" for name, err in errors.items()))


# --------------------------------------------------------------------------------------------------
# pairwise_w2
# --------------------------------------------------------------------------------------------------


def pairwise(*args):
    return mstein_fast.pairwise_w2(*args, backend="triton")


@pytest.mark.parametrize(
    "n, m, d, batch, contiguous",
    [
        (1, 1, 1, (), True),  # N = 1, the smallest
        (1, 67, 37, (), True),  # one row; M straddles 64; 2D = 74 (two K blocks, ragged)
        (65, 63, 32, (), True),  # N straddles a tile; 2D = 64, exactly one K block
        (70, 33, 20, (), False),  # non-contiguous inputs
        (9, 13, 5, (2, 3), True),  # batch dims
        (17, 6, 7, (2,), False),
    ],
)
def test_pairwise_w2_float32(n, m, d, batch, contiguous):
    mean1, cov1 = gaussians(n, d, batch=batch, seed=1, contiguous=contiguous)
    mean2, cov2 = gaussians(m, d, batch=batch, seed=2, contiguous=contiguous)
    check(pairwise, reference.pairwise_w2, [mean1, cov1, mean2, cov2], relative=False)


def test_pairwise_w2_float64():
    mean1, cov1 = gaussians(40, 37, dtype=torch.float64, seed=3)
    mean2, cov2 = gaussians(70, 37, dtype=torch.float64, seed=4)
    check(pairwise, reference.pairwise_w2, [mean1, cov1, mean2, cov2], relative=False)


def test_pairwise_w2_float16():
    mean1, cov1 = gaussians(40, 37, dtype=torch.float16, seed=5)
    mean2, cov2 = gaussians(66, 37, dtype=torch.float16, seed=6)
    check(pairwise, reference.pairwise_w2, [mean1, cov1, mean2, cov2])


@needs_gpu
def test_pairwise_w2_bfloat16():
    mean1, cov1 = gaussians(300, 64, dtype=torch.bfloat16, seed=7)
    mean2, cov2 = gaussians(200, 64, dtype=torch.bfloat16, seed=8)
    check(pairwise, reference.pairwise_w2, [mean1, cov1, mean2, cov2])


def test_pairwise_w2_variance_below_clamp():
    """Variances under the 1e-24 floor: W uses the floored variance, so they get no gradient (as in
    the reference and every other backend: mstein_fast.numerics)."""
    mean1, cov1 = gaussians(20, 9, seed=9)
    mean2, cov2 = gaussians(30, 9, seed=10)
    cov1[::3, ::2] = 1e-30
    cov2[1::4, 1::3] = 1e-26
    check(pairwise, reference.pairwise_w2, [mean1, cov1, mean2, cov2], relative=False)


# --------------------------------------------------------------------------------------------------
# wasserstein_infonce
# --------------------------------------------------------------------------------------------------


def infonce(temperature, similarity, reduction, backend):
    def fn(mean_a, cov_a, mean_b, cov_b):
        return mstein_fast.wasserstein_infonce(mean_a, cov_a, mean_b, cov_b, temperature=temperature,
                                               similarity=similarity, reduction=reduction, backend=backend)

    return fn


def reference_infonce(temperature, similarity, reduction):
    def fn(mean_a, cov_a, mean_b, cov_b):
        return reference.wasserstein_infonce(mean_a, cov_a, mean_b, cov_b, temperature=temperature,
                                             similarity=similarity, reduction=reduction)

    return fn


def check_infonce(n, d, temperature, similarity, reduction, *, dtype=torch.float32, seed=0, contiguous=True,
                  offset=0.0, mix=0.4):
    """View B = (1 - mix) A + mix (independent draws): near A, as augmentations of the same sequences
    are, so that the positives matter (``mix=1``: independent views, positives often not the nearest)."""
    mean_a, cov_a = gaussians(n, d, dtype=dtype, seed=seed, contiguous=contiguous, offset=offset)
    mean_b, cov_b = gaussians(n, d, dtype=dtype, seed=seed + 100, contiguous=contiguous, offset=offset)
    mean_b = ((1 - mix) * mean_a + mix * mean_b).to(dtype)
    cov_b = ((1 - mix) * cov_a + mix * cov_b).to(dtype)
    check(infonce(temperature, similarity, reduction, "triton"), reference_infonce(temperature, similarity, reduction),
          [mean_a, cov_a, mean_b, cov_b], fixed=temperature >= 1e-3, seed=seed,
          names=("loss", "d mean_a", "d cov_a", "d mean_b", "d cov_b"))


# the similarity maps and the temperatures of docs/maths.md (the official one is "inv" at 1e-6)
MAPS = [("inv", 1.0), ("inv", 0.1), ("neg", 1.0), ("neg", 0.1)]


@pytest.mark.parametrize("similarity, temperature", MAPS)
@pytest.mark.parametrize(
    "n, d, reduction, contiguous",
    [
        (1, 3, "none", True),  # 2N = 2: the positive is the only candidate (loss and gradients 0)
        (33, 37, "mean", True),  # 2N = 66 straddles a 64 tile, 2D = 74 two ragged K blocks
        (70, 20, "none", False),  # 2N = 140: three row and column blocks; non-contiguous
        (8, 64, "sum", True),  # 2D = 128, exact K blocks
    ],
)
def test_infonce_float32(n, d, reduction, contiguous, similarity, temperature):
    check_infonce(n, d, temperature, similarity, reduction, contiguous=contiguous, seed=n + d)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("n, d", [(33, 37), (70, 16)])
def test_infonce_tiny_temperature(n, d, reduction):
    """The official setting, "inv" at T = 1e-6: logits up to 1e6, nearly all softmax weights and
    gradient terms underflow. The problem is ill-conditioned in float32 (an ulp of a 1e6 logit is
    0.06), hence the 2x-the-float32-reference rule. Independent views (else every row's softmax
    sits on its positive and all gradients are 0), with and without a common offset of the means."""
    check_infonce(n, d, 1e-6, "inv", reduction, seed=n, mix=1.0)
    check_infonce(n, d, 1e-6, "inv", reduction, seed=n + 1, mix=1.0, offset=3.0)


@pytest.mark.parametrize("similarity, temperature", [("inv", 0.1), ("neg", 1.0), ("inv", 1e-6)])
def test_infonce_triangle_tiles(monkeypatch, similarity, temperature):
    """The backward for 2D > 256 (tiles i <= j with atomics), forced here for small D."""
    monkeypatch.setattr(triton_infonce, "_MAX_REGISTER_K", 0)
    mix = 1.0 if temperature < 1e-3 else 0.4
    check_infonce(70, 37, temperature, similarity, "none", seed=5, mix=mix)
    check_infonce(33, 5, temperature, similarity, "mean", seed=6, contiguous=False, mix=mix)


def test_infonce_wide_rows():
    """2D = 260 > 256 picks the triangle-tile backward by itself."""
    check_infonce(20, 130, 0.1, "inv", "sum", seed=7)


@pytest.mark.parametrize("backward_rows", [True, False])
def test_infonce_column_split(monkeypatch, backward_rows):
    """Columns split over several programs (as on a GPU with few row blocks) and merged: ranges of
    40 columns, not a multiple of the 64 tile."""
    monkeypatch.setattr(triton_infonce, "_column_split", lambda *args: 40)
    if not backward_rows:
        monkeypatch.setattr(triton_infonce, "_MAX_REGISTER_K", 0)
    check_infonce(70, 20, 0.1, "inv", "none", seed=8)
    check_infonce(33, 37, 1e-6, "inv", "mean", seed=9, mix=1.0)


def test_infonce_float64():
    check_infonce(33, 37, 0.1, "inv", "none", dtype=torch.float64)
    check_infonce(20, 9, 1.0, "neg", "mean", dtype=torch.float64)
    check_infonce(20, 150, 1.0, "neg", "mean", dtype=torch.float64)  # 2D > 256: the triangle-tile backward


@pytest.mark.parametrize("similarity, temperature", [("inv", 1.0), ("neg", 0.1)])
def test_infonce_float16(similarity, temperature):
    check_infonce(33, 37, temperature, similarity, "mean", dtype=torch.float16)


@needs_gpu
@pytest.mark.parametrize("similarity, temperature", [("inv", 1.0), ("neg", 0.1), ("inv", 0.1)])
def test_infonce_bfloat16(similarity, temperature):
    check_infonce(300, 64, temperature, similarity, "mean", dtype=torch.bfloat16)
    check_infonce(100, 300, temperature, similarity, "none", dtype=torch.bfloat16)


@pytest.mark.parametrize("similarity, temperature", [("neg", 0.1), ("inv", 1e-6)])
def test_infonce_no_grad_far_apart(similarity, temperature):
    """Forward alone (no autograd graph); the views far apart (W ~ 1e4 across, ~1 within a view):
    "neg" logits ~ -1e5 at T = 0.1, "inv" ones from ~10 to 1e6 at T = 1e-6; all stays finite."""
    mean_a, cov_a = gaussians(40, 8, seed=11, offset=30.0)
    mean_b, cov_b = gaussians(40, 8, seed=12)

    def loss(*args, backend):
        return mstein_fast.wasserstein_infonce(*args, temperature=temperature, similarity=similarity,
                                               reduction="none", backend=backend)

    with torch.no_grad():
        got = loss(mean_a, cov_a, mean_b, cov_b, backend="triton")
        want = loss(mean_a.double(), cov_a.double(), mean_b.double(), cov_b.double(), backend="torch")
        base = loss(mean_a, cov_a, mean_b, cov_b, backend="torch")
    assert torch.isfinite(got).all()
    testing.assert_close("rows", got, want, max(testing.TOL[torch.float32], 2 * testing.rel_err(base, want)))


# ------------------------------------------- registered with torch.library (mstein_fast::*_triton_*)

def _triton_op_cases():
    ops = torch.ops.mstein_fast
    g = torch.Generator().manual_seed(21)

    def gauss(*shape, grad=True):
        mean = torch.randn(*shape, generator=g).to(DEVICE)
        cov = (torch.rand(*shape, generator=g) + 0.1).to(DEVICE)
        return mean.requires_grad_(grad), cov.requires_grad_(grad)

    def pairwise_fwd():
        return (*gauss(2, 3, 5), *gauss(2, 4, 5))

    def pairwise_bwd():
        m1, c1, m2, c2 = (t.detach() for t in pairwise_fwd())
        out, x, y = ops.pairwise_w2_triton_fwd(m1, c1, m2, c2)
        return torch.randn(out.shape, generator=g).to(DEVICE), x, y, c1, c2

    def pairwise_bwd_one_side():
        return (*pairwise_bwd(), True, False)

    def infonce_fwd(similarity):
        return (*gauss(6, 5), *gauss(6, 5), 0.5, similarity)

    def infonce_bwd(similarity):
        ma, ca, mb, cb, t, s = (a.detach() if torch.is_tensor(a) else a for a in infonce_fwd(similarity))
        losses, x, stats, top = ops.wasserstein_infonce_triton_fwd(ma, ca, mb, cb, t, s)
        return torch.randn(losses.shape, generator=g).to(DEVICE), x, stats, top, ca, cb, t, s

    return [("pairwise_w2_triton_fwd", pairwise_fwd), ("pairwise_w2_triton_bwd", pairwise_bwd),
            ("pairwise_w2_triton_bwd", pairwise_bwd_one_side),
            ("wasserstein_infonce_triton_fwd", lambda: infonce_fwd("inv")),
            ("wasserstein_infonce_triton_fwd", lambda: infonce_fwd("neg")),
            ("wasserstein_infonce_triton_bwd", lambda: infonce_bwd("inv"))]


@pytest.mark.skipif(not hasattr(torch.library, "custom_op"), reason="torch.library.custom_op needs torch >= 2.4")
@pytest.mark.parametrize("case", range(6))
def test_triton_ops_pass_opcheck(case):
    # the schema, the fake (shape) rule and the autograd registration of the Triton ops agree with
    # what the kernels do (on CUDA; on a CPU through the interpreter)
    name, make_args = _triton_op_cases()[case]
    torch.library.opcheck(getattr(torch.ops.mstein_fast, name).default, make_args())


@pytest.mark.parametrize("side", [0, 1])
def test_triton_pairwise_backward_computes_only_the_side_that_needs_it(side, monkeypatch):
    import importlib

    kp = importlib.import_module("mstein_fast.kernels.pairwise_w2")  # the launchers

    g = torch.Generator().manual_seed(5 + side)
    inputs = [torch.randn(2, 3, 5, generator=g), torch.rand(2, 3, 5, generator=g) + 0.1,
              torch.randn(2, 4, 5, generator=g), torch.rand(2, 4, 5, generator=g) + 0.1]
    upstream = torch.randn(2, 3, 4, generator=g)
    full = [t.clone().to(DEVICE).requires_grad_() for t in inputs]
    (pairwise_triton.pairwise_w2(*full) * upstream.to(DEVICE)).sum().backward()
    calls = []
    real = kp._products
    monkeypatch.setattr(kp, "_products", lambda *a: calls.append(1) or real(*a))
    part = [t.clone().to(DEVICE).requires_grad_(i // 2 == side) for i, t in enumerate(inputs)]
    (pairwise_triton.pairwise_w2(*part) * upstream.to(DEVICE)).sum().backward()
    assert len(calls) == 1  # one side's products only
    for i, (a, b) in enumerate(zip(part, full)):
        if i // 2 == side:
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)  # the same kernels, the same sums
        else:
            assert a.grad is None


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(torch.library, "custom_op"), reason="torch.library.custom_op needs torch >= 2.4")
def test_triton_public_ops_compile_fullgraph_and_equal_eager():
    # the Triton ops are single opaque nodes to torch.compile (no graph break), forward and backward
    def f(m1, c1, m2, c2, ma, ca, mb, cb):
        w = mstein_fast.pairwise_w2(m1, c1, m2, c2, backend="triton", check_values=False)
        loss = mstein_fast.wasserstein_infonce(ma, ca, mb, cb, temperature=0.5, backend="triton")
        return (w * w.detach().cos()).sum() + 3.0 * loss

    def leaves():
        g = torch.Generator().manual_seed(22)
        shapes = [(2, 3, 5)] * 2 + [(2, 4, 5)] * 2 + [(6, 5)] * 4
        out = []
        for i, shape in enumerate(shapes):
            t = torch.randn(*shape, generator=g) if i % 2 == 0 else torch.rand(*shape, generator=g) + 0.1
            out.append(t.to(DEVICE).requires_grad_())
        return out

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager_in, compiled_in = leaves(), leaves()
    eager_out, compiled_out = f(*eager_in), compiled(*compiled_in)
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-5, atol=1e-5)
    for e, c in zip(torch.autograd.grad(eager_out, eager_in), torch.autograd.grad(compiled_out, compiled_in)):
        torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-5)
