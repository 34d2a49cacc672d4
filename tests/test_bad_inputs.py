"""Every public op rejects bad arguments with a ValueError/TypeError that names the argument.

Each case starts from valid inputs, breaks one thing, and checks the exception type and that the
message names the offending argument (as a whole word: ``mean_a`` is not ``mean_b``).
"""

from __future__ import annotations

import math
import re
import types

import numpy as np
import pytest
import torch

import mstein_fast
from mstein_fast import backends

pytestmark = pytest.mark.core  # (docs/development.md: test markers)

OPS = {
    # op: (function, the names of its four tensor arguments)
    "pairwise_w2": (mstein_fast.pairwise_w2, ("mean1", "cov1", "mean2", "cov2")),
    "wasserstein_infonce": (mstein_fast.wasserstein_infonce, ("mean_a", "cov_a", "mean_b", "cov_b")),
    "wasserstein_alignment_uniformity": (
        mstein_fast.wasserstein_alignment_uniformity,
        ("mean_a", "cov_a", "mean_b", "cov_b"),
    ),
}
ALL_OPS = list(OPS)
VIEW_OPS = ["wasserstein_infonce", "wasserstein_alignment_uniformity"]  # two [N, D] views
TEMPERATURE_OPS = VIEW_OPS


def valid_inputs(op: str, n: int = 4, d: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    names = OPS[op][1]
    m = n + 1 if op == "pairwise_w2" else n  # pairwise: the second set may have another row count
    return {
        names[0]: torch.randn(n, d, generator=gen),
        names[1]: torch.rand(n, d, generator=gen) + 0.5,
        names[2]: torch.randn(m, d, generator=gen),
        names[3]: torch.rand(m, d, generator=gen) + 0.5,
    }


def call(op: str, tensors: dict, **kwargs):
    fn, names = OPS[op]
    return fn(*(tensors[name] for name in names), **kwargs)


def expect_error(exc, name: str, op: str, tensors: dict, **kwargs):
    with pytest.raises(exc) as info:
        call(op, tensors, **kwargs)
    message = str(info.value)
    assert re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message), (
        f"{op}: the {type(info.value).__name__} does not name {name!r}: {message}"
    )
    return message


def test_valid_inputs_are_accepted():
    for op in ALL_OPS:
        call(op, valid_inputs(op), backend="torch")


# --- types and dtypes ------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("position", range(4))
@pytest.mark.parametrize(
    "make_bad",
    [
        pytest.param(lambda t: t.tolist(), id="list"),
        pytest.param(lambda t: t.numpy(), id="numpy"),
        pytest.param(lambda t: None, id="None"),
        pytest.param(lambda t: 1.0, id="float"),
    ],
)
def test_non_tensor(op, position, make_bad):
    tensors = valid_inputs(op)
    name = OPS[op][1][position]
    tensors[name] = make_bad(tensors[name])
    expect_error(TypeError, name, op, tensors)


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("position", range(4))
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64], ids=str)
def test_non_floating_dtype(op, position, dtype):
    tensors = valid_inputs(op)
    name = OPS[op][1][position]
    tensors[name] = (tensors[name] + 1).to(dtype)
    expect_error(TypeError, name, op, tensors)


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("position", [1, 2, 3])
def test_mismatched_dtypes(op, position):
    tensors = valid_inputs(op)
    name = OPS[op][1][position]
    tensors[name] = tensors[name].double()
    message = expect_error(TypeError, name, op, tensors)
    assert "dtype" in message


# --- shapes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("group", [0, 1])
@pytest.mark.parametrize("what", ["D", "N"])
def test_mean_and_cov_shapes_differ(op, group, what):
    tensors = valid_inputs(op)
    mean_name, cov_name = OPS[op][1][2 * group : 2 * group + 2]
    cov = tensors[cov_name]
    tensors[cov_name] = cov[:, :-1] if what == "D" else cov[:-1]
    message = expect_error(ValueError, cov_name, op, tensors)
    assert mean_name in message


@pytest.mark.parametrize("op", ALL_OPS)
def test_dimension_d_differs_between_groups(op):
    tensors = valid_inputs(op)
    names = OPS[op][1]
    tensors[names[2]] = tensors[names[2]][:, :-1]
    tensors[names[3]] = tensors[names[3]][:, :-1]
    message = expect_error(ValueError, names[2], op, tensors)
    assert "D" in message


@pytest.mark.parametrize("op", VIEW_OPS)
def test_views_with_different_n(op):
    tensors = valid_inputs(op)
    tensors["mean_b"], tensors["cov_b"] = tensors["mean_b"][:-1], tensors["cov_b"][:-1]
    message = expect_error(ValueError, "mean_b", op, tensors)
    assert "N" in message


