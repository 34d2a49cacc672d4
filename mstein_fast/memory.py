"""Memory sized before it is allocated: a model's parameters and the tensors of a data set.

A configuration can ask for more memory than any machine has (``--hidden-size 16384`` with a
million items is 131 GB of embedding tables; a crafted checkpoint can ask for terabytes), and
PyTorch's allocator then fails with a traceback deep inside ``nn.Embedding``, or the kernel's
out-of-memory killer ends the process. The commands therefore estimate what they are about to
allocate and compare it with the memory this machine has available, before allocating:

* :func:`model_bytes` ``(n_items, cfg, n_users=None)``: the bytes of a model's parameters
  (float32), counted from the layer sizes: the item tables dominate (``[n_items + 1,
  hidden_size]`` each: two for the distributional models ``mstein`` and ``stosa``, means and
  variances, one for SASRec's backbone), then the position tables (``[max_seq_length,
  hidden_size]``, as many) and the encoder layers (``24 hidden^2`` per layer for the STOSA
  backbone, ``12 hidden^2`` for SASRec's); the other models are built on the meta device (no
  memory) and their tensors counted;
* :func:`split_bytes` ``(n_users, max_seq_length, longest)``: the padded tensors of the
  leave-one-out split (``[users, max_seq_length]`` int64, four of them, and the full training
  inputs, ``[users, longest]``);
* :func:`synthetic_bytes` ``(n_users, max_length)``: the built-in synthetic data set;
* :func:`available_bytes`: the memory this process may still use (``MemAvailable`` of
  ``/proc/meminfo``, bounded by the cgroup's limit where one is set; else the free physical
  pages of ``os.sysconf``; None when neither can be read: the checks are then skipped);
* :func:`check_fits` ``(n_items, cfg, what, factor)``: a one-line :class:`UserError` when
  ``factor`` times :func:`model_bytes` exceeds :func:`available_bytes` (``factor``
  :data:`TRAINING_FACTOR` = 4 while training: the parameters, their gradients and Adam's two
  moments; :data:`INFERENCE_FACTOR` = 1 for evaluation and recommendation);
* :func:`check_bytes` ``(need, what, detail)``: the same check for any other estimate.

The estimates are lower bounds of the real use (activations, the optimizer's temporaries and
the data come on top), so a refused request would certainly not have fitted; a request that
passes may still be too large. This module imports nothing of the package at import time but
:mod:`mstein_fast.errors` (the meta count imports :mod:`mstein_fast.models` when it is used).
"""

from __future__ import annotations

import os

from mstein_fast.errors import UserError

__all__ = [
    "FLOAT_BYTES",
    "INFERENCE_FACTOR",
    "TRAINING_FACTOR",
    "available_bytes",
    "check_bytes",
    "check_fits",
    "model_bytes",
    "parameter_count",
    "split_bytes",
    "synthetic_bytes",
]

FLOAT_BYTES = 4  # float32 parameters
INDEX_BYTES = 8  # int64 item ids
TRAINING_FACTOR = 4  # parameters + gradients + Adam's exp_avg and exp_avg_sq
INFERENCE_FACTOR = 1
DISTRIBUTIONAL = ("mstein", "stosa")  # the STOSA backbone: means and variances of every table
COUNTED = ("mstein", "stosa", "sasrec", "coserec", "coserec-wdm")  # counted from their layer sizes
GIB = 2**30


def parameter_count(n_items: int, cfg, n_users: int | None = None) -> int:
    """The number of parameters of model ``cfg.model`` for items ``1..n_items`` (``cfg``: a
    :class:`~mstein_fast.config.TrainConfig`). The STOSA and SASRec backbones (:data:`COUNTED`)
    are counted from their layer sizes (:mod:`mstein_fast.models.stosa`, ``.sasrec``); any other
    model is built on the meta device (shapes only, nothing allocated) and its tensors counted,
    with ``n_users`` for a model with a user embedding."""
    if cfg.model not in COUNTED:
        counted = _meta_count(n_items, cfg, n_users)
        if counted is not None:
            return counted
    h, length, layers = int(cfg.hidden_size), int(cfg.max_seq_length), int(cfg.num_hidden_layers)
    streams = 2 if cfg.model in DISTRIBUTIONAL else 1
    tables = streams * (int(n_items) + 1) * h + streams * length * h
    ffn = (h * 4 * h + 4 * h) + (4 * h * h + h) + 2 * h  # two linear layers and a LayerNorm
    if streams == 2:  # mean and cov projections (qkv + output) and a LayerNorm; a feed-forward block per stream
        layer = 2 * (3 * h * h + 3 * h) + 2 * (h * h + h) + 2 * h + 2 * ffn
    else:
        layer = (3 * h * h + 3 * h) + (h * h + h) + 2 * h + ffn
    return tables + layers * layer + 2 * h  # (the embedding LayerNorm)


