"""Checkpoints and the files of a run directory: what a checkpoint holds, how it is written and
read back, and the safe writes every run file goes through.

* the checkpoint format (:data:`CHECKPOINT_FORMAT`, the keys and types of :data:`_CHECKPOINT_KEYS`):
  :func:`make_checkpoint` builds one (``last.pt`` with the optimizer state, ``best.pt`` without),
  :func:`load_checkpoint` reads and validates one (weights only: a checkpoint's code is never
  run), :func:`load_model_state` and :func:`model_from_checkpoint` restore its model;
* the run directory: :class:`RunDirectory`, one run's directory and its files (preparing and locking
  it, restoring a resume from it, every write there, its log); :data:`RUN_FILES` (anything else
  there means it is not a run of ours) and the temporaries a killed write leaves (:data:`_TEMPORARY`);
* writes: :func:`save_atomic` and :func:`write_text_atomic` (temporary file beside the target, then
  rename: never a half-written file, never through a symbolic link), :func:`append_line`
  (``metrics.jsonl``), and :func:`write_failure`, the one-line :class:`UserError` of a failed
  write (naming the file, and the free space when the disk is full).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from typing import TYPE_CHECKING

import torch

from mstein_fast.config import FIELDS, check_resume, config_from_dict
from mstein_fast.errors import UserError
from mstein_fast.models import build_model, needs_users

if TYPE_CHECKING:
    from mstein_fast.config import TrainConfig
    from mstein_fast.data import Sequences

CHECKPOINT_FORMAT = 1

# the files of a run directory (anything else there means it is not a run of ours)
RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "test_metrics.json", "train.log", "train.lock",
             "tensorboard")
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


def read_metrics(path: str) -> tuple[list[dict], int | None]:
    """The epoch records of a run's ``metrics.jsonl``, and the number of a torn last line that was
    dropped (or None); read through the guarded reader (:mod:`mstein_fast.reader`: bounded lines,
    depth and digits; no NaN).

    A malformed last line after good ones is a line torn by a kill during its write: dropped (the run
    resumes without it). Any other line that is not an epoch record (an object with an integer ``epoch`` and a
    ``valid`` object) is a :class:`UserError` naming the file and the line."""
    from mstein_fast.reader import DataError, open_text_lines, parse_json_line

    records: list[dict] = []
    bad: tuple[int, str] | None = None
    try:
        with open_text_lines(path, what="a metrics.jsonl of mstein-fast train") as lines:
            for lineno, line in lines:
                if not line.strip():
                    continue
                if bad is not None:  # a bad line with more after it: not torn, corrupt
                    raise UserError(bad[1])
                try:
                    record = parse_json_line(line, path, lineno)
                except DataError as err:
                    reason = str(err).rpartition(f":{lineno}: ")[2] or str(err)
                    bad = (lineno, f"{path}:{lineno}: not an epoch record of mstein-fast train ({reason})")
                    continue
                epoch = record.get("epoch") if isinstance(record, dict) else None
                if not isinstance(epoch, int) or isinstance(epoch, bool) or not isinstance(record.get("valid"), dict):
                    bad = (lineno, f"{path}:{lineno}: not an epoch record of mstein-fast train")
                    continue
                records.append(record)
    except DataError as err:
        raise UserError(str(err)) from None
    if bad is not None and not records:  # nothing before it: not a torn last write, not a metrics file
        raise UserError(bad[1])
    return records, None if bad is None else bad[0]


class DirectoryLock:
    """An exclusive lock on a run (or tune) directory, held while a process writes there.

    ``DirectoryLock(path_of_lock_file, what)``: :meth:`acquire` takes an ``flock`` on the file
    (created, never through a symbolic link) and writes the holder's pid into it; a second process
    gets a :class:`UserError` naming the holder's pid. The kernel drops the lock when its process
    ends however it ends, so a lock file whose process is gone is simply taken over (with a notice
    naming the old pid). Readers (``evaluate``, ``recommend``, ``export``) take no lock. Where
    ``flock`` does not exist (Windows) nothing is locked."""

    def __init__(self, path: str, what: str):
        self.path, self.what, self.fd = path, what, None

    def acquire(self, notice=None) -> None:
        """Take the lock (UserError if another process holds it); ``notice(message)`` is told when
        a lock left by a process that is gone is taken over."""
        try:
            import fcntl
        except ImportError:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise UserError(f"{self.path} is a symbolic link; refusing to use it as a lock") from None
            raise write_failure(self.path, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            raise UserError(f"{os.path.dirname(self.path) or '.'} is in use by another mstein-fast {self.what}"
                            + (f" (pid {holder})" if holder else "") + "; wait for it to end or choose another "
                            "directory") from None
        old = _read_pid(fd)
        if old and old != os.getpid() and notice is not None:
            notice(f"taking over the lock {self.path} of process {old}, which is gone")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the lock itself is held; the pid is only informative
        self.fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a process opening it)."""
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        self.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and len(text) < 12 else None


