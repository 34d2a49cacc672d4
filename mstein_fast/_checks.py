"""Argument validation shared by the public ops: clear errors that name the argument."""

from __future__ import annotations

import math
import numbers
import os

import torch

from mstein_fast.errors import NonFiniteError

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)

# torch.compile traces this as the constant True (torch < 2.3 has no torch.compiler.is_compiling)
is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


# size settings read from the environment: name -> default in megabytes (docs/cli.md, "Settings")
ENV_MEGABYTES = {"MSTEIN_FAST_KEEP_MATRIX_MB": 64, "MSTEIN_FAST_DISTRIBUTED_TILE_MB": 32}


def env_megabytes(name: str) -> int:
    """The size in bytes set by the environment variable ``name`` of :data:`ENV_MEGABYTES` (in
    megabytes, a non-negative number; its default when unset). Read at each call, so that a bad
    value fails the operation that uses it, with a ``ValueError`` naming the variable, and not
    every import (the CLI checks them all before it starts: :func:`check_environment`)."""
    text = os.environ.get(name)
    if text is None:
        return int(ENV_MEGABYTES[name] * 2**20)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative number of megabytes, got {text!r}")
    return int(value * 2**20)


ISA_ENV = "MSTEIN_FAST_ISA"
ISA_NAMES = ("avx512", "avx2", "generic")  # the C++ builds (csrc/module.cpp), in its spelling


def check_isa_setting() -> None:
    """Raise ``ValueError`` unless ``MSTEIN_FAST_ISA`` is unset, or names a build of the C++ kernels
    (``avx512``, ``avx2``, ``generic``: lower case, as csrc/module.cpp reads it) that runs here.

    The extension reads the variable once, when its first kernel runs, and would raise there (in
    the middle of a training run); this check makes that choice now. Nothing is loaded when the
    variable is unset, nor when the extension is not built (then no kernel reads it)."""
    value = os.environ.get(ISA_ENV)
    if value is None:
        return
    if value not in ISA_NAMES:
        hint = " (lower case)" if value.lower() in ISA_NAMES else " or leave it unset" if not value.strip() else ""
        raise ValueError(f"{ISA_ENV} must be one of {', '.join(ISA_NAMES)}{hint}, got {value!r}")
    from mstein_fast.backends import load_backend

    ext = load_backend("cpp")
    if isinstance(ext, ImportError):
        return
    try:
        ext.isa()  # selects the kernel table: raises if the CPU cannot run the forced build
    except RuntimeError as err:
        raise ValueError(str(err)) from None


def check_environment() -> None:
    """Raise ``ValueError`` naming the first malformed ``MSTEIN_FAST_*`` setting, if any: the size
    settings of :data:`ENV_MEGABYTES` and the instruction-set choice (:func:`check_isa_setting`)."""
    for name in ENV_MEGABYTES:
        env_megabytes(name)
    check_isa_setting()


def check_choice(name: str, value, choices) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    try:
        ok = value in choices
    except TypeError:  # unhashable (e.g. a list) against a dict or set of choices
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


def is_transformed(t) -> bool:
    """Whether ``t`` is a tensor wrapped by a ``torch.func`` transform (``vmap``, ``grad``, ``jacrev``,
    ...): it has no memory of its own for a kernel to read. False while ``torch.compile`` traces."""
    return (not is_compiling() and isinstance(t, torch.Tensor) and _functorch_wrapped is not None
            and _functorch_wrapped(t))


_functorch = getattr(torch._C, "_functorch", None)
_functorch_wrapped = getattr(_functorch, "is_functorch_wrapped_tensor", None)
_functorch_unwrap = getattr(_functorch, "get_unwrapped", None)


def _plain(t: torch.Tensor) -> torch.Tensor | None:
    """The tensor holding the values of ``t``, a ``torch.func``-wrapped tensor or a plain one (all
    vmapped slices at once); None where it cannot be reached or has no values (meta tensors)."""
    while is_transformed(t):
        if _functorch_unwrap is None:
            return None
        try:
            t = _functorch_unwrap(t)
        except RuntimeError:
            return None
    return None if t.device.type == "meta" else t


def differentiable_temperature(temperature) -> bool:
    """Whether ``temperature`` is a tensor the loss must be differentiated by: one that requires
    grad (with grad mode on) or one traced by a ``torch.func`` transform."""
    return isinstance(temperature, torch.Tensor) and (
        (temperature.requires_grad and torch.is_grad_enabled()) or is_transformed(temperature))


def check_temperature(temperature, dtype: torch.dtype | None = None, *, tensor_ok: bool = False):
    """Return ``temperature`` as a positive finite float or raise ``ValueError``.

    A one-element tensor that does not require grad is read as a float (a host sync). A tensor that
    requires grad (:func:`differentiable_temperature`) is refused with a ``TypeError`` unless
    ``tensor_ok``, in which case it is checked the same way and returned as a 0-dim tensor (so that
    the caller computes the loss as a differentiable function of it).

    With ``dtype`` (the inputs' dtype), also require ``1 / temperature`` to be finite in the
    precision the loss is computed in (float32 for every dtype but float64): below ~2.9e-39 the
    logits are inf and the loss NaN.
    """
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a scalar, got a tensor of shape {tuple(temperature.shape)}")
        if differentiable_temperature(temperature):
            if not tensor_ok:
                raise TypeError("temperature: a tensor that requires grad is not supported here (its gradient "
                                "would be lost); pass a float or temperature.detach()")
            plain = _plain(temperature)
            if plain is not None:  # under vmap over the temperature: every vmapped value
                values = plain.detach().double()
                check_temperature(float(values.min()), dtype)
                check_temperature(float(values.max()), dtype)
            return temperature.reshape(())
        temperature = temperature.item()
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    if dtype is not None:
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        if not 1.0 / temperature <= torch.finfo(compute).max:
            raise ValueError(f"temperature {temperature} is too small: 1 / temperature overflows {compute}")
    return temperature