def _meta_count(n_items: int, cfg, n_users: int | None) -> int | None:
    """The floating-point elements of model ``cfg.model`` built on the meta device; None if it
    cannot be built so (the layer-size count is used then)."""
    try:
        import torch

        from mstein_fast.models import build_model

        with torch.device("meta"):
            model = build_model(cfg.model, n_items, cfg.model_config(), n_users=n_users)
        return sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    except Exception:  # noqa: BLE001  (an invalid combination fails later, with its own message)
        return None


def model_bytes(n_items: int, cfg, n_users: int | None = None) -> int:
    """The bytes of the parameters of model ``cfg.model`` for ``n_items`` items (float32; see
    :func:`parameter_count`)."""
    return FLOAT_BYTES * parameter_count(n_items, cfg, n_users)


def split_bytes(n_users: int, max_seq_length: int, longest: int) -> int:
    """The bytes of the padded tensors of the leave-one-out split of ``n_users`` users
    (:func:`mstein_fast.data.leave_one_out`): the training inputs and targets, the validation and
    test inputs, ``[n_users, max_seq_length]`` int64 each, and the full training inputs
    ``[n_users, longest]``."""
    return INDEX_BYTES * int(n_users) * (4 * int(max_seq_length) + max(1, int(longest)))


def synthetic_bytes(n_users: int, max_length: int) -> int:
    """An upper estimate of the bytes of the built-in synthetic data set of ``n_users`` users of
    at most ``max_length`` items: one int64 array per user (with NumPy's ~100 bytes of overhead)
    and a set of the user's items while it is drawn."""
    return int(n_users) * (INDEX_BYTES * int(max_length) + 112)


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                if name == key:
                    fields = rest.split()
                    return int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """What the process's cgroup (v2) still allows: ``memory.max - memory.current``, or None."""
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as fh:
            current = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    if not limit.isdigit():  # "max": no limit
        return None
    return max(0, int(limit) - current)


def available_bytes() -> int | None:
    """The memory this process may still allocate: ``MemAvailable`` of ``/proc/meminfo`` (bounded
    by the cgroup's limit, if any), else the free physical pages (``os.sysconf``); None when none
    of them can be read (the checks are then skipped)."""
    available = _meminfo("MemAvailable")
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            try:
                available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (AttributeError, ValueError, OSError):
                return None
    room = _cgroup_room()
    if room is not None:
        available = min(available, room)
    return available if available > 0 else None


def _size(n: float) -> str:
    """``n`` bytes in words: ``"12.3 GiB"``, ``"6,400 GiB"``, ``"1.5 MiB"``."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale / 10 or unit == "KiB":
            value = n / scale
            return (f"{value:.3g}" if value < 1000 else f"{value:,.0f}") + " " + unit
    return f"{n} bytes"


def check_bytes(need: int, what: str, detail: str, hint: str = "") -> None:
    """Raise :class:`UserError` if ``need`` bytes exceed :func:`available_bytes` (nothing when the
    available memory is unknown). The one-line message: ``<what> needs about X GiB (<detail>),
    more than this machine's available memory (Y GiB)[; <hint>]`` (sizes in GiB, or MiB and KiB
    where smaller)."""
    available = available_bytes()
    if available is None or need <= available:
        return
    raise UserError(f"{what} needs about {_size(need)} ({detail}), more than this machine's available memory "
                    f"({_size(available)})" + (f"; {hint}" if hint else ""))


def check_fits(n_items: int, cfg, what: str, factor: int = INFERENCE_FACTOR, n_users: int | None = None) -> None:
    """Refuse, with a one-line :class:`UserError` starting with ``what`` (a command, a checkpoint's
    path), a model whose parameters times ``factor`` (:data:`TRAINING_FACTOR` while training,
    :data:`INFERENCE_FACTOR` otherwise) do not fit in the available memory; call it before the
    model is built (``n_users``: the training data's, for a model with a user embedding). Nothing
    is checked when the available memory cannot be read."""
    if available_bytes() is None:
        return
    params = model_bytes(n_items, cfg, n_users)
    tables = 2 if cfg.model in DISTRIBUTIONAL else 1
    shape = (f"{n_items} items x hidden_size {cfg.hidden_size} x {tables} table{'s' if tables > 1 else ''}"
             if cfg.model in COUNTED else f"{n_items} items" + (f", {n_users} users" if n_users else "")
             + f", hidden_size {cfg.hidden_size}")
    detail = (f"{shape}, float32: {_size(params)} of parameters"
              + (f", x{factor} for their gradients and Adam's moments" if factor == TRAINING_FACTOR
                 else f", x{factor}" if factor != 1 else ""))
    check_bytes(params * factor, f"{what}: the {cfg.model} model", detail,
                "use a smaller hidden_size (or fewer items)" if factor == TRAINING_FACTOR
                else "this machine cannot load it")
