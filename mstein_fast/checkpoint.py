"""Checkpoints and the files of a run directory: what a checkpoint holds, how it is written and
read back, and the safe writes every run file goes through.

* the checkpoint format (:data:`CHECKPOINT_FORMAT`, the keys and types of :data:`_CHECKPOINT_KEYS`):
  :func:`make_checkpoint` builds one (``last.pt`` with the optimizer state, ``best.pt`` without),
  :func:`load_checkpoint` reads and validates one (weights only: a checkpoint's code is never
  run), :func:`load_model_state` and :func:`model_from_checkpoint` restore its model;
* the run directory: :data:`RUN_FILES` (anything else there means it is not a run of ours) and the
  temporaries a killed write leaves (:data:`_TEMPORARY`);
* writes: :func:`save_atomic` and :func:`write_text_atomic` (temporary file beside the target, then
  rename: never a half-written file, never through a symbolic link), :func:`append_line`
  (``metrics.jsonl``), and :func:`write_failure`, the one-line :class:`UserError` of a failed
  write (naming the file, and the free space when the disk is full).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from typing import TYPE_CHECKING

import torch

from mstein_fast.config import config_from_dict
from mstein_fast.errors import UserError
from mstein_fast.models import build_model

if TYPE_CHECKING:
    from mstein_fast.config import TrainConfig
    from mstein_fast.data import Sequences

CHECKPOINT_FORMAT = 1

# the files of a run directory (anything else there means it is not a run of ours)
RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "test_metrics.json")
_TEMPORARY = re.compile(r"(" + "|".join(re.escape(n) for n in RUN_FILES) + r")\.tmp\d+")

# what a checkpoint holds, with the types a real one has
_CHECKPOINT_KEYS = {"config": dict, "n_items": int, "data_fingerprint": str, "data_source": str, "model": dict,
                    "epoch": int, "best_score": (int, float), "best_epoch": int, "bad_epochs": int}


def write_failure(path: str, err: BaseException) -> UserError:
    """A one-line UserError for a failed write of ``path`` (naming the free space when the disk is full)."""
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        free = None
    text = str(err).strip()
    reason = getattr(err, "strerror", None) or (text.splitlines()[0] if text else type(err).__name__)
    full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "unexpected pos" in str(err)
    if full or (free is not None and free < 2**20):
        space = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
        return UserError(f"cannot write {path}: no space left on the device ({space}); free some disk space, then "
                         "continue with --resume (the last completed epoch is kept)")
    return UserError(f"cannot write {path}: {reason}")


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def save_atomic(obj, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file.
    A failed write (full disk, read-only place) is a UserError naming the file; ``path`` is unchanged."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        _remove_quietly(tmp)  # never write through a link left there
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as RuntimeError "unexpected pos ..."
        raise write_failure(path, err) from None
    finally:
        if os.path.lexists(tmp):
            _remove_quietly(tmp)


def write_text_atomic(text: str, path: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename (a link at ``path`` is replaced,
    not followed); UserError naming the file if the write fails."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        _remove_quietly(tmp)
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as err:
        raise write_failure(path, err) from None
    finally:
        if os.path.lexists(tmp):
            _remove_quietly(tmp)


def append_line(text: str, path: str) -> None:
    """Append one line to ``path`` (created if missing), never through a symbolic link."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"{path} is a symbolic link; a run directory must hold its own files") from None
        raise write_failure(path, err) from None


def make_checkpoint(cfg: TrainConfig, data: Sequences, model: torch.nn.Module, *, epoch: int, best_score: float,
                    best_epoch: int, bad_epochs: int, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """The checkpoint of ``model`` trained with ``cfg`` on ``data`` after ``epoch`` completed epochs
    (with the early-stopping state); with ``optimizer`` also its state (``last.pt``: what a resume needs)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "n_items": data.n_items,
        "data_fingerprint": data.fingerprint,
        "data_source": data.source,
        "model": model.state_dict(),
        "epoch": epoch,
        "best_score": best_score,
        "best_epoch": best_epoch,
        "bad_epochs": bad_epochs,
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return state


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint file (or ``best.pt`` of a run directory); UserError if it is not one."""
    if os.path.isdir(path):
        path = os.path.join(path, "best.pt")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  any failure to unpickle means: not one of our checkpoints
        # (torch's own message advises weights_only=False, i.e. running the file's code: never do that)
        raise UserError(f"{path}: not a mstein-fast checkpoint (unreadable as a weights-only torch file: "
                        f"{type(err).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a mstein-fast checkpoint (format {CHECKPOINT_FORMAT})")
    for key, kind in _CHECKPOINT_KEYS.items():
        if not isinstance(ckpt.get(key), kind) or isinstance(ckpt.get(key), bool):
            raise UserError(f"{path}: not a mstein-fast checkpoint ({key!r} is missing or malformed)")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model"].items()):
        raise UserError(f"{path}: not a mstein-fast checkpoint (the model state is malformed)")
    if not 1 <= ckpt["n_items"] <= 10**8 or ckpt["epoch"] < 0:
        raise UserError(f"{path}: not a mstein-fast checkpoint (n_items {ckpt['n_items']}, epoch {ckpt['epoch']})")
    ckpt["config"] = config_from_dict(ckpt["config"], path)
    ckpt["path"] = path
    return ckpt


def load_model_state(model, state: dict, path: str) -> None:
    """``model.load_state_dict(state)``; UserError naming ``path`` if the state does not fit the model."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: the saved model does not match its configuration ({first})") from None


def model_from_checkpoint(ckpt: dict, device: torch.device):
    """The model of a :func:`load_checkpoint` result, on ``device``, in eval mode."""
    model = build_model(ckpt["config"].model, ckpt["n_items"], ckpt["config"]).to(device)
    load_model_state(model, ckpt["model"], ckpt["path"])
    model.eval()
    return model