def check_gaussians(pairs, *, same_rows: bool = False, min_dim: int = 2, values: bool = True) -> None:
    """Validate ``[(mean_name, mean, cov_name, cov), ...]`` groups of diagonal Gaussians.

    Checks types, dtypes (floating, all equal), devices (all equal), shapes (mean and cov equal,
    at least ``min_dim`` dims, leading batch dims and D equal across groups, N equal across groups
    when ``same_rows``), non-empty, finite means and finite positive covariances.

    Raises ``TypeError`` or ``ValueError`` naming the argument; the value checks raise
    :class:`~mstein_fast.errors.NonFiniteError` (a ``ValueError``) where a tensor holds NaN or
    inf, or values whose squared W2 distances overflow float32, and a plain ``ValueError`` for a
    finite covariance <= 0.

    Under ``torch.compile`` the value checks (finite, ``cov > 0``) are skipped: they read the
    values on the host, which would break the graph; the rest is checked while tracing. With
    ``values=False`` they are skipped too (no host sync: for trusted internal callers), and so they
    are for meta tensors (no values). Under ``torch.func`` transforms (``vmap``, ``grad``) they read
    the underlying tensors (all vmapped slices at once).
    """
    first = None
    for mean_name, mean, cov_name, cov in pairs:
        for name, t in ((mean_name, mean), (cov_name, cov)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {t.dtype}")
            if t.dim() < min_dim:
                raise ValueError(f"{name} must have at least {min_dim} dims [..., N, D], got shape {tuple(t.shape)}")
        if mean.shape != cov.shape:
            raise ValueError(f"{mean_name} and {cov_name} must have the same shape, got {tuple(mean.shape)} and {tuple(cov.shape)}")
        if first is None:
            first = (mean_name, mean)
        ref_name, ref = first
        for name, t in ((mean_name, mean), (cov_name, cov)):
            if t.dtype != ref.dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}: all inputs must share one dtype")
            if t.device != ref.device:
                raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}: all inputs must be on one device")
            if t.dim() != ref.dim() or t.shape[:-2] != ref.shape[:-2]:
                raise ValueError(f"{name} has shape {tuple(t.shape)}: its batch dims must equal those of {ref_name} {tuple(ref.shape)}")
            if t.shape[-1] != ref.shape[-1]:
                raise ValueError(f"{name} has D={t.shape[-1]} but {ref_name} has D={ref.shape[-1]}: the dimension D must match")
            if same_rows and t.shape[-2] != ref.shape[-2]:
                raise ValueError(f"{name} has N={t.shape[-2]} rows but {ref_name} has {ref.shape[-2]}: the two views must have the same N")
            if t.numel() == 0:
                raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): N, D and batch dims must be at least 1")
    if is_compiling() or not values:
        return
    if any(t.device.type == "meta" for _, mean, _, cov in pairs for t in (mean, cov)):
        return  # shapes only: nothing to read
    dims = [mean.shape[-1] for _, mean, _, _ in pairs]  # D (an unwrapped vmapped tensor may hold its batch dim last)
    if any(is_transformed(t) for _, mean, _, cov in pairs for t in (mean, cov)):
        plain = [(mean_name, _plain(mean), cov_name, _plain(cov)) for mean_name, mean, cov_name, cov in pairs]
        if all(mean is not None and cov is not None for _, mean, _, cov in plain):
            pairs = plain
        else:
            return  # (a torch without functorch's unwrapping: nothing can be read)
    # One pass per tensor (min and max propagate NaN, and show +-inf) and one host sync in all.
    # Stats in float32, or float64 for float64 inputs: exact, so tiny or huge float64 values are judged as they are.
    wide = torch.float64 if pairs[0][1].dtype == torch.float64 else torch.float32
    stats = torch.stack([v.to(wide) for _, mean, _, cov in pairs for t in (mean, cov) for v in torch.aminmax(t)])
    lo_hi = stats.tolist()
    for i, (mean_name, mean, cov_name, cov) in enumerate(pairs):
        m_lo, m_hi, c_lo, c_hi = lo_hi[4 * i : 4 * i + 4]
        if not (math.isfinite(m_lo) and math.isfinite(m_hi)):
            raise NonFiniteError(f"{mean_name} contains NaN or inf")
        if not (c_lo > 0 and math.isfinite(c_hi)):
            bad = cov[~(torch.isfinite(cov) & (cov > 0))].flatten()[0].item()
            error = ValueError if math.isfinite(c_lo) and math.isfinite(c_hi) else NonFiniteError
            raise error(f"{cov_name} must hold finite variances > 0 (found {bad}); apply e.g. ELU(x) + 1 first")
    if wide == torch.float32:  # the kernels compute in float32: W up to 4 D max(|mean|^2 + cov) must not overflow
        for i, (mean_name, mean, cov_name, cov) in enumerate(pairs):
            m_lo, m_hi, _, c_hi = lo_hi[4 * i : 4 * i + 4]
            big_mean = max(abs(m_lo), abs(m_hi))
            if 4.0 * dims[i] * (big_mean * big_mean + c_hi) > _FLOAT32_MAX:
                name, value = (mean_name, big_mean) if big_mean * big_mean >= c_hi else (cov_name, c_hi)
                raise NonFiniteError(f"{name} holds values up to {value:.3g}: the squared W2 distances of such Gaussians "
                                 "overflow float32; rescale them or pass float64 tensors")
