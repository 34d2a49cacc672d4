"""Which implementations are available, which one ``backend="auto"`` picks, and how the C++
kernels run: their thread count (:func:`threads`) and their output buffers (:func:`empty_buffer`)."""

from __future__ import annotations

import importlib
import os
import warnings

import torch

BACKENDS = ("auto", "cpp", "triton", "torch")

_cache: dict[str, object] = {}
_warned: set[str] = set()


def load_backend(name: str):
    """The backend's module (``"cpp"``: the compiled extension; ``"triton"``: the Triton kernels), or
    the ``ImportError`` saying why it is missing; loaded once."""
    if name not in _cache:
        try:
            if name == "cpp":
                from mstein_fast import _C

                _cache[name] = _C
            else:
                _cache[name] = importlib.import_module("mstein_fast.kernels")
        except ImportError as err:  # keep the reason for the error message
            _cache[name] = err
    return _cache[name]


def cpp_extension():
    """The compiled CPU extension module, or raise ``RuntimeError`` saying why it is missing."""
    mod = load_backend("cpp")
    if isinstance(mod, ImportError):
        raise RuntimeError(  # noqa: TRY004  (a missing backend, not a wrong argument type)
            f"the C++ backend is not available ({mod}); reinstall with `pip install .` so the extension is built"
        )
    return mod


def cpp_available() -> bool:
    """Whether the compiled CPU extension loaded (:func:`cpp_extension` says why not)."""
    return not isinstance(load_backend("cpp"), ImportError)


def triton_kernels():
    """The Triton kernel package, or raise ``RuntimeError`` saying why it is unavailable."""
    mod = load_backend("triton")
    if isinstance(mod, ImportError):
        raise RuntimeError(  # noqa: TRY004  (a missing backend, not a wrong argument type)
            f"the triton backend is not available ({mod}); install it with `pip install .[triton]`"
        )
    return mod


def available_backends() -> list[str]:
    """Names of the backends that can run here (``"torch"`` always can)."""
    names = ["torch"]
    if not isinstance(load_backend("cpp"), ImportError):
        names.append("cpp")
    if not isinstance(load_backend("triton"), ImportError):
        names.append("triton")
    return names


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` (one of :data:`BACKENDS`) to a concrete backend for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        if device.type == "cpu":
            if not isinstance(load_backend("cpp"), ImportError):
                return "cpp"
            _warn_once("cpp", "the C++ extension is not built; falling back to the slow PyTorch reference on CPU")
            return "torch"
        if device.type == "cuda":
            if not isinstance(load_backend("triton"), ImportError):
                return "triton"
            _warn_once("triton", "Triton is not installed; falling back to the PyTorch reference on CUDA")
            return "torch"
        return "torch"
    if backend == "cpp":
        cpp_extension()
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors only, got tensors on {device}")
    elif backend == "triton":
        triton_kernels()
        if device.type != "cuda" and not _interpreting():
            raise ValueError(
                f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got tensors on {device}"
            )
    return backend


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def empty_buffer(like: torch.Tensor, shape=None) -> torch.Tensor:
    """An uninitialised buffer with the dtype and device of ``like``, filled with NaN when
    ``MSTEIN_FAST_POISON=1`` (tests: any element a kernel fails to write shows up)."""
    out = torch.empty(like.shape if shape is None else shape, dtype=like.dtype, device=like.device)
    if os.environ.get("MSTEIN_FAST_POISON") == "1":
        out.fill_(float("nan"))
    return out


_forked = False  # this process is a fork() child of a process that imported mstein_fast


def _after_fork_in_child() -> None:
    """In a child started by ``fork()``: one thread, for the C++ kernels and for torch.

    GNU OpenMP (libgomp, which torch and the kernels share) is not fork-safe: a child forked after
    the parent ran a parallel region with more than one thread waits forever for the parent's
    worker threads the first time it enters a parallel region of more than one thread (measured
    with torch 2.13: torch's own elementwise ops and reductions hang there too). Parallel regions
    of one thread never touch the pool, so the child runs everything on its one thread."""
    global _forked
    _forked = True
    if torch.get_num_threads() > 1:
        torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def threads() -> int:
    """Threads the C++ kernels use: the same as PyTorch's intra-op pool, and 1 in a child started
    by ``fork()`` (:func:`_after_fork_in_child`: libgomp's pool does not survive a fork)."""
    return 1 if _forked else torch.get_num_threads()
