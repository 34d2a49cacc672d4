"""The Optuna runner of ``mstein-fast tune`` (the package docstring says what a tune does):
:func:`run_tune` checks the settings and the tune directory and runs one session, :class:`_Search`
its trials (each a :class:`~mstein_fast.train.Trainer` run, scored on validation only); the study's
storage (SQLite ``study.db`` or ``--storage URL``) and its failures, the pruners (:func:`_pruner`),
the TPE sampler of each trial seeded from ``(seed, trial number)`` (:func:`_sampler`), and the
tune directory's files (``tune.json``, ``trials.csv``, ``curves.csv``, ``best.json``, the figures).
The search space itself is :mod:`mstein_fast.tune.space`'s.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import re
import socket
import sys
import time

from mstein_fast.config import FIELDS, ConfigError, build_config, coerce
from mstein_fast.errors import Diverged, Interrupted, UserError
from mstein_fast.tune.space import check_against, check_space, default_space

# the config keys that --resume may change (the rest would change what the trials compute); the
# trainer's own list minus epochs and patience (a trial's budget), data checked by its fingerprint
RESUME_KEYS = ("progress", "num_threads", "eval_batch_size", "device", "data")

PRUNERS = ("median", "halving", "none")
DEFAULT_PRUNE_FROM = 20
DEFAULT_STARTUP_TRIALS = 5
STUDY_NAME = "mstein-fast-tune"
SETTINGS_FORMAT = 1
def require_optuna():
    """The ``optuna`` module; :class:`UserError` (exit status 2 on the command line) if it is not installed."""
    try:
        import optuna
    except ImportError:
        raise UserError('mstein-fast tune needs optuna: pip install "mstein-fast[tune]" (or pip install optuna)') from None
    return optuna


def _suggest(trial, name: str, spec: dict):
    if spec["type"] == "categorical":
        return trial.suggest_categorical(name, spec["choices"])
    if spec["type"] == "float":
        return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step"))
    return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step", 1))


def _pruner(optuna, settings: dict):
    if settings["name"] == "median":
        # step = epoch (1-based): no decision before epoch prune_from
        return optuna.pruners.MedianPruner(n_startup_trials=settings["startup_trials"],
                                           n_warmup_steps=settings["prune_from"])
    if settings["name"] == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=settings["prune_from"])
    return optuna.pruners.NopPruner()


def _sampler(optuna, seed: int, number: int, worker: str | None = None):
    """The TPE sampler of trial ``number``: seeded from ``(seed, number)`` (same samples after a resume);
    with a shared study (``--storage``) also from the ``worker``, so that two machines asking at the
    same moment do not draw the same values."""
    import zlib

    import numpy as np

    entropy = [seed, number] + ([zlib.crc32(worker.encode())] if worker else [])
    return optuna.samplers.TPESampler(seed=int(np.random.SeedSequence(entropy).generate_state(1)[0]))


def masked_url(url: str) -> str:
    """A storage URL with its password replaced by ``***`` (what may be written into tune.json and messages)."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _write_text(path: str, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (:mod:`mstein_fast.writer`: a temporary beside it, then
    a rename; a symbolic link at ``path`` is replaced, never written through); a failed write is a
    one-line :class:`UserError` naming the file."""
    from mstein_fast.checkpoint import write_failure
    from mstein_fast.writer import write_text_atomic

    try:
        write_text_atomic(path, text)
    except OSError as err:
        raise write_failure(path, err) from None


def _write_json(obj, path: str) -> None:
    _write_text(path, json.dumps(obj, indent=2) + "\n")


MAX_COUNT = 10**9  # the most trials, and the largest epoch or trial count a pruner setting may hold
_SETTINGS_KEYS = ("format", "values", "space", "pruner", "data_fingerprint", "trials", "storage")
_PRUNER_KEYS = ("name", "prune_from", "startup_trials")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_settings(path: str) -> dict:
    """The settings of the tune in ``path`` (``tune.json``), read through the guarded reader and
    checked field by field: :class:`UserError` (one line naming the file and the field) for a file
    that is not one, or whose any field has the wrong type or an invalid value. A missing
    ``storage`` (files of older versions) means the study is ``study.db`` beside it."""
    from mstein_fast.reader import DataError, file_label, read_json, show

    label = file_label(path)
    try:
        settings = read_json(path, what="a tune.json of mstein-fast tune")
    except DataError as err:
        raise UserError(f"{err} (not a tune settings file)") from None
    if not isinstance(settings, dict):
        raise UserError(f"{label}: not a tune settings file (expected a JSON object, got {type(settings).__name__})")
    fmt = settings.get("format")
    if not _is_int(fmt) or fmt != SETTINGS_FORMAT:
        raise UserError(f"{label}: not a tune settings file of this version (\"format\" {show(fmt)}, expected "
                        f"{SETTINGS_FORMAT})")
    settings.setdefault("storage", None)
    missing = [k for k in _SETTINGS_KEYS if k not in settings]
    if missing:
        raise UserError(f"{label}: not a tune settings file (\"{missing[0]}\" is missing)")
    unknown = sorted(set(settings) - set(_SETTINGS_KEYS))
    if unknown:
        raise UserError(f"{label}: unknown field {show(unknown[0])} (a tune.json holds {', '.join(_SETTINGS_KEYS)})")

    def bad(field: str, expected: str, value) -> UserError:
        return UserError(f"{label}: \"{field}\" must be {expected}, got {show(value)}")

    trials = settings["trials"]
    if not _is_int(trials) or not 1 <= trials <= MAX_COUNT:
        raise bad("trials", f"a positive integer (at most {MAX_COUNT})", trials)
    pruner = settings["pruner"]
    if not isinstance(pruner, dict):
        raise bad("pruner", 'an object {"name": ..., "prune_from": ..., "startup_trials": ...}', pruner)
    for key in _PRUNER_KEYS:
        if key not in pruner:
            raise UserError(f"{label}: \"pruner\": \"{key}\" is missing")
    unknown = sorted(set(pruner) - set(_PRUNER_KEYS))
    if unknown:
        raise UserError(f"{label}: \"pruner\": unknown field {show(unknown[0])} (allowed: {', '.join(_PRUNER_KEYS)})")
    if pruner["name"] not in PRUNERS or not isinstance(pruner["name"], str):
        raise bad("pruner\": \"name", f"one of {', '.join(PRUNERS)}", pruner["name"])
    if not _is_int(pruner["prune_from"]) or not 1 <= pruner["prune_from"] <= MAX_COUNT:
        raise bad("pruner\": \"prune_from", f"an integer in [1, {MAX_COUNT}]", pruner["prune_from"])
    if not _is_int(pruner["startup_trials"]) or not 0 <= pruner["startup_trials"] <= MAX_COUNT:
        raise bad("pruner\": \"startup_trials", f"an integer in [0, {MAX_COUNT}]", pruner["startup_trials"])
    if not isinstance(settings["data_fingerprint"], str):
        raise bad("data_fingerprint", "a string", settings["data_fingerprint"])
    storage = settings["storage"]
    if storage is not None and not (isinstance(storage, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", storage)):
        raise bad("storage", "null or a database URL", storage)
    values = settings["values"]
    if not isinstance(values, dict):
        raise bad("values", "an object of config keys", values)
    try:
        settings["values"] = {k: coerce(k, v, f'{label}: "values"') for k, v in values.items()}
        build_config(settings["values"])
    except ConfigError as err:
        text = str(err)
        raise UserError(text if text.startswith(label) else f'{label}: "values": {text}') from None
    try:
        settings["space"] = check_space(settings["space"], f'{label}: "space"')
    except ConfigError as err:
        raise UserError(str(err)) from None
    return settings


def _open_log(path: str):
    """``path`` opened for appending text, never through a symbolic link (``O_NOFOLLOW``): a link
    planted there is a one-line :class:`UserError`, as is any other failure to open it."""
    from mstein_fast.checkpoint import write_failure

    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP or os.path.islink(path):
            raise UserError(f"{path} is a symbolic link; a tune directory must hold its own files") from None
        raise write_failure(path, err) from None
    return os.fdopen(fd, "a", encoding="utf-8")


def storage_errors(optuna) -> tuple[type[BaseException], ...]:
    """The exceptions by which an Optuna storage fails (SQLAlchemy's, Optuna's wrapper of them,
    sqlite3's): a full disk under ``study.db``, a database server gone, a locked file."""
    import sqlite3

    errors: list[type[BaseException]] = [optuna.exceptions.StorageInternalError, sqlite3.Error]
    try:
        import sqlalchemy.exc

        errors.append(sqlalchemy.exc.SQLAlchemyError)
    except ImportError:
        pass
    return tuple(errors)


def storage_failure(err: BaseException, where: str, output: str, storage: str | None) -> UserError:
    """The one-line :class:`UserError` of a failed Optuna storage: names the study and the cause,
    and says how the tune continues (the running trial is left running: ``--resume`` continues it)."""
    cause = err
    for _ in range(4):  # Optuna wraps SQLAlchemy's error, which wraps the driver's
        inner = getattr(cause, "orig", None) or cause.__cause__
        if inner is None:
            break
        cause = inner
    text = str(cause).strip()
    reason = masked_url(text.splitlines()[0][:200] if text else type(cause).__name__)
    again = f"mstein-fast tune --output {output} --resume" + (" --storage URL" if storage else "")
    return UserError(f"{where}: the study's storage failed ({reason}); nothing finished is lost: once the cause is "
                     f"fixed (disk space, the database server), the tune and its running trial continue with: "
                     f"{again}")


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class _Search:
    """One session of a search (see :func:`run_tune`)."""

    def __init__(self, optuna, output: str, settings: dict, values: dict, verbose: bool, storage: str | None = None):
        self.optuna, self.out, self.settings, self.values, self.verbose = optuna, output, settings, values, verbose
        self.space = settings["space"]
        self.cfg, _ = build_config(values)
        self.metric = self.cfg.early_stop_metric
        self.trials_dir = os.path.join(output, "trials")
        # this process's trials are tagged with it: a shared study (--storage) has other workers' trials too
        self.worker = f"{socket.gethostname()}:{os.path.abspath(output)}"
        self.shared = storage is not None
        url = storage or "sqlite:///" + os.path.abspath(os.path.join(output, "study.db"))
        where = masked_url(storage) if storage else os.path.join(output, "study.db")
        if storage is None and os.path.islink(where):  # (SQLite would write through it)
            raise UserError(f"{where} is a symbolic link; a tune directory must hold its own study (a study "
                            "elsewhere: --storage sqlite:////path/study.db)")
        self.where = where
        self.storage_errors = storage_errors(optuna)
        for attempt in range(3):
            try:
                self.study = optuna.create_study(study_name=STUDY_NAME, storage=url, direction="maximize",
                                                 load_if_exists=True, pruner=_pruner(optuna, settings["pruner"]))
                break
            except self.storage_errors as err:
                # two workers creating one database at the same moment: the second loses a race
                # (a unique constraint); it opens the database the first made on a second try
                if attempt == 2 or not self.shared:
                    raise self._cannot_open(err, where) from None
                time.sleep(0.5 * (attempt + 1))
            except Exception as err:  # noqa: BLE001  a damaged or foreign database, an unreachable server
                raise self._cannot_open(err, where) from None
        if self.shared:
            self._join(where)

    @staticmethod
    def _cannot_open(err: BaseException, where: str) -> UserError:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        return UserError(f"{where}: cannot open the study ({masked_url(first)})")

    def _join(self, where: str) -> None:
        """A shared study holds the settings of the tune that created it: a worker with other settings
        (values that change training, space, pruner, data) is refused; the first worker records them."""
        mine = {"values": {k: v for k, v in build_config(self.values)[0].to_dict().items() if k not in RESUME_KEYS},
                "space": self.space, "pruner": self.settings["pruner"],
                "data_fingerprint": self.settings["data_fingerprint"]}
        mine = json.loads(json.dumps(mine, sort_keys=True))
        theirs = self.study.user_attrs.get("settings")
        if theirs is None:
            self.study.set_user_attr("settings", mine)
            return
        differ = [k for k in ("data_fingerprint", "space", "pruner") if theirs.get(k) != mine[k]]
        differ += sorted(k for k in set(mine["values"]) | set(theirs.get("values", {}))
                         if mine["values"].get(k) != theirs.get("values", {}).get(k))
        if differ:
            raise UserError(f"the study in {where} belongs to a tune with other settings ({', '.join(differ[:5])} "
                            "differ); join it with the same options, or use another --storage")

    # -- trials --------------------------------------------------------------------------------
    def trials(self, states=None) -> list:
        """The study's trials (FrozenTrial), by number."""
        return sorted(self.study.get_trials(deepcopy=False, states=states), key=lambda t: t.number)

    def finished(self) -> int:
        """Trials that count towards ``--trials``: complete, pruned and failed ones."""
        s = self.optuna.trial.TrialState
        return len(self.trials((s.COMPLETE, s.PRUNED, s.FAIL)))

    def run(self, n_trials: int, timeout: float | None) -> None:
        """Continue the trials a killed session left running, then start new ones until
        ``n_trials`` are finished or ``timeout`` seconds have passed."""
        optuna = self.optuna
        os.makedirs(self.trials_dir, exist_ok=True)
        start = time.monotonic()
        for frozen in self.trials((optuna.trial.TrialState.RUNNING,)):
            if frozen.user_attrs.get("worker", self.worker) != self.worker:
                continue  # another worker's trial (a shared study): it continues it
            self.study.sampler = _sampler(optuna, self.cfg.seed, frozen.number, self._seed_worker())
            # (FrozenTrial has no public trial id; Trial(study, id) reopens a trial as study.ask does)
            self.run_trial(optuna.trial.Trial(self.study, frozen._trial_id), n_trials, continued=True)
        while self.finished() < n_trials:
            if timeout is not None and time.monotonic() - start >= timeout:
                self.say(f"timeout: {timeout:g} s passed; {self.finished()} of {n_trials} trials finished "
                         f"(continue with --resume)")
                break
            self.study.sampler = _sampler(optuna, self.cfg.seed, len(self.study.get_trials(deepcopy=False)),
                                          self._seed_worker())
            if not self.trials():
                base = self.base_params()
                if base:  # trial 0 scores the shared settings themselves: the search has a baseline
                    self.study.enqueue_trial(base, user_attrs={"base": True})
            trial = self.study.ask()
            trial.set_user_attr("worker", self.worker)
            self.run_trial(trial, n_trials, continued=False)

    def _seed_worker(self) -> str | None:
        return self.worker if self.shared else None

    def base_params(self) -> dict:
        """The shared configuration's values of the searched keys that lie in their distributions
        (what the first trial of a new study trains; keys whose value lies outside are sampled)."""
        params = {}
        for name, spec in self.space.items():
            value = getattr(self.cfg, name)
            if spec["type"] == "categorical":
                inside = value in spec["choices"]
            else:
                inside = spec["low"] <= value <= spec["high"]
            if inside:
                params[name] = value
        return params

    def run_trial(self, trial, n_trials: int, continued: bool) -> None:
        """Train one trial into ``trials/NNNN`` and tell the study its outcome."""
        from mstein_fast.train import Trainer

        optuna, state = self.optuna, self.optuna.trial.TrialState
        params = {name: _suggest(trial, name, spec) for name, spec in self.space.items()}
        n = trial.number
        label = f"trial {n} [{min(self.finished() + 1, n_trials)}/{n_trials}]"
        if trial.user_attrs.get("base"):
            label += " (the base configuration)"
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        run_dir = os.path.join(self.trials_dir, f"{n:04d}")
        progress = dict(trial.user_attrs.get("run", {"epochs": 0, "best_epoch": 0, "best_score": None,
                                                       "seconds": 0.0}))
        t0, prior = time.perf_counter(), progress["seconds"]
        try:
            cfg, _ = build_config({"progress": False, **self.values, **params})
        except ConfigError as err:  # an invalid combination of sampled values (user spaces only)
            trial.set_user_attr("note", f"invalid configuration: {err}")
            self.study.tell(trial, state=state.FAIL)
            self.say(f"{label} failed: invalid configuration ({err}); {shown}")
            self.write_files()
            return
        for path in (self.trials_dir, run_dir):
            if os.path.islink(path):
                raise UserError(f"{path} is a symbolic link; a tune directory must hold its own trials")
        resume = continued and os.path.isfile(os.path.join(run_dir, "last.pt"))
        self.say(f"{label} {'continued from its last epoch' if resume else 'started'}: {shown}")
        self.write_files()  # (trials.csv shows it RUNNING)

        def on_epoch(epoch: int, valid: dict) -> None:
            trial.report(valid[self.metric], epoch)
            progress.update(epochs=epoch, best_epoch=trainer.best_epoch, best_score=trainer.best_score,
                            seconds=prior + time.perf_counter() - t0)
            trial.set_user_attr("run", progress)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        log_path = os.path.join(self.trials_dir, f"{n:04d}.log")
        # the trainer's output (progress lines, warnings) goes to the trial's log
        log = None if self.verbose else _open_log(log_path)
        try:
            with contextlib.redirect_stderr(log) if log is not None else contextlib.nullcontext():
                trainer = Trainer(cfg, run_dir, resume=resume)
                if resume:
                    self._replay(trial, trainer)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned at epoch {trainer.epoch}")
                result = trainer.fit(on_epoch=on_epoch, test=False)
        except optuna.TrialPruned:
            self._finish(trial, state.PRUNED, None, progress, t0, prior, f"pruned at epoch {progress['epochs']}")
        except Diverged as err:
            self._finish(trial, state.PRUNED, None, progress, t0, prior, f"diverged: {err}")
        except (Interrupted, KeyboardInterrupt):
            # left RUNNING: --resume continues it from its last completed epoch
            raise Interrupted(f"interrupted in trial {n}; continue with: mstein-fast tune --output {self.out} "
                              "--resume") from None
        except UserError:
            raise  # (left RUNNING) e.g. a full disk: --resume continues the trial after the fix
        except self.storage_errors:
            raise  # (left RUNNING) the study cannot record anything now: run_tune says how to go on
        except Exception as err:
            trial.set_user_attr("note", f"error: {type(err).__name__}: {err}")
            self.study.tell(trial, state=state.FAIL)
            self.write_files()
            raise
        else:
            progress.update(epochs=result["epochs"], best_epoch=result["best_epoch"], best_score=result["best_score"])
            self._finish(trial, state.COMPLETE, result["best_score"], progress, t0, prior, None)
        finally:
            if log is not None:
                log.close()

    def _finish(self, trial, trial_state, value, progress: dict, t0: float, prior: float, note: str | None) -> None:
        progress["seconds"] = prior + time.perf_counter() - t0
        trial.set_user_attr("run", progress)
        if note:
            trial.set_user_attr("note", note)
        if value is None:
            self.study.tell(trial, state=trial_state)
        else:
            self.study.tell(trial, value)
        best = self.best()
        score = progress["best_score"]
        what = "complete" if value is not None else "diverged" if note.startswith("diverged") else "pruned"
        text = (f"trial {trial.number} {what}: {progress['epochs']} epochs (best epoch {progress['best_epoch']}), "
                f"{progress['seconds']:.1f} s; valid {self.metric} "
                f"{'-' if score is None or not math.isfinite(score) else f'{score:.4f}'}")
        if best is not None:
            text += f"; best so far {best.value:.4f} (trial {best.number})"
        self.say(text + "; " + " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items()))
        self.write_files()

    def _replay(self, trial, trainer) -> None:
        """Report the epochs a killed session completed but did not report (from metrics.jsonl, read
        through the guarded reader: a damaged file is a one-line error naming it)."""
        from mstein_fast.checkpoint import read_metrics

        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
        records, _ = read_metrics(trainer.metrics_path)
        for record in records:
            value = record["valid"].get(self.metric)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise UserError(f"{trainer.metrics_path}: epoch {record['epoch']} has no finite validation "
                                f"{self.metric}")
            if record["epoch"] not in frozen.intermediate_values:
                trial.report(value, record["epoch"])

    # -- outputs -------------------------------------------------------------------------------
    def best(self):
        """The best complete trial (FrozenTrial), or None."""
        complete = self.trials((self.optuna.trial.TrialState.COMPLETE,))
        return max(complete, key=lambda t: (t.value, -t.number)) if complete else None

    def write_files(self) -> None:
        """Rewrite ``trials.csv`` and ``best.json`` (after every trial: a killed search keeps them)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        names = list(self.space)
        writer.writerow(["number", "state", "value", "epochs", "best_epoch", "seconds"]
                        + [f"params_{k}" for k in names] + ["note"])
        for t in self.trials():
            run = t.user_attrs.get("run", {})
            writer.writerow([t.number, t.state.name, "" if t.value is None else repr(t.value), run.get("epochs", 0),
                             run.get("best_epoch", 0), f"{run.get('seconds', 0.0):.1f}"]
                            + [t.params.get(k, "") for k in names] + [t.user_attrs.get("note", "")])
        _write_text(os.path.join(self.out, "trials.csv"), buf.getvalue())
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["trial", "state", "epoch", "value"])
        for t in self.trials():
            for epoch, value in sorted(t.intermediate_values.items()):
                writer.writerow([t.number, t.state.name, epoch, repr(value)])
        _write_text(os.path.join(self.out, "curves.csv"), buf.getvalue())
        best = self.best()
        if best is not None:
            _write_json(self.best_config(best), os.path.join(self.out, "best.json"))

    def best_config(self, best) -> dict:
        """``best.json``: the shared settings plus the best trial's parameters, a relative data path
        made relative to the tune directory (``train --config`` reads it from the file's folder),
        and ``_about`` (a comment ``train --config`` skips) saying what the file fixes."""
        values = {**self.values, **best.params}
        if isinstance(values.get("data"), str) and not os.path.isabs(values["data"]):
            values["data"] = os.path.relpath(os.path.abspath(values["data"]), os.path.abspath(self.out))
        budget = {k: getattr(self.cfg, k) for k in ("epochs", "patience")}
        shared = sorted(k for k in self.values if k not in best.params)
        about = {
            "what": f"trial {best.number} of this tune: the best validation {self.metric} ({best.value:.6g}) "
                    f"of {len(self.trials())} trials",
            "tuned": sorted(best.params),
            "set for every trial": shared,
            "budget": f"every trial trained at most {budget['epochs']} epochs with patience {budget['patience']}"
                      + ("; this file keeps that budget (it was set for the tune): for a full training override it, "
                         "e.g. `mstein-fast train --config best.json --epochs 500 --patience 100`"
                         if {"epochs", "patience"} & set(self.values) else
                         "; the budget was not set for the tune, so training from this file uses the defaults"),
        }
        return {"_about": about, **values}

    def plot(self) -> list[str]:
        """``trials.png``/``.svg``: the validation curve of every trial (the best highlighted) and
        every trial's best value against the epochs it trained (matplotlib needed)."""
        from mstein_fast.plots import metric_label, tune_trials

        best = self.best()
        rows = [{"number": t.number, "state": t.state.name, "curve": sorted(t.intermediate_values.items()),
                 "best": best is not None and t.number == best.number} for t in self.trials()]
        title = f"mstein-fast tune: {len(rows)} trials, validation {metric_label(self.metric)}"
        return tune_trials(rows, self.metric, title, os.path.join(self.out, "trials"))

    def say(self, message: str) -> None:
        """A progress line on stderr."""
        print(message, file=sys.stderr, flush=True)

    def summary(self) -> dict:
        """The result of the search (printed as JSON by the command)."""
        s = self.optuna.trial.TrialState
        counts = {name: len(self.trials((st,))) for name, st in
                  (("complete", s.COMPLETE), ("pruned", s.PRUNED), ("failed", s.FAIL), ("running", s.RUNNING))}
        best = self.best()
        result = {"output": self.out, "metric": self.metric, "trials": len(self.trials()), **counts,
                  "best_trial": None, "best_value": None, "best_params": None, "best_config": None}
        if best is not None:
            result.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                          best_config=os.path.join(self.out, "best.json"))
        return result


def run_tune(output: str, values: dict, *, fixed=(), space: dict | None = None, trials: int | None = None,
             timeout: float | None = None, resume: bool = False, pruner: str | None = None,
             prune_from: int | None = None, startup_trials: int | None = None, verbose: bool = False,
             space_where: str = "--space", plots: bool = True, storage: str | None = None) -> dict:
    """Run (or with ``resume`` continue) the search in ``output``; returns :meth:`_Search.summary`.

    ``values``: the config values given (``--config`` file < options) that every trial shares;
    ``fixed``: the keys set by command-line options, left out of the default space (a ``space``
    from a file may not contain them); ``space``: a :func:`check_space` result (default
    :func:`default_space`); ``trials``: the total number of finished trials to reach (resume: the
    saved number unless given); ``timeout``: start no new trial after that many seconds;
    ``pruner`` (median, halving or none), ``prune_from`` (first epoch a trial may be pruned) and
    ``startup_trials`` (median: complete trials before pruning starts) default to median, 20, 5.
    ``verbose``: the trainer's output on stderr instead of ``trials/NNNN.log``; ``space_where``:
    how errors name the space (its file); ``plots``: draw ``trials.png`` at the end (skipped with
    a note when matplotlib is missing). ``storage``: an Optuna storage URL (any SQLAlchemy URL,
    e.g. ``postgresql://user:pw@host/db`` or ``sqlite:////shared/study.db``) instead of
    ``output/study.db``: several processes, on several machines, each with its own ``output``,
    then run the trials of one study (they must share every setting; see the package docstring).

    Without ``resume`` a directory that holds a tune, or any other files, is refused; with it the
    saved settings are used, and changing them (other than :data:`RESUME_KEYS`) is refused."""
    optuna = require_optuna()
    from mstein_fast.runtime import load_data

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("mstein-fast tune runs its trials in one process: start it without torchrun")
    if trials is not None and not 1 <= trials <= MAX_COUNT:
        raise UserError(f"--trials must be positive (at most {MAX_COUNT}), got {trials}")
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise UserError(f"--timeout must be a positive number of seconds, got {timeout}")
    if prune_from is not None and not 1 <= prune_from <= MAX_COUNT:
        raise UserError(f"--prune-from must be in [1, {MAX_COUNT}], got {prune_from}")
    if startup_trials is not None and not 0 <= startup_trials <= MAX_COUNT:
        raise UserError(f"--pruner-startup-trials must be in [0, {MAX_COUNT}], got {startup_trials}")
    if pruner is not None and pruner not in PRUNERS:
        raise UserError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    settings_path = os.path.join(output, "tune.json")
    given_pruner = {k: v for k, v in (("name", pruner), ("prune_from", prune_from),
                                      ("startup_trials", startup_trials)) if v is not None}
    if storage is not None and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", storage):
        raise UserError(f"--storage must be a database URL such as postgresql://user:password@host/db or "
                        f"sqlite:////path/study.db, got {storage!r}")
    if resume:
        if not os.path.isfile(settings_path):
            raise UserError(f"{output}: nothing to resume (no tune.json); start a tune there without --resume")
        settings = _read_settings(settings_path)
        saved_storage = settings.get("storage")
        if saved_storage is not None and (storage is None or masked_url(storage) != saved_storage):
            raise UserError(f"{output}: its study is in {saved_storage}; resume with --storage and that URL")
        if saved_storage is None and storage is not None:
            raise UserError(f"{output}: its study is {os.path.join(output, 'study.db')}; resume without --storage")
        saved = settings["values"]
        merged = {**saved, **values}
        before, _ = build_config(saved)
        cfg, _ = build_config(merged)
        changed = [k for k in FIELDS if k not in RESUME_KEYS and getattr(before, k) != getattr(cfg, k)]
        if changed:
            shown = ", ".join(f"{k} ({getattr(before, k)!r} -> {getattr(cfg, k)!r})" for k in changed[:4])
            raise ConfigError(f"--resume cannot change {shown}: every trial of a tune shares its saved settings; "
                              f"only {', '.join(RESUME_KEYS)} may be changed (start a new tune with another --output)")
        if space is not None and json.dumps(space, sort_keys=True) != json.dumps(settings["space"], sort_keys=True):
            raise ConfigError(f"--resume cannot change the search space ({settings_path} holds the tune's); drop --space")
        for k, v in given_pruner.items():
            if settings["pruner"].get(k) != v:
                raise ConfigError(f"--resume cannot change the pruner's {k} ({settings['pruner'].get(k)!r} -> {v!r})")
        data = load_data(cfg)
        if data.fingerprint != settings["data_fingerprint"]:
            raise UserError(f"{output}: the tune was run on different data; cannot resume with {data.source}")
        settings["values"] = merged
        if trials is not None:
            settings["trials"] = trials
    else:
        _check_output(output)
        if trials is None:
            raise UserError("--trials is required (the number of trials to run)")
        cfg, _ = build_config(values)  # the shared settings are valid
        if space is None:
            space = default_space(cfg.model)
            dropped = [k for k in space if k in fixed]
            for k in dropped:
                del space[k]
            if dropped:
                print(f"not tuned (set on the command line): {', '.join(dropped)}", file=sys.stderr)
            space_where = "default search space"
            if not space:
                raise UserError("nothing left to tune: every key of the default space is set on the command line")
        else:
            both = [k for k in space if k in fixed]
            if both:
                raise ConfigError(f"{space_where}: {both[0]} is also set by --{both[0].replace('_', '-')}; "
                                  "drop one of them")
        check_against(space, values, space_where)
        data = load_data(cfg)  # a bad data file fails here, before anything is written
        settings = {"format": SETTINGS_FORMAT, "values": dict(values), "space": space,
                    "pruner": {"name": "median", "prune_from": DEFAULT_PRUNE_FROM,
                               "startup_trials": DEFAULT_STARTUP_TRIALS, **given_pruner},
                    "data_fingerprint": data.fingerprint, "trials": trials,
                    "storage": None if storage is None else masked_url(storage)}
        try:
            os.makedirs(output, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the tune directory {output}: {err.strerror or err}") from None
    del data
    from mstein_fast.checkpoint import DirectoryLock

    failed = storage_errors(optuna)
    where = masked_url(storage) if storage else os.path.join(output, "study.db")
    try:
        with DirectoryLock(os.path.join(output, "tune.lock"), "tune"):
            _write_json(settings, settings_path)
            verbosity = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            try:
                search = _Search(optuna, output, settings, settings["values"], verbose, storage)
                search.write_files()
                search.run(settings["trials"], timeout)
            finally:
                optuna.logging.set_verbosity(verbosity)
        result = search.summary()
        if plots and result["trials"]:
            try:
                result["figures"] = search.plot()
            except UserError as err:  # matplotlib missing: the tune itself is done
                print(f"no figure: {err}", file=sys.stderr)
    except failed as err:
        raise storage_failure(err, where, output, storage) from None
    best = result["best_trial"]
    print(f"tune: {result['trials']} trials ({result['complete']} complete, {result['pruned']} pruned, "
          f"{result['failed']} failed)"
          + (f"; best trial {best}: valid {result['metric']} {result['best_value']:.4f}; "
             f"train it with: mstein-fast train --config {result['best_config']}" if best is not None
             else "; no trial completed"), file=sys.stderr, flush=True)
    return result


def _check_output(output: str) -> None:
    """Refuse a tune directory that holds a tune (use --resume) or files of something else."""
    if os.path.lexists(output) and not os.path.isdir(output):
        raise UserError(f"--output {output} exists and is not a directory; choose another --output")
    if not os.path.isdir(output):
        return
    try:
        entries = os.listdir(output)
    except OSError as err:
        raise UserError(f"cannot read {output}: {err.strerror or err}") from None
    if {"tune.json", "study.db"} & set(entries):
        raise UserError(f"{output} already holds a tune; continue it with --resume or choose another --output")
    if set(entries) - {"tune.lock"}:  # (a lock alone: a tune killed before it wrote anything)
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise UserError(f"--output {output} is not empty ({shown}) and is not a tune directory; "
                        "choose another --output")
