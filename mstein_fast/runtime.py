"""Run-time set-up shared by the commands: progress messages, the process group, seeds, the
device and backend checks, and the data of a configuration.

* :func:`log`: progress messages on stderr, from rank 0 only (stdout carries the final JSON);
* :func:`init_distributed`, :func:`is_main_process`: joining a ``torchrun`` job;
* :func:`seed_everything`, :func:`stream_seed`: the seeds (one independent random stream per
  ``(seed, epoch, stream)``, which makes a resumed run repeat the uninterrupted one);
* :func:`resolve_device`, :func:`check_backend`: a :class:`UserError` when the requested device
  or Wasserstein backend cannot run here;
* :func:`load_data`: the configured data file or the built-in synthetic data set;
* :func:`keep_freed_memory`: stop glibc from handing large freed blocks back to the kernel (a
  training step allocates and frees ~100 MB tensors; refaulting their pages cost ~20% of a CPU
  epoch).
"""

from __future__ import annotations

import ctypes
import os
import random
import sys
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from mstein_fast import distributed
from mstein_fast.backends import resolve_backend
from mstein_fast.data import Sequences, load_sequences, synthetic_sequences
from mstein_fast.errors import UserError

if TYPE_CHECKING:
    from mstein_fast.config import TrainConfig


_log_file: str | None = None  # a run's train.log: every message is appended there too
_pending: list[str] | None = None  # messages waiting for the run directory (see capture_log)


def log(message: str) -> None:
    """Progress messages go to stderr (stdout carries only the final JSON); rank 0 only. While a
    run logs to its ``train.log`` (:func:`log_to_file`) they are appended there too, time-stamped."""
    if is_main_process():
        print(message, file=sys.stderr, flush=True)
        log_file_only(message)


def log_file_only(message: str) -> None:
    """Append ``message`` to the run's ``train.log`` only (or keep it until there is one)."""
    stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
    if _log_file is not None:
        from mstein_fast.checkpoint import append_line

        append_line(stamped, _log_file)
    elif _pending is not None:
        _pending.append(stamped)


def capture_log() -> None:
    """Keep the messages from now on until :func:`log_to_file` names the file (a run logs before its
    directory exists)."""
    global _pending, _log_file
    _pending, _log_file = [], None


def log_to_file(path: str | None) -> None:
    """Append the kept messages and every later one to ``path`` (``None``: stop logging to a file)."""
    global _pending, _log_file
    if path is not None and is_main_process():
        from mstein_fast.checkpoint import append_line

        for line in _pending or ():
            append_line(line, path)
    _pending, _log_file = None, path


def is_main_process() -> bool:
    """True unless this is a rank other than 0 of a distributed job."""
    return distributed.world()[0] == 0


def init_distributed(device: str = "auto") -> bool:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment).

    The backend is NCCL when the job trains on CUDA, gloo otherwise; on CUDA each process uses
    ``cuda:LOCAL_RANK``. Returns whether this is a distributed run. Idempotent.

    The environment is checked before anything else happens: a ``WORLD_SIZE`` that is not a
    positive integer, or ``WORLD_SIZE`` > 1 without the ``RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` that torchrun sets for each process (a job not started by torchrun), or any of
    them malformed, is a :class:`UserError` (one line) rather than the rendezvous' traceback."""

    def _env_int(name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
        """The integer in the environment variable ``name`` (``default`` when unset), or a
        :class:`UserError` naming it when it is not an integer in ``[lo, hi]``."""
        text = os.environ.get(name)
        if text is None:
            return default
        try:
            value = int(text.strip(), 10)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise UserError(f"{name} must be an integer {bound}, got {text!r}")
        return value

    world = _env_int("WORLD_SIZE", 1, 1)
    if world <= 1:
        return dist.is_available() and dist.is_initialized()
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name, "").strip()]
        if missing:
            raise UserError(
                f"WORLD_SIZE={world} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: a "
                f"distributed job must be started with torchrun (e.g. `torchrun --nproc_per_node={world} -m "
                "mstein_fast train ...`), which sets them for each process; unset WORLD_SIZE to train in one process")
        _env_int("RANK", None, 0, world - 1)
        _env_int("MASTER_PORT", None, 1, 65535)
        local_rank = _env_int("LOCAL_RANK", 0, 0)
        cuda = device != "cpu" and not device.startswith("cpu") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return True


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) in one place."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for random stream ``stream`` of epoch ``epoch`` (independent streams)."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, stream]).generate_state(2, np.uint64)[0] >> 1)


