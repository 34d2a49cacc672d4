"""How a kernel is compared with the float64 oracle: one set of helpers for the test suite
(``tests/test_ops.py``, ``tests/test_triton.py``, ...) and the GPU check (``benchmarks/gpu_check.py``).

A comparison runs the function under test and the oracle (``mstein_fast.reference`` in float64 on
the same input values) forward and backward under one random upstream gradient, and measures each
output and each input gradient by its relative RMS error ``||a - b|| / ||b||`` (in float64). A
quantity passes when

    ||a - b||  <=  rel * ||b||  +  floor * ||s||

where ``rel`` is the larger of a fixed tolerance (``tol``) and, when a ``baseline_fn`` is given,
twice the error of that baseline (the same computation in the inputs' dtype, e.g. the reference in
float32) plus ``ill_floor``: a kernel may be as wrong as plain PyTorch is on an ill-conditioned case,
not worse. ``s`` is an optional float64 ``scale_fn`` shaped like the oracle (for InfoNCE rows whose
loss cancels to ~0, the positive-logit term), so that a relative error of a vanishing value does
not decide. Non-finite values where the oracle is finite always fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# fixed relative tolerances per dtype (float32: float32 rounding of W over 2D <= a few hundred
# products and 2N <= a few hundred softmax terms measures <= 2e-6 for the kernels; 1e-5 leaves
# margin and still catches masking, indexing or scaling bugs, whose errors are 1e-3 .. 1); half
# precisions have none: only the 2x-the-baseline rule applies to them
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 0.0, torch.bfloat16: 0.0}
# the floor of the 2x-the-baseline rule (~4-16 ulps of the dtype), for when the baseline is exact
ILL_FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
GAUSSIAN_NAMES = ("d mean1/a", "d cov1/a", "d mean2/b", "d cov2/b")


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (``||a - b||`` when ``b`` is exactly 0); inf if ``a`` has
    NaN/inf."""
    a, b = actual.detach().double().cpu(), expected.detach().double().cpu()
    if not bool(torch.isfinite(a).all()):
        return math.inf
    diff, scale = (a - b).norm().item(), b.norm().item()
    return diff / scale if scale > 0 else diff


def worst_mismatches(actual: torch.Tensor, expected: torch.Tensor, k: int = 5) -> str:
    """The ``k`` largest differences, one line each, with their index in ``actual``'s shape."""
    a, b = actual.detach().double().cpu().flatten(), expected.detach().double().cpu().flatten()
    diff = (a - b).abs().nan_to_num(nan=math.inf)
    shape = tuple(actual.shape)
    lines = []
    for i in torch.topk(diff, min(k, diff.numel())).indices.tolist():
        pos = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), shape)) if shape else ()
        lines.append(f"    at {pos}: got {a[i].item():.9g}, expected {b[i].item():.9g}, |diff| {diff[i].item():.3g}")
    return "\n".join(lines)


def with_grads(fn: Callable, inputs: Sequence[torch.Tensor], upstream) -> list[torch.Tensor]:
    """``[*outputs, *input gradients]`` of ``fn(*leaves)`` on fresh leaf copies of ``inputs``, after
    a backward with ``upstream`` (one tensor per output, cast to the output's dtype and device); an
    input the outputs do not depend on gets a zero gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    outs = fn(*leaves)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    ups = list(upstream) if isinstance(upstream, (list, tuple)) else [upstream]
    torch.autograd.backward(outs, [u.to(device=o.device, dtype=o.dtype) for o, u in zip(outs, ups)])
    return [o.detach() for o in outs] + [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]


@dataclass
class Measured:
    """One quantity of a comparison: its relative error, the relative error allowed (``rel``), the
    absolute allowance (``floor * ||s||``), the baseline's own error (NaN without a baseline)."""

    name: str
    error: float
    rel: float
    absolute: float
    reference_error: float
    got: torch.Tensor
    want: torch.Tensor

    @property
    def passed(self) -> bool:
        if self.got.shape != self.want.shape:
            return False
        bad = ~torch.isfinite(self.got.detach().cpu()) & torch.isfinite(self.want.detach().cpu())
        if bool(bad.any()):
            return False
        diff = (self.got.detach().double().cpu() - self.want.detach().double().cpu()).norm().item()
        return diff <= self.rel * self.want.detach().double().norm().item() + self.absolute

    @property
    def allowed(self) -> float:
        """The allowance as a relative error (``rel`` plus the absolute part over ``||b||``)."""
        scale = self.want.detach().double().norm().item()
        return self.rel + (self.absolute / scale if scale > 0 else self.absolute)

    def message(self) -> str:
        baseline = "" if math.isnan(self.reference_error) else f"; baseline error {self.reference_error:.3g}"
        return (f"{self.name}: relative error {self.error:.3g} > allowed {self.allowed:.3g} (tolerance {self.rel:.3g}"
                f" x ||b|| + {self.absolute:.3g}{baseline}); worst mismatches:\n"
                + worst_mismatches(self.got, self.want))