@pytest.mark.parametrize("batch1,batch2", [((2,), (3,)), ((2, 3), (3, 2)), ((), (2,)), ((2,), ())])
def test_pairwise_batch_dims_differ(batch1, batch2):
    gen = torch.Generator().manual_seed(1)
    tensors = {
        "mean1": torch.randn(*batch1, 4, 3, generator=gen),
        "cov1": torch.rand(*batch1, 4, 3, generator=gen) + 0.5,
        "mean2": torch.randn(*batch2, 5, 3, generator=gen),
        "cov2": torch.rand(*batch2, 5, 3, generator=gen) + 0.5,
    }
    message = expect_error(ValueError, "mean2", "pairwise_w2", tensors)
    assert "batch" in message


def test_pairwise_batch_dims_are_accepted():
    gen = torch.Generator().manual_seed(2)
    args = [torch.randn(2, 3, 4, 5, generator=gen), torch.rand(2, 3, 4, 5, generator=gen) + 0.5]
    args += [torch.randn(2, 3, 6, 5, generator=gen), torch.rand(2, 3, 6, 5, generator=gen) + 0.5]
    assert mstein_fast.pairwise_w2(*args, backend="torch").shape == (2, 3, 4, 6)


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("position", range(4))
def test_one_dimensional_input(op, position):
    tensors = valid_inputs(op)
    name = OPS[op][1][position]
    tensors[name] = tensors[name][0]
    message = expect_error(ValueError, name, op, tensors)
    assert "dims" in message or "[N, D]" in message


@pytest.mark.parametrize("op", VIEW_OPS)
def test_three_dimensional_views(op):
    tensors = {name: t.unsqueeze(0).expand(2, -1, -1) for name, t in valid_inputs(op).items()}
    message = expect_error(ValueError, "mean_a", op, tensors)
    assert "[N, D]" in message


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("empty", ["N", "D", "batch"])
def test_empty_inputs(op, empty):
    shape = {"N": (0, 3), "D": (4, 0), "batch": (0, 4, 3)}[empty]
    tensors = {name: torch.ones(shape) for name in OPS[op][1]}
    expect_error(ValueError, OPS[op][1][0], op, tensors)


# --- values -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("group", [0, 1])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_means(op, group, value):
    tensors = valid_inputs(op)
    name = OPS[op][1][2 * group]
    tensors[name][1, 2] = value
    message = expect_error(ValueError, name, op, tensors)
    assert "NaN or inf" in message


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("group", [0, 1])
@pytest.mark.parametrize(
    "value", [0.0, -1e-3, -1.0, math.nan, math.inf, -math.inf], ids=["0", "-1e-3", "-1", "nan", "inf", "-inf"]
)
def test_bad_covariances(op, group, value):
    tensors = valid_inputs(op)
    name = OPS[op][1][2 * group + 1]
    tensors[name][2, 0] = value
    message = expect_error(ValueError, name, op, tensors)
    assert "> 0" in message


def test_float64_extremes_are_judged_in_float64():
    # variances below float32's range and means above it are valid float64 inputs
    mean = torch.rand(3, 2, dtype=torch.float64)
    tiny_cov = torch.full((3, 2), 1e-50, dtype=torch.float64)
    assert mstein_fast.pairwise_w2(mean, tiny_cov, mean, tiny_cov, backend="torch").shape == (3, 3)
    assert mstein_fast.pairwise_w2(mean * 1e39, tiny_cov + 1, mean, tiny_cov + 1, backend="torch").shape == (3, 3)


# --- options ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", TEMPERATURE_OPS)
@pytest.mark.parametrize(
    "temperature", [0.0, -1.0, -1e-6, math.nan, math.inf, -math.inf], ids=["0", "-1", "-1e-6", "nan", "inf", "-inf"]
)
def test_bad_temperature_values(op, temperature):
    expect_error(ValueError, "temperature", op, valid_inputs(op), temperature=temperature)
    expect_error(ValueError, "temperature", op, valid_inputs(op), temperature=torch.tensor(temperature))


@pytest.mark.parametrize("op", TEMPERATURE_OPS)
@pytest.mark.parametrize("temperature", ["0.1", None, True, [0.1], 1j], ids=["str", "None", "bool", "list", "complex"])
def test_bad_temperature_types(op, temperature):
    expect_error(TypeError, "temperature", op, valid_inputs(op), temperature=temperature)


