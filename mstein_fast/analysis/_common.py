"""What the analyses share: option parsing, the models (given checkpoints or trained here),
evaluation rows and the output files."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from mstein_fast.config import TrainConfig, build_config
from mstein_fast.data import LeaveOneOut, Sequences, leave_one_out, load_sequences
from mstein_fast.errors import UserError
from mstein_fast.evaluate import KS, ranking_metrics
from mstein_fast.writer import write_files_atomic

DEFAULT_MODELS = ("mstein", "coserec", "stosa")
DEFAULT_METRICS = ("recall@10", "ndcg@10", "mrr")
METRIC_NAMES = tuple(f"{m}@{k}" for k in KS for m in ("recall", "ndcg")) + ("mrr", "mrr@40")
# config keys that do not change what a run learns (ignored when deciding whether a run is reusable)
_RUNTIME_KEYS = {"device", "backend", "num_threads", "progress", "eval_batch_size", "tensorboard"}


def log(message: str) -> None:
    """One progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


# -- option parsing helpers (shared with the CLI) ----------------------------------------------

def parse_list(text: str, kind: type, what: str) -> list:
    """``"0,0.1, 0.2"`` -> ``[0.0, 0.1, 0.2]``; :class:`UserError` naming ``what`` otherwise."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UserError(f"{what}: expected a comma-separated list, got {text!r}")
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated {kind.__name__} values, got {text!r}") from None


def check_metrics(metrics: list[str]) -> list[str]:
    """``metrics`` as a list; :class:`UserError` naming the first unknown metric."""
    for m in metrics:
        if m not in METRIC_NAMES:
            raise UserError(f"unknown metric {m!r} (known: {', '.join(METRIC_NAMES)})")
    return list(metrics)


# -- models: given checkpoints or trained here -------------------------------------------------

@dataclass
class Setup:
    """What the commands share: the training configuration layers, the output folder and the models.

    ``cli_values`` / ``file_values`` are config keys as for ``mstein-fast train`` (``data``
    included); ``checkpoints`` are checkpoint files or run directories to reuse instead of training.
    """

    output: str
    cli_values: dict = field(default_factory=dict)
    file_values: dict | None = None
    models: tuple = DEFAULT_MODELS
    checkpoints: list | None = None
    metrics: tuple = DEFAULT_METRICS
    plots: bool = True

    def config(self, **over) -> TrainConfig:
        cfg, _ = build_config(self.file_values, {**self.cli_values, **over})
        return cfg

    @property
    def progress(self) -> bool:
        return self.config().progress


def _saved_config(run_dir: str) -> dict | None:
    """The ``config.json`` of a run directory (None if there is none), read through the guarded
    reader; :class:`UserError` naming the file if it is not a JSON object."""
    from mstein_fast.reader import DataError, read_json

    path = os.path.join(run_dir, "config.json")
    if not os.path.lexists(path):
        return None
    try:
        saved = read_json(path, what="a config.json of mstein-fast train")
    except DataError as err:
        raise UserError(f"{err} (not a run of mstein-fast train: choose another --output)") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path}: not a config.json of mstein-fast train (expected a JSON object); choose another "
                        "--output")
    return saved


def config_differences(run_dir: str, values: dict, ignore=()) -> list[str]:
    """The keys (sorted) whose value in ``values`` differs from the run saved in ``run_dir`` (none if
    there is no run there), leaving out the runtime keys and ``ignore``; a key newer than the saved
    run counts as its default."""
    saved = _saved_config(run_dir)
    if saved is None:
        return []
    defaults = TrainConfig().to_dict()
    return sorted(k for k, v in values.items()
                  if k not in _RUNTIME_KEYS and k not in ignore and saved.get(k, defaults.get(k)) != v)


def train_or_reuse(cfg: TrainConfig, run_dir: str) -> str:
    """Train ``cfg`` into ``run_dir`` (resume an unfinished run there, reuse a finished one);
    returns the path of ``best.pt``."""
    from mstein_fast.train import train

    best = os.path.join(run_dir, "best.pt")
    differ = config_differences(run_dir, cfg.to_dict())
    if differ:
        raise UserError(f"{run_dir} holds a run with another configuration ({', '.join(differ)} differ); "
                        "choose another --output or pass the run with --checkpoints")
    if os.path.isfile(os.path.join(run_dir, "test_metrics.json")) and os.path.isfile(best):
        log(f"reusing the finished run {run_dir}")
        return best
    resume = os.path.isfile(os.path.join(run_dir, "last.pt"))
    log(f"{'resuming' if resume else 'training'} {cfg.model} (batch size {cfg.batch_size}) in {run_dir}")
    train(cfg, run_dir, resume=resume)
    return best


@dataclass
class Loaded:
    """A model to analyse: its label, the model, its checkpoint and the split at its own
    ``max_seq_length`` (models trained with different lengths are each evaluated at theirs)."""

    label: str
    model: torch.nn.Module
    ckpt: dict
    split: LeaveOneOut


def _labels(ckpts: list[dict]) -> list[str]:
    names = [c["config"].model for c in ckpts]
    out = []
    for c, name in zip(ckpts, names):
        if names.count(name) > 1:  # same model twice: tell them apart by the run directory
            name = f"{name} ({os.path.basename(os.path.dirname(os.path.abspath(c['path'])))})"
        out.append(name)
    return out


def load_models(paths: list[str], setup: Setup, data: Sequences | None = None):
    """Load checkpoints (files or run dirs) and the data to evaluate them on: ``data``, else the
    ``--data`` option, else the data the first checkpoint was trained on (found again if it moved).
    Returns ``(loaded, data, split)``: each :class:`Loaded` holds the split at its model's own
    ``max_seq_length``; ``split`` is the first model's (targets, seen items and popularity do not
    depend on the length). The checkpoints must agree on the item count (the same data)."""
    from mstein_fast.checkpoint import load_checkpoint, model_from_checkpoint
    from mstein_fast.inference import locate_data
    from mstein_fast.runtime import load_data, resolve_device

    ckpts = [load_checkpoint(p) for p in paths]
    device = resolve_device(setup.config().device)
    if data is None:
        data_path = setup.cli_values.get("data") or (setup.file_values or {}).get("data")
        path = locate_data(ckpts[0], data_path)
        data = load_sequences(path) if path else load_data(ckpts[0]["config"])
    n_items = {c["n_items"] for c in ckpts}
    if len(n_items) > 1:
        shown = ", ".join(f"{c['path']}: {c['n_items']}" for c in ckpts)
        raise UserError(f"the checkpoints know different numbers of items ({shown}); compare models trained "
                        "on the same data")
    n_items = n_items.pop()
    if data.n_items > n_items:
        raise UserError(f"{data.source} has item ids up to {data.n_items} but the models know only {n_items} items")
    for c in ckpts:
        if c["data_fingerprint"] != data.fingerprint:
            log(f"warning: {c['path']} was trained on {c['data_source']}, not on {data.source}")
    data.n_items = n_items
    splits: dict[int, LeaveOneOut] = {}
    loaded = []
    for label, c in zip(_labels(ckpts), ckpts):
        length = c["config"].max_seq_length
        if length not in splits:
            splits[length] = leave_one_out(data, length)
        loaded.append(Loaded(label, model_from_checkpoint(c, device), c, splits[length]))
    return loaded, data, loaded[0].split


def models_for(setup: Setup):
    """The checkpoints of ``setup`` if given, otherwise ``setup.models`` trained (or reused) in
    ``OUTPUT/runs/<model>``; loaded as by :func:`load_models`."""
    if setup.checkpoints:
        return load_models(list(setup.checkpoints), setup)
    paths = [train_or_reuse(setup.config(model=m), os.path.join(setup.output, "runs", m)) for m in setup.models]
    return load_models(paths, setup)


# -- outputs -----------------------------------------------------------------------------------

def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return _clean(float(value))
    return value


def write_outputs(output: str, name: str, rows: list[dict], meta: dict) -> list[str]:
    """``OUTPUT/<name>.csv`` (one row per dict) and ``OUTPUT/<name>.json`` (``meta`` + ``rows``);
    UserError if ``output`` cannot be created or written."""
    if os.path.lexists(output) and not os.path.isdir(output):
        raise UserError(f"--output {output} exists and is not a directory; choose another --output")
    rows = [{k: _clean(v) for k, v in r.items()} for r in rows]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    csv_path, json_path = os.path.join(output, f"{name}.csv"), os.path.join(output, f"{name}.json")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    try:
        os.makedirs(output, exist_ok=True)
        write_files_atomic({csv_path: buffer.getvalue(), json_path: json.dumps({**meta, "rows": rows}, indent=2) + "\n"})
    except OSError as err:
        raise UserError(f"cannot write into {output}: {err.strerror or err}") from None
    return [csv_path, json_path]


def metric_row(ranks: torch.Tensor, metrics) -> dict:
    """``{metric: value}`` of the test ranks ``ranks`` for the chosen ``metrics``."""
    m = ranking_metrics(ranks)
    return {k: m[k] for k in metrics}


def preflight(setup: Setup) -> None:
    """Fail on a missing matplotlib or a bad data file before any training, not after."""
    if setup.plots:
        from mstein_fast.plots import require_matplotlib

        require_matplotlib()
    data_path = setup.config().data
    if data_path and not setup.checkpoints:
        load_sequences(data_path)


def eval_batch(setup: Setup) -> int:
    """Users per evaluation batch."""
    return setup.config().eval_batch_size


def short_name(source: str) -> str:
    """A data source for a figure title: the file name, or the synthetic data set's name."""
    return os.path.basename(source) if os.path.exists(source) else source.split("(")[0]
