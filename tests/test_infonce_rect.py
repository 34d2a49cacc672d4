"""The rectangular InfoNCE primitive (local rows x a range of the global columns) that the
distributed loss runs on: the C++ one (``mstein_fast.ops._wasserstein_infonce.rect``) and its Triton twin
(``mstein_fast.kernels.infonce_rect``; under Triton's interpreter on a CPU, which
``tests/conftest.py`` switches on without a GPU), against an independent float64 oracle.

The oracle forms the whole ``r x C`` logit matrix from direct differences ``(x - y)^2`` in
float64, masks each row's own column, and takes the row loss ``log(1 + sum_{c != self, pos}
exp(logit_c - logit_pos))``; gradients w.r.t. the rows and all columns come from its autograd
under a random upstream gradient. The primitive is run range by range over a split of the columns
(state merged across calls), then the backward range by range; every output a kernel must write
is poisoned with NaN first.

Tolerances (relative RMS errors): the inputs are scaled so that W = O(1), so float32 rounding of
W in the Gram expansion ``|x|^2 + |y|^2 - 2 x.y`` is ~1e-7 absolute (sqrt(K) u |x|^2, u = 6e-8),
and the logits carry ~1e-7 / T. For 0.1 <= T the losses and gradients then agree to ~1e-6
(measured <= 3e-6 for K <= 130); 2e-5 leaves margin and still catches a masking, indexing or
scaling bug (errors 1e-3 .. 1). At tiny temperatures (T = 1e-4 here: a logit error of ~1e-3 moves
softmax weights by as much) the problem itself is ill-conditioned in float32: there the kernels
must stay within twice the error of the same computation done densely in float32 (W by the same
expansion) plus a floor of 1e-5.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

import mstein_fast
from mstein_fast.numerics import infonce_row_loss, infonce_row_stats
from mstein_fast.testing import rel_err

pytestmark = pytest.mark.core  # (docs/development.md: test markers)

HAS_CPP = "cpp" in mstein_fast.available_backends()
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="the C++ extension is not built")

try:
    from mstein_fast.kernels import infonce_rect as triton_rect
except (ImportError, RuntimeError):  # Triton missing
    triton_rect = None
TRITON_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RUNS_TRITON = triton_rect is not None and (TRITON_DEVICE.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
needs_triton = pytest.mark.skipif(not RUNS_TRITON, reason="Triton (a GPU or its interpreter) is not available")

if HAS_CPP:
    from mstein_fast.ops._wasserstein_infonce.rect import infonce_rect_bwd, infonce_rect_fwd


# -- the problem and the oracle --------------------------------------------------------------------

def problem(r: int, c: int, k: int, seed: int, *, no_self: int = 0, offset: float = 0.0):
    """Columns ``y`` ``[c, K]`` (float32-representable float64), rows ``x`` = some of the columns
    slightly moved (so a row's own column is its nearest), each row's own column ``self_g`` and a
    positive ``pos_g`` near it; the last ``no_self`` rows have no own column (-1)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(c, k, generator=g, dtype=torch.float64) / math.sqrt(k) + offset
    self_g = torch.randperm(c, generator=g)[:r] if r <= c else torch.randint(0, c, (r,), generator=g)
    x = y[self_g] + 1e-3 * torch.randn(r, k, generator=g, dtype=torch.float64) / math.sqrt(k)
    pos_g = (self_g + 1 + torch.randint(0, max(c - 1, 1), (r,), generator=g)) % c
    if no_self:
        self_g[r - no_self:] = -1
    upstream = torch.randn(r, generator=g, dtype=torch.float64)
    return x.float().double(), y.float().double(), self_g, pos_g, upstream


def row_losses(w, self_g, pos_g, temperature, similarity):
    """InfoNCE row losses from the distances ``w`` ``[r, c]``: each row's own column (``self_g``,
    -1: none) masked, its positive at ``pos_g``, the others in the denominator."""
    logits = (1.0 / (1.0 + w) if similarity == "inv" else -w) / temperature
    r = logits.shape[0]
    rows = torch.arange(r)
    positive = logits[rows, pos_g]
    mask = torch.zeros_like(logits, dtype=torch.bool)
    has_self = self_g >= 0
    mask[rows[has_self], self_g[has_self]] = True
    mask[rows, pos_g] = True
    others = logits.masked_fill(mask, -math.inf)
    top = torch.maximum(others.max(1).values, positive).detach()
    return infonce_row_loss(top, torch.exp(others - top.unsqueeze(1)).sum(1), positive)


def oracle(x, y, self_g, pos_g, temperature, similarity):
    """Row losses in float64 from direct differences (differentiable w.r.t. x and y)."""
    w = ((x.unsqueeze(1) - y.unsqueeze(0)) ** 2).sum(-1)
    return row_losses(w, self_g, pos_g, temperature, similarity)


def dense_float32(x, y, self_g, pos_g, temperature, similarity):
    """The same loss computed densely in float32 with W by the Gram expansion (the conditioning
    of the kernels' own arithmetic): the yardstick of the ill-conditioned cases."""
    w = torch.addmm((x * x).sum(1, keepdim=True) + (y * y).sum(1), x, y.T, alpha=-2.0)
    return row_losses(w, self_g, pos_g, temperature, similarity)


def with_grads(fn, x, y, upstream):
    xl, yl = x.clone().requires_grad_(), y.clone().requires_grad_()
    loss = fn(xl, yl)
    (loss * upstream.to(loss.dtype)).sum().backward()
    return loss.detach(), xl.grad, yl.grad


def ranges(c: int, cuts) -> list[tuple[int, int]]:
    bounds = [0, *cuts, c]
    return list(zip(bounds, bounds[1:]))


def local_index(ids: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
    return torch.where((ids >= c0) & (ids < c1), ids - c0, torch.full_like(ids, -1))


# -- running the primitives over the ranges -----------------------------------------------------------

def run_cpp(x, y, self_g, pos_g, temperature, similarity, upstream, cuts):
    """Loss, d rows and d cols of the C++ primitive over the column ranges given by ``cuts``."""
    rows, cols = x.float().contiguous(), y.float().contiguous()
    r, k = rows.shape
    run_max = torch.full((r,), -math.inf, dtype=torch.float64)
    run_others = torch.zeros(r, dtype=torch.float64)
    pos = torch.full((r,), math.nan, dtype=torch.float64)  # must be written by the range holding it
    spans = ranges(cols.shape[0], cuts)
    for c0, c1 in spans:
        infonce_rect_fwd(rows, cols[c0:c1], local_index(self_g, c0, c1), local_index(pos_g, c0, c1), temperature,
                         similarity, run_max, run_others, pos)
    loss = infonce_row_loss(run_max, run_others, pos)
    stats = torch.stack(infonce_row_stats(run_max, run_others, pos)[:3]).float().contiguous()
    g_rows = torch.zeros(r, k)
    g_cols = torch.full(cols.shape, math.nan)
    for c0, c1 in spans:
        infonce_rect_bwd(rows, cols[c0:c1], local_index(self_g, c0, c1), local_index(pos_g, c0, c1), temperature,
                         similarity, upstream.float(), stats, g_rows, g_cols[c0:c1])
    return loss, g_rows, g_cols, (run_max, run_others, pos)


def run_triton(x, y, self_g, pos_g, temperature, similarity, upstream, cuts):
    """The same with the Triton primitive (on ``TRITON_DEVICE``)."""
    dev = TRITON_DEVICE
    rows, cols = x.float().to(dev).contiguous(), y.float().to(dev).contiguous()
    self_g, pos_g = self_g.to(dev), pos_g.to(dev)
    r, k = rows.shape
    run_max = torch.full((r,), -math.inf, dtype=torch.float64, device=dev)
    run_others = torch.zeros(r, dtype=torch.float64, device=dev)
    pos = torch.full((r,), math.nan, dtype=torch.float64, device=dev)
    top_col = torch.full((r,), -1, dtype=torch.int64, device=dev)
    spans = ranges(cols.shape[0], cuts)
    for c0, c1 in spans:
        triton_rect.rect_fwd(rows, cols[c0:c1], local_index(self_g, c0, c1), local_index(pos_g, c0, c1), temperature,
                             similarity, run_max, run_others, pos, top_col, c0)
    loss = infonce_row_loss(run_max, run_others, pos)
    stats = torch.stack(infonce_row_stats(run_max, run_others, pos)).float().contiguous()
    g_rows = torch.zeros(r, k, device=dev)
    g_cols = torch.full(cols.shape, math.nan, device=dev)
    for c0, c1 in spans:
        triton_rect.rect_bwd(rows, cols[c0:c1], local_index(self_g, c0, c1), local_index(pos_g, c0, c1), temperature,
                             similarity, upstream.float().to(dev), stats, top_col, g_rows, g_cols[c0:c1], c0)
    return loss.cpu(), g_rows.cpu(), g_cols.cpu(), (run_max.cpu(), run_others.cpu(), pos.cpu())


def check(run, x, y, self_g, pos_g, temperature, similarity, upstream, cuts, *, tol=2e-5, ill_conditioned=False):
    want = with_grads(lambda a, b: oracle(a, b, self_g, pos_g, temperature, similarity), x, y, upstream)
    got = run(x, y, self_g, pos_g, temperature, similarity, upstream, cuts)
    base = None
    if ill_conditioned:
        base = with_grads(lambda a, b: dense_float32(a, b, self_g, pos_g, temperature, similarity), x.float(),
                          y.float(), upstream)
    failures = []
    for i, name in enumerate(("loss", "d rows", "d cols")):
        assert got[i].shape == want[i].shape, name
        err = rel_err(got[i], want[i])
        allowed = 2 * rel_err(base[i], want[i]) + 1e-5 if ill_conditioned else tol
        if os.environ.get("SHOW_ERRORS"):
            print(f"ERR {name} {err:.3g} allowed {allowed:.3g}")
        if not err <= allowed:
            failures.append(f"{name}: relative error {err:.3g} > {allowed:.3g}")
    assert not failures, "\n".join(failures)
    return got


# shapes: (r, C, K, cuts of the columns, rows with no own column)
SHAPES = [
    pytest.param(2, 2, 3, [], 0, id="N=1"),  # each row meets only itself and its positive: loss 0
    pytest.param(2, 2, 3, [1], 0, id="N=1-split"),
    pytest.param(1, 5, 3, [2], 0, id="one-row"),
    pytest.param(37, 301, 37, [50, 51, 200], 3, id="odd-4-ranges"),  # a one-column range
    pytest.param(130, 97, 130, [], 0, id="more-rows-than-cols"),
    pytest.param(200, 450, 130, [129, 129, 300], 0, id="wide-k-empty-range"),  # an empty range
]


@needs_cpp
@pytest.mark.parametrize("similarity, temperature", [("inv", 0.5), ("neg", 0.1), ("inv", 1e4), ("neg", 1e4)])
@pytest.mark.parametrize("r, c, k, cuts, no_self", SHAPES)
def test_cpp_matches_float64(r, c, k, cuts, no_self, similarity, temperature):
    x, y, self_g, pos_g, upstream = problem(r, c, k, seed=r + c + k, no_self=no_self)
    got = check(run_cpp, x, y, self_g, pos_g, temperature, similarity, upstream, cuts)
    if c == 2:  # only self and positive: nothing to contrast
        assert (got[0] == 0).all() and (got[1] == 0).all() and (got[2] == 0).all()


@needs_cpp
@pytest.mark.parametrize("similarity", ["inv", "neg"])
def test_cpp_split_state_equals_the_whole_range(similarity):
    """The state merged over column ranges is that of one range holding them all (to float32
    summation order), and the loss the whole-range loss; more splits than row blocks exercise the
    forward's own column splitting too."""
    x, y, self_g, pos_g, upstream = problem(50, 700, 21, seed=3)
    whole = run_cpp(x, y, self_g, pos_g, 0.3, similarity, upstream, [])
    for cuts in ([350], [1, 2, 3, 600], [96, 192, 288, 384, 480]):
        split = run_cpp(x, y, self_g, pos_g, 0.3, similarity, upstream, cuts)
        torch.testing.assert_close(split[0], whole[0], rtol=1e-6, atol=0)
        for a, b in zip(split[3], whole[3]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
        for a, b in zip(split[1:3], whole[1:3]):  # sums of many terms: compared as a whole
            assert rel_err(a, b) <= 1e-6


@needs_cpp
@pytest.mark.parametrize("similarity", ["inv", "neg"])
def test_cpp_tiny_temperature(similarity):
    # T = 1e-4 with the geometry scaled so that W ~ 2e-4: logits ~1e4 ("inv") or ~-2 ("neg") whose
    # differences are O(1), so many candidates share the softmax; "inv" is ill-conditioned in
    # float32 (an ulp of a 1e4 logit is 1e-3; see the module doc)
    x, y, self_g, pos_g, upstream = problem(40, 130, 9, seed=5)
    check(run_cpp, x * 0.01, y * 0.01, self_g, pos_g, 1e-4, similarity, upstream, [64], ill_conditioned=True)


@needs_cpp
def test_cpp_means_far_from_the_origin():
    # the primitive takes rows as given (the distributed loss centres them first): an offset of 3
    # costs the expansion ~|x|^2 / W = 10 times more rounding; 2e-4 covers it
    x, y, self_g, pos_g, upstream = problem(30, 90, 16, seed=6, offset=3.0 / 4)
    check(run_cpp, x, y, self_g, pos_g, 0.5, "neg", upstream, [40], tol=2e-4)


@needs_cpp
def test_cpp_forward_state_does_not_depend_on_threads_and_backward_repeats():
    x, y, self_g, pos_g, upstream = problem(300, 500, 40, seed=7)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_cpp(x, y, self_g, pos_g, 0.2, "inv", upstream, [250])
        torch.set_num_threads(2)
        two = run_cpp(x, y, self_g, pos_g, 0.2, "inv", upstream, [250])
        again = run_cpp(x, y, self_g, pos_g, 0.2, "inv", upstream, [250])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one[3], two[3]):
        assert torch.equal(a, b)
    for a, b in zip(two[1:3], again[1:3]):
        assert torch.equal(a, b)


# -- bad inputs --------------------------------------------------------------------------------------

def _args(r=4, c=6, k=3):
    rows, cols = torch.randn(r, k), torch.randn(c, k)
    self_col = torch.tensor([0, 1, -1, 5])[:r]
    pos_col = torch.tensor([1, -1, 2, 0])[:r]
    state = [torch.full((r,), -math.inf, dtype=torch.float64), torch.zeros(r, dtype=torch.float64),
             torch.zeros(r, dtype=torch.float64)]
    return rows, cols, self_col, pos_col, state


@needs_cpp
@pytest.mark.parametrize("change, match", [
    (lambda a: a.update(rows=a["rows"].double()), "rows"),
    (lambda a: a.update(rows=torch.randn(3, 4)[:, :3]), "not contiguous"),
    (lambda a: a.update(cols=torch.randn(6, 4)), "cols"),
    (lambda a: a.update(self_col=a["self_col"].int()), "self_col"),
    (lambda a: a.update(pos_col=torch.tensor([1, 2, 3])), "pos_col"),
    (lambda a: a.update(pos_col=torch.tensor([1, 6, 2, 0])), r"pos_col\[1\] = 6 is neither -1 nor a column"),
    (lambda a: a.update(self_col=torch.tensor([0, -2, 2, 3])), r"self_col\[1\] = -2"),
    (lambda a: a.update(self_col=torch.tensor([0, 1, 2, 3]), pos_col=torch.tensor([1, 2, 2, 0])), "own positive"),
    (lambda a: a.update(run_max=a["run_max"].float()), "run_max"),
    (lambda a: a.update(pos=torch.zeros(5, dtype=torch.float64)), "pos"),
    (lambda a: a.update(similarity="cos"), "similarity"),
    (lambda a: a.update(temperature=0.0), "temperature"),
    (lambda a: a.update(temperature=math.nan), "temperature"),
])
def test_cpp_forward_rejects_bad_inputs(change, match):
    rows, cols, self_col, pos_col, (run_max, run_others, pos) = _args()
    a = {"rows": rows, "cols": cols, "self_col": self_col, "pos_col": pos_col, "temperature": 0.5,
         "similarity": "inv", "run_max": run_max, "run_others": run_others, "pos": pos}
    change(a)
    with pytest.raises(ValueError, match=match):
        infonce_rect_fwd(**a)
    assert torch.isinf(run_max).all() and (run_others == 0).all()  # nothing was written


@needs_cpp
@pytest.mark.parametrize("change, match", [
    (lambda a: a.update(stats=torch.zeros(4, 4)), "stats"),
    (lambda a: a.update(g=torch.zeros(4, dtype=torch.float64)), "g"),
    (lambda a: a.update(g_rows=torch.zeros(4, 2)), "g_rows"),
    (lambda a: a.update(g_cols=torch.zeros(5, 3)), "g_cols"),
    (lambda a: a.update(pos_col=torch.tensor([1, -1, 2, 7])), r"pos_col\[3\] = 7"),
])
def test_cpp_backward_rejects_bad_inputs(change, match):
    rows, cols, self_col, pos_col, _ = _args()
    g_cols = torch.full((6, 3), 7.0)
    a = {"rows": rows, "cols": cols, "self_col": self_col, "pos_col": pos_col, "temperature": 0.5,
         "similarity": "neg", "g": torch.ones(4), "stats": torch.zeros(3, 4), "g_rows": torch.zeros(4, 3),
         "g_cols": g_cols}
    change(a)
    with pytest.raises(ValueError, match=match):
        infonce_rect_bwd(**a)
    assert (g_cols == 7.0).all()


@needs_cpp
def test_binding_checks_sizes_and_pointers():
    ext = mstein_fast.backends.cpp_extension()
    rows, cols, self_col, pos_col, (run_max, run_others, pos) = _args()
    ptrs = [t.data_ptr() for t in (run_max, run_others, pos)]
    with pytest.raises(ValueError, match="negative size"):
        ext.wasserstein_infonce_rect_fwd(rows.data_ptr(), cols.data_ptr(), -1, 6, 3, self_col.data_ptr(),
                                         pos_col.data_ptr(), 0.5, 0, *ptrs, 1)
    with pytest.raises(ValueError, match="null pointer"):
        ext.wasserstein_infonce_rect_fwd(rows.data_ptr(), cols.data_ptr(), 4, 6, 3, 0, pos_col.data_ptr(), 0.5, 0,
                                         *ptrs, 1)
    with pytest.raises(ValueError, match="kind"):
        ext.wasserstein_infonce_rect_fwd(rows.data_ptr(), cols.data_ptr(), 4, 6, 3, self_col.data_ptr(),
                                         pos_col.data_ptr(), 0.5, 2, *ptrs, 1)
    # an index that is valid for a wider range is refused for the range passed (c = 5)
    with pytest.raises(ValueError, match=r"self_col\[3\] = 5"):
        ext.wasserstein_infonce_rect_fwd(rows.data_ptr(), cols.data_ptr(), 4, 5, 3, self_col.data_ptr(),
                                         pos_col.data_ptr(), 0.5, 0, *ptrs, 1)


# -- Triton ------------------------------------------------------------------------------------------

# the interpreter runs ~1000x slower than a kernel: small shapes, still straddling its 64-wide tiles
TRITON_SHAPES = [
    pytest.param(2, 2, 3, [1], 0, id="N=1-split"),
    pytest.param(1, 5, 3, [], 0, id="one-row"),
    pytest.param(37, 140, 37, [50, 51], 3, id="odd-3-ranges"),  # a one-column range
    pytest.param(70, 66, 130, [66], 0, id="wide-k-empty-range"),  # K = 130: three ragged K blocks
]


@pytest.fixture()
def _poison(monkeypatch):
    monkeypatch.setenv("MSTEIN_FAST_POISON", "1")  # the kernels' own scratch buffers start as NaN


@needs_triton
@pytest.mark.usefixtures("_poison")
@pytest.mark.parametrize("similarity, temperature", [("inv", 0.5), ("neg", 0.1), ("inv", 1e4)])
@pytest.mark.parametrize("r, c, k, cuts, no_self", TRITON_SHAPES)
def test_triton_matches_float64(r, c, k, cuts, no_self, similarity, temperature):
    x, y, self_g, pos_g, upstream = problem(r, c, k, seed=r + c + k + 1, no_self=no_self)
    check(run_triton, x, y, self_g, pos_g, temperature, similarity, upstream, cuts)


@needs_triton
@pytest.mark.usefixtures("_poison")
def test_triton_column_shares_are_merged(monkeypatch):
    """Columns of a range split over several programs (as on a GPU with few row blocks), shares
    of 40 columns, not a multiple of the tiles, merged into the state."""
    monkeypatch.setattr(triton_rect, "_columns_per_program", lambda *args: 40)
    x, y, self_g, pos_g, upstream = problem(37, 150, 20, seed=8, no_self=2)
    got = check(run_triton, x, y, self_g, pos_g, 0.2, "inv", upstream, [70])
    if HAS_CPP:  # and the same state as the C++ primitive's, to float32 rounding
        cpp = run_cpp(x, y, self_g, pos_g, 0.2, "inv", upstream, [70])
        for a, b in zip(got[3], cpp[3]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_triton
@pytest.mark.usefixtures("_poison")
def test_triton_tiny_temperature():
    x, y, self_g, pos_g, upstream = problem(40, 100, 9, seed=9)
    check(run_triton, x * 0.01, y * 0.01, self_g, pos_g, 1e-4, "inv", upstream, [64], ill_conditioned=True)


@needs_triton
def test_triton_rejects_bad_inputs():
    dev = TRITON_DEVICE
    rows, cols, self_col, pos_col, state = _args()
    rows, cols, self_col, pos_col = rows.to(dev), cols.to(dev), self_col.to(dev), pos_col.to(dev)
    state = [t.to(dev) for t in state]
    top_col = torch.full((4,), -1, dtype=torch.int64, device=dev)
    with pytest.raises(ValueError, match=r"pos_col\[1\] = 6 is neither -1 nor a column"):
        triton_rect.rect_fwd(rows, cols, self_col, torch.tensor([1, 6, 2, 0], device=dev), 0.5, "inv", *state,
                             top_col)
    with pytest.raises(ValueError, match="own positive"):
        triton_rect.rect_fwd(rows, cols, self_col, self_col, 0.5, "inv", *state, top_col)
    with pytest.raises(ValueError, match="cols"):
        triton_rect.rect_fwd(rows, torch.randn(6, 4, device=dev), self_col, pos_col, 0.5, "inv", *state, top_col)
    with pytest.raises(ValueError, match="run_max"):
        triton_rect.rect_fwd(rows, cols, self_col, pos_col, 0.5, "inv", state[0].float(), *state[1:], top_col)
    with pytest.raises(ValueError, match="stats"):
        triton_rect.rect_bwd(rows, cols, self_col, pos_col, 0.5, "inv", torch.ones(4, device=dev),
                             torch.zeros(3, 4, device=dev), top_col, torch.zeros(4, 3, device=dev),
                             torch.zeros(6, 3, device=dev))
    assert torch.isinf(state[0]).all()