def make_checkpoint(cfg: TrainConfig, data: Sequences, model: torch.nn.Module, *, epoch: int, best_score: float,
                    best_epoch: int, bad_epochs: int, optimizer: torch.optim.Optimizer | None = None,
                    run_dir: str | None = None) -> dict:
    """The checkpoint of ``model`` trained with ``cfg`` on ``data`` after ``epoch`` completed epochs
    (with the early-stopping state); with ``optimizer`` also its state (``last.pt``: what a resume needs).
    With ``run_dir`` it also records where the data file is, absolute and relative to ``run_dir``
    (:func:`mstein_fast.inference.locate_data` finds it again after a move)."""
    from mstein_fast.inference import data_location

    state = {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "n_items": data.n_items,
        "n_users": data.n_users,  # the user rows of the models with a user embedding (bprmf, caser)
        "data_fingerprint": data.fingerprint,
        "data_source": data.source,
        "model": model.state_dict(),
        "epoch": epoch,
        "best_score": best_score,
        "best_epoch": best_epoch,
        "bad_epochs": bad_epochs,
    }
    if run_dir is not None:
        state.update(data_location(cfg.data, run_dir))
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
    n_users = ckpt.get("n_users")  # (absent from checkpoints written before the user models)
    if n_users is not None and (not isinstance(n_users, int) or isinstance(n_users, bool) or not 1 <= n_users <= 10**9):
        raise UserError(f"{path}: not a mstein-fast checkpoint ('n_users' is malformed)")
    ckpt["config"] = config_from_dict(ckpt["config"], path)
    if needs_users(ckpt["config"].model) and n_users is None:
        raise UserError(f"{path}: not a mstein-fast checkpoint (model {ckpt['config'].model} has a user embedding, "
                        "but 'n_users' is missing)")
    ckpt["path"] = path
    return ckpt