def measure(fn: Callable, oracle_fn: Callable, inputs: Sequence[torch.Tensor], *, seed: int = 0,
            tol: float | None = None, baseline_fn: Callable | None = None, ill_floor: float | None = None,
            scale_fn: Callable | None = None, floor: float = 0.0,
            names: Sequence[str] | None = None, shapes: Sequence[tuple] | None = None) -> list[Measured]:
    """Every output and input gradient of ``fn(*inputs)`` against ``oracle_fn`` on the float64 copy
    of ``inputs``, under a standard-normal upstream gradient drawn from ``seed`` (module docstring:
    the rule). ``ill_floor`` defaults to :data:`ILL_FLOOR` of the inputs' dtype, ``names`` to
    ``output[i]`` and :data:`GAUSSIAN_NAMES`; ``shapes``, those of the outputs, default to a no-grad
    run of the oracle (pass them to save that run on large inputs)."""
    dtype = inputs[0].dtype
    inputs64 = [t.double() for t in inputs]
    if shapes is None:
        with torch.no_grad():
            probe = oracle_fn(*inputs64)
        shapes = [o.shape for o in (probe if isinstance(probe, tuple) else (probe,))]
    gen = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes]
    want = with_grads(oracle_fn, inputs64, upstream)
    got = with_grads(fn, inputs, upstream)
    base = with_grads(baseline_fn, inputs, upstream) if baseline_fn is not None else None
    scale = with_grads(scale_fn, inputs64, upstream) if scale_fn is not None else None
    if names is None:
        names = [f"output[{i}]" for i in range(len(shapes))] + list(GAUSSIAN_NAMES[:len(inputs)])
    if ill_floor is None:
        ill_floor = ILL_FLOOR.get(dtype, 0.0)
    out = []
    for i, (name, g, w) in enumerate(zip(names, got, want)):
        ref_err = rel_err(base[i], w) if base is not None else math.nan
        rel = max(tol if tol is not None else 0.0, 2 * ref_err + ill_floor if base is not None else 0.0)
        absolute = floor * scale[i].norm().item() if scale is not None else 0.0
        out.append(Measured(name, rel_err(g, w), rel, absolute, ref_err, g, w))
    return out


def compare(fn: Callable, oracle_fn: Callable, inputs: Sequence[torch.Tensor], **options) -> dict[str, float]:
    """:func:`measure`, then assert that every quantity passed and has the inputs' dtype; returns
    ``{name: relative error}``."""
    measured = measure(fn, oracle_fn, inputs, **options)
    dtype = inputs[0].dtype
    for m in measured:
        assert m.got.dtype == dtype, f"{m.name}: dtype {m.got.dtype}, inputs {dtype}"
        assert m.got.shape == m.want.shape, f"{m.name}: shape {tuple(m.got.shape)} != {tuple(m.want.shape)}"
    failures = [m.message() for m in measured if not m.passed]
    assert not failures, "\n".join(failures)
    return {m.name: m.error for m in measured}


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, rel_tol: float,
                 abs_floor: float = 0.0) -> float:
    """``||a - b|| <= rel_tol * ||b|| + abs_floor``, same shape, no NaN/inf where ``expected`` is
    finite; returns the relative error (the message shows the worst mismatches)."""
    m = Measured(name, rel_err(actual, expected), rel_tol, abs_floor, math.nan, actual, expected)
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert m.passed, m.message()
    return m.error