@pytest.mark.parametrize("op", TEMPERATURE_OPS)
def test_temperature_tensor_must_be_scalar(op):
    expect_error(ValueError, "temperature", op, valid_inputs(op), temperature=torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("op", TEMPERATURE_OPS)
def test_temperature_too_small_for_float32(op):
    # 1 / 1e-40 overflows float32 (the loss would be NaN); in float64 it is representable
    expect_error(ValueError, "temperature", op, valid_inputs(op), temperature=1e-40)
    doubles = {name: t.double() for name, t in valid_inputs(op).items()}
    call(op, doubles, temperature=1e-40, backend="torch")


@pytest.mark.parametrize("op", TEMPERATURE_OPS)
def test_temperature_accepts_numpy_and_tensor_scalars(op):
    for temperature in (np.float32(0.5), np.float64(1e-6), torch.tensor(0.5), 2):
        call(op, valid_inputs(op), temperature=temperature, backend="torch")


@pytest.mark.parametrize("similarity", ["cos", "INV", "", None, ["inv"], 0])
def test_unknown_similarity(similarity):
    op = "wasserstein_infonce"
    expect_error(ValueError, "similarity", op, valid_inputs(op), similarity=similarity)


@pytest.mark.parametrize("reduction", ["max", "Mean", "", None, ["mean"], 0])
def test_unknown_reduction(reduction):
    op = "wasserstein_infonce"
    expect_error(ValueError, "reduction", op, valid_inputs(op), reduction=reduction)


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("backend", ["cuda", "CPP", "", None, ["cpp"]])
def test_unknown_backend(op, backend):
    expect_error(ValueError, "backend", op, valid_inputs(op), backend=backend)


@pytest.mark.parametrize("op", ALL_OPS)
def test_triton_on_cpu_tensors_without_interpreter(op, monkeypatch):
    # Pretend Triton is installed, so that the device check itself is what answers.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setitem(backends._cache, "triton", types.ModuleType("fake_triton_kernels"))
    message = expect_error(ValueError, "backend", op, valid_inputs(op), backend="triton")
    assert "CUDA" in message and "TRITON_INTERPRET" in message


@pytest.mark.parametrize("op", ALL_OPS)
def test_triton_missing_is_a_clear_error(op, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setitem(backends._cache, "triton", ImportError("No module named 'triton'"))
    message = expect_error(RuntimeError, "triton", op, valid_inputs(op), backend="triton")
    assert "not available" in message


@pytest.mark.parametrize("op", ALL_OPS)
def test_cpp_missing_is_a_clear_error(op, monkeypatch):
    monkeypatch.setitem(backends._cache, "cpp", ImportError("simulated: extension not built"))
    message = expect_error(RuntimeError, "C++", op, valid_inputs(op), backend="cpp")
    assert "simulated: extension not built" in message


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("which", [0, 1])  # a huge mean, a huge variance
def test_values_whose_distances_overflow_float32_are_refused(op, which):
    # finite float32 inputs whose squared W2 overflows float32 once gave NaN silently (inf - inf)
    tensors = valid_inputs(op)
    names = OPS[op][1]
    name = names[which]
    tensors[name] = tensors[name] * (1e20 if which == 0 else 1e38)
    message = expect_error(ValueError, name, op, tensors)
    assert "overflow" in message
    # in float64 the same values are fine
    result = call(op, {k: v.double() for k, v in tensors.items()})
    for r in (result if isinstance(result, tuple) else (result,)):
        assert not torch.isnan(r).any()


def test_pairwise_w2_check_values_false_skips_only_the_value_read():
    # trusted internal callers (the attention layers) skip the host read of the values; shapes,
    # dtypes and devices are still checked, and the result of good inputs is the same
    torch.manual_seed(0)
    mean, cov = torch.randn(2, 5, 4), torch.rand(2, 5, 4) + 0.5
    same = mstein_fast.pairwise_w2(mean, cov, mean, cov, check_values=False)
    assert torch.equal(same, mstein_fast.pairwise_w2(mean, cov, mean, cov))
    bad = cov.clone()
    bad[0, 0, 0] = -1.0
    with pytest.raises(ValueError, match="variances > 0"):
        mstein_fast.pairwise_w2(mean, bad, mean, cov)
    out = mstein_fast.pairwise_w2(mean, bad, mean, cov, check_values=False, backend="torch")  # not read
    assert out.shape == (2, 5, 5)
    with pytest.raises(ValueError, match="same shape"):
        mstein_fast.pairwise_w2(mean, cov[..., :3], mean, cov, check_values=False)


def test_wasserstein_infonce_check_values_false_skips_only_the_value_read():
    # the models skip the host read of the values (their NaN shows in the loss); shapes, dtypes and
    # devices are still checked, and the loss of good inputs is the same
    torch.manual_seed(0)
    ma, ca, mb, cb = torch.randn(6, 4), torch.rand(6, 4) + 0.5, torch.randn(6, 4), torch.rand(6, 4) + 0.5
    kw = {"temperature": 0.5}
    assert torch.equal(mstein_fast.wasserstein_infonce(ma, ca, mb, cb, check_values=False, **kw),
                       mstein_fast.wasserstein_infonce(ma, ca, mb, cb, **kw))
    bad = ca.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite variances > 0"):
        mstein_fast.wasserstein_infonce(ma, bad, mb, cb, **kw)
    assert torch.isnan(mstein_fast.wasserstein_infonce(ma, bad, mb, cb, check_values=False, **kw))  # not read
    with pytest.raises(ValueError, match="same shape"):
        mstein_fast.wasserstein_infonce(ma, ca[:, :3], mb, cb, check_values=False, **kw)