def load_model_state(model, state: dict, path: str) -> None:
    """``model.load_state_dict(state)``; UserError naming ``path`` if the state does not fit the model."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: the saved model does not match its configuration ({first})") from None


def check_state_shapes(ckpt: dict) -> None:
    """UserError (one line, naming the file) unless the tensors of a :func:`load_checkpoint` result
    have the names and shapes its configuration implies. The expected ones come from the model
    built on the meta device (shapes only, nothing allocated), so a crafted file whose config
    disagrees with its tensors is refused before the config's model is allocated."""
    cfg, path = ckpt["config"], ckpt["path"]
    try:
        with torch.device("meta"):
            expected = build_model(cfg.model, ckpt["n_items"], cfg.model_config(),
                                   n_users=ckpt.get("n_users")).state_dict()
    except (ValueError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: its configuration makes no model ({first})") from None
    saved = ckpt["model"]
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    if missing or unexpected:
        what = f"{missing[0]} is missing" if missing else f"unexpected tensor {unexpected[0]}"
        raise UserError(f"{path}: the saved model does not match its configuration ({what})")
    for name, tensor in expected.items():
        value = saved[name]
        if tuple(value.shape) != tuple(tensor.shape) or value.is_floating_point() != tensor.is_floating_point():
            raise UserError(f"{path}: the saved model does not match its configuration ({name} is "
                            f"{list(value.shape)} {value.dtype}, its configuration implies {list(tensor.shape)} "
                            f"{tensor.dtype})")


def model_from_checkpoint(ckpt: dict, device: torch.device):
    """The model of a :func:`load_checkpoint` result, on ``device``, in eval mode; UserError if the
    model would not fit in this machine's memory (:func:`mstein_fast.memory.check_fits`), if its
    tensors do not match its configuration (:func:`check_state_shapes`), both checked before
    anything is allocated, or if its weights hold NaN or inf (a diverged or damaged checkpoint
    ranks nothing)."""
    from mstein_fast.memory import check_fits

    check_fits(ckpt["n_items"], ckpt["config"], ckpt["path"], n_users=ckpt.get("n_users"))
    check_state_shapes(ckpt)
    for name, value in ckpt["model"].items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(f"{ckpt['path']}: the weight {name} holds NaN or inf (a diverged or damaged "
                            "checkpoint); use another checkpoint")
    model = build_model(ckpt["config"].model, ckpt["n_items"], ckpt["config"].model_config(),
                        n_users=ckpt.get("n_users")).to(device)
    load_model_state(model, ckpt["model"], ckpt["path"])
    model.eval()
    return model


class RunDirectory:
    """The directory of one training run and every file the trainer keeps there (:data:`RUN_FILES`).

    ``RunDirectory(path, notice)``: ``notice(message)`` is told what the directory does on its own
    (a lock taken over, a torn metrics line dropped, a resume); the trainer passes its logger.

    * :meth:`prepare` creates (or checks) the directory, takes its lock (:class:`DirectoryLock` on
      ``train.lock``: a second writer is refused), removes the temporaries of a killed write, refuses
      a directory that is not a run of ours (or, without ``resume``, one that holds a run), and writes
      ``config.json`` (and, for a new run, an empty ``metrics.jsonl``);
    * :meth:`restore` reads and checks ``last.pt`` for a resume (nothing is written), and
      :meth:`trim_metrics` then cuts ``metrics.jsonl`` back to the checkpoint's epoch;
    * the writes, all atomic or appending, never through a symbolic link: :meth:`save_last`,
      :meth:`save_best`, :meth:`append_metrics`, :meth:`write_config`, :meth:`write_test_metrics`;
    * the run's log ``train.log``: :meth:`open_log`, :meth:`record_failure`, :meth:`close_log`;
    * :meth:`release` lets other processes write the directory again.
    """

    def __init__(self, path: str, notice=None):
        self.path = path
        self.notice = notice if notice is not None else (lambda message: None)
        self.last_path = os.path.join(path, "last.pt")
        self.best_path = os.path.join(path, "best.pt")
        self.metrics_path = os.path.join(path, "metrics.jsonl")
        self.config_path = os.path.join(path, "config.json")
        self.test_metrics_path = os.path.join(path, "test_metrics.json")
        self.log_path = os.path.join(path, "train.log")
        self.lock_path = os.path.join(path, "train.lock")
        self._lock: DirectoryLock | None = None

    # -- the directory -------------------------------------------------------------------------
    def prepare(self, config: dict, resume: bool = False) -> None:
        """Create or check the directory, lock it and write ``config.json`` (``config``: the run's
        configuration as a dict). A non-empty directory that is not a run of ours, or one holding
        symbolic links, is refused; so is a run without ``resume``, and a directory without
        ``last.pt`` with it. A new run (or one that never completed an epoch) starts with an empty
        ``metrics.jsonl``."""
        out = self.path
        if os.path.lexists(out) and not os.path.isdir(out):
            raise UserError(f"--output {out} exists and is not a directory; choose another --output")
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the run directory {out}: {err.strerror or err}") from None
        for name in RUN_FILES:
            path = os.path.join(out, name)
            if os.path.islink(path):
                raise UserError(f"{path} is a symbolic link; a run directory must hold its own files "
                                "(refusing to write through it): choose another --output")
        try:
            entries = os.listdir(out)
        except OSError as err:
            raise UserError(f"cannot read the run directory {out}: {err.strerror or err}") from None
        temporaries = [e for e in entries if _TEMPORARY.fullmatch(e)]
        entries = [e for e in entries if not _TEMPORARY.fullmatch(e)]
        if set(entries) <= set(RUN_FILES):  # (a foreign directory is refused below, without a lock file in it)
            # one process writes a run directory at a time: a second train / --resume there is refused
            # (first of all: the temporaries below may be the writes of a process still running)
            self._lock = DirectoryLock(self.lock_path, "train")
            self._lock.acquire(notice=self.notice)
            for name in temporaries:  # temporaries of a write that was killed
                if not os.path.isdir(os.path.join(out, name)):
                    _remove_quietly(os.path.join(out, name))
        if resume:
            if not os.path.isfile(self.last_path):
                raise UserError(f"{out}: nothing to resume (no last.pt)")
        elif os.path.exists(self.last_path):
            raise UserError(f"{out} already holds a run; continue it with --resume {out} "
                            "or choose another --output")
        elif entries and not self.is_unstarted_run(entries):
            shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
            raise UserError(f"--output {out} is not empty ({shown}) and is not a run of mstein-fast train; "
                            f"choose another --output (or continue a run with --resume DIR)")
        else:
            write_text_atomic("", self.metrics_path)
        self.write_config(config)

    def is_unstarted_run(self, entries: list[str]) -> bool:
        """Whether ``entries`` (the directory's names) are the files of a run of ours that never
        completed an epoch (a ``config.json`` of our keys and nothing but run files), which may be
        started again."""
        if not set(entries) <= set(RUN_FILES) or "config.json" not in entries:
            return False
        try:
            with open(self.config_path, encoding="utf-8") as fh:
                saved = json.load(fh)
        except (OSError, ValueError):
            return False
        return isinstance(saved, dict) and set(saved) <= set(FIELDS)

    def release(self) -> None:
        """Drop the directory's lock (other processes may then write there); the lock file stays."""
        if self._lock is not None:
            self._lock.release()

    # -- resuming ------------------------------------------------------------------------------
    def restore(self, cfg: TrainConfig, data_fingerprint: str, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer) -> dict:
        """Load ``last.pt`` into ``model`` and ``optimizer`` after checking that it belongs to ``cfg``
        (:func:`mstein_fast.config.check_resume`) and to the data of ``data_fingerprint``; returns
        its early-stopping state ``{"epoch", "best_score", "best_epoch", "bad_epochs"}``. Nothing is
        written (every process of a distributed run reads it; the directory must be visible to all)."""
        if not os.path.isfile(self.last_path):
            raise UserError(f"{self.path}: nothing to resume (no last.pt)")
        ckpt = load_checkpoint(self.last_path)
        try:
            check_resume(ckpt["config"], cfg)
        except UserError as err:
            raise UserError(f"{self.path}: {err}") from None
        if ckpt["data_fingerprint"] != data_fingerprint:
            raise UserError(f"{self.path} was trained on different data ({ckpt['data_source']}); cannot resume")
        if "optimizer" not in ckpt or not isinstance(ckpt["optimizer"], dict):
            raise UserError(f"{self.last_path}: no optimizer state (is it a best.pt?); cannot resume")
        load_model_state(model, ckpt["model"], self.last_path)
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError):
            raise UserError(f"{self.last_path}: the optimizer state does not match the model; cannot resume") from None
        return {k: ckpt[k] for k in ("epoch", "best_score", "best_epoch", "bad_epochs")}

    def trim_metrics(self, epoch: int, best_epoch: int) -> None:
        """Drop the ``metrics.jsonl`` lines of epochs after ``epoch`` (the checkpoint's: written
        before a kill) and a torn last line (a kill during its write); a corrupt line before the last
        is a UserError. ``best_epoch`` is only named in the notice of the resume."""
        kept = []
        if os.path.exists(self.metrics_path):
            try:
                records, torn = read_metrics(self.metrics_path)
            except UserError as err:
                raise UserError(f"{err}; cannot resume") from None
            if torn is not None:
                self.notice(f"{self.metrics_path}:{torn}: dropping a torn last line")
            kept = [json.dumps(record) + "\n" for record in records if record["epoch"] <= epoch]
        write_text_atomic("".join(kept), self.metrics_path)
        self.notice(f"resumed {self.path} after epoch {epoch} (best epoch {best_epoch})")

    def saved_epoch(self) -> int | None:
        """The epoch ``last.pt`` holds, read back from the disk (None if there is none or it is
        unreadable; a Ctrl-C during its write leaves the previous epoch there)."""
        if not os.path.isfile(self.last_path):
            return None
        try:
            return load_checkpoint(self.last_path)["epoch"]
        except (UserError, KeyboardInterrupt):
            return None

    # -- writes --------------------------------------------------------------------------------
    def save_last(self, state: dict) -> None:
        """Write ``last.pt`` (a :func:`make_checkpoint` result with the optimizer) atomically."""
        save_atomic(state, self.last_path)

    def save_best(self, state: dict) -> None:
        """Write ``best.pt`` (a :func:`make_checkpoint` result) atomically."""
        save_atomic(state, self.best_path)

    def append_metrics(self, record: dict) -> None:
        """Append one epoch's record to ``metrics.jsonl`` as a JSON line."""
        append_line(json.dumps(record), self.metrics_path)

    def write_config(self, config: dict) -> None:
        """Write ``config.json`` (the run's configuration as a dict) atomically."""
        write_text_atomic(json.dumps(config, indent=2) + "\n", self.config_path)

    def write_test_metrics(self, result: dict) -> None:
        """Write ``test_metrics.json`` (the final result) atomically."""
        write_text_atomic(json.dumps(result, indent=2) + "\n", self.test_metrics_path)

    # -- the log -------------------------------------------------------------------------------
    def open_log(self, header: str) -> None:
        """Send the run's messages (those kept since start-up too) to ``train.log``, time-stamped,
        and write ``header`` there only (:func:`mstein_fast.runtime.log_to_file`)."""
        from mstein_fast.runtime import log_file_only, log_to_file

        log_to_file(self.log_path)
        log_file_only(header)

    def record_failure(self, message: str) -> None:
        """Write why the run stopped (``message``: an error or an interruption) into ``train.log`` only."""
        from mstein_fast.runtime import log_file_only

        log_file_only(message)

    @staticmethod
    def close_log() -> None:
        """Stop writing messages to the run's ``train.log``."""
        from mstein_fast.runtime import log_to_file

        log_to_file(None)