def resolve_device(name: str) -> torch.device:
    """The torch device of ``name`` (auto, cpu, cuda, cuda:N); UserError if it cannot run here."""
    if name in ("auto", "cuda") and distributed.world()[1] > 1 and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())  # cuda:LOCAL_RANK under torchrun
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r} is not a torch device (try cpu or cuda)") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device {name!r} requested but there are only {torch.cuda.device_count()} CUDA devices")
    return device


def check_backend(backend: str, device: torch.device) -> None:
    """UserError if the Wasserstein ops' ``backend`` cannot run on ``device`` here (loads only that
    backend). ``auto`` on a CPU without the C++ extension (a source tree that was never built, a
    failed build) is refused too: it would train on the slow PyTorch reference without a word;
    ``--backend torch`` asks for that path on purpose."""
    if backend == "torch":
        return
    if backend == "auto":
        from mstein_fast.backends import load_backend

        missing = load_backend("cpp") if device.type == "cpu" else None
        if isinstance(missing, ImportError):
            raise UserError(f"the C++ extension is not built ({missing}): training on the CPU would run the slow "
                            "PyTorch reference. Install the package (`pip install .`; from a source tree, run it "
                            "from outside the tree or `pip install -e .`), or pass --backend torch to use the "
                            "reference on purpose")
        return
    try:
        resolve_backend(backend, device)
    except (ValueError, RuntimeError) as err:
        raise UserError(f"backend {backend!r} cannot run here: {err}; use --backend auto") from None


def load_data(cfg: TrainConfig) -> Sequences:
    """The configured data file, or the built-in synthetic data set."""
    if cfg.data is None:
        return synthetic_sequences(n_users=cfg.synthetic_users, n_items=cfg.synthetic_items,
                                   n_clusters=cfg.synthetic_clusters, seed=cfg.synthetic_seed)
    return load_sequences(cfg.data)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOC_ENV = "MSTEIN_FAST_MALLOC"
_malloc_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Keep freed memory in the process instead of returning it to the kernel (glibc only): large
    blocks come from the heap instead of fresh ``mmap``s, and the heap top is not trimmed.

    Why: PyTorch's CPU allocator calls ``malloc`` for every tensor, and glibc serves blocks above
    its mmap threshold (at most 32 MiB by default) with a fresh ``mmap`` that it unmaps on free, so
    every activation of a training step (the feed-forward's ``[tokens, 4h]`` tensors are ~100 MB
    here) is page-faulted anew: an elementwise pass over such a tensor took 4-6x its compute, and a
    CPU training epoch ran ~1.2x slower (measured: benchmarks/RESULTS.md). The cost: the
    process's resident memory stays at its peak instead of shrinking between steps.

    Done once per process, before the first large allocation matters; skipped (returns False) when
    ``MSTEIN_FAST_MALLOC=0``, when the user tuned malloc through glibc's own ``MALLOC_*``
    environment variables, or where there is no glibc ``mallopt`` (macOS, musl, Windows). Returns
    whether the setting is in effect."""
    global _malloc_tuned
    if _malloc_tuned is not None:
        return _malloc_tuned
    _malloc_tuned = False
    if os.environ.get(MALLOC_ENV, "1") == "0" or any(
            k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # glibc caps the threshold at half its arena heap size (32 MiB on 64-bit), so the 1 GiB request is
    # refused there and 32 MiB set: blocks above it still come from mmap (measured: they fault anew
    # mostly while the heap grows to its peak in the first epochs; benchmarks/RESULTS.md)
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 or mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1
    trim_ok = mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
    _malloc_tuned = mmap_ok and trim_ok
    return _malloc_tuned
