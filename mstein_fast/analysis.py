"""The paper's analyses beyond the main table (SPEC section 5), as commands with plots.

* :func:`analyze_noise` -- robustness: random items the user never interacted with are inserted
  before random positions of the test input sequences (ratio 0.0 .. 0.4), every model evaluated.
* :func:`analyze_batch_size` -- efficiency: test metrics of models trained at several
  (contrastive) batch sizes. The trainer's ``batch_size`` is the number of sequences per step,
  and the contrastive loss is taken over the two views of that batch: the same number.
* :func:`analyze_groups` -- where the gains are: metrics by user history-length group and by
  target-item popularity group.
* :func:`plot_runs` -- training curves of run directories (``metrics.jsonl``).

Every analysis writes ``<name>.csv`` and ``<name>.json`` (its numbers) and ``<name>*.png`` /
``.svg`` figures into its output folder. Models are either given as checkpoints (files or run
directories) or trained through :func:`mstein_fast.train.train` into ``OUTPUT/runs/<model>``;
a finished run found there is reused, an unfinished one resumed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from mstein_fast.config import TrainConfig, build_config
from mstein_fast.data import LeaveOneOut, Sequences, leave_one_out, left_pad, load_sequences
from mstein_fast.errors import UserError
from mstein_fast.evaluate import KS, evaluate_ranks, ranking_metrics

DEFAULT_MODELS = ("mstein", "coserec", "stosa")
DEFAULT_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4)
DEFAULT_BATCH_SIZES = (64, 128, 256, 512, 1024)
DEFAULT_METRICS = ("recall@10", "ndcg@10", "mrr")
DEFAULT_GROUPS = 4
METRIC_NAMES = tuple(f"{m}@{k}" for k in KS for m in ("recall", "ndcg")) + ("mrr", "mrr@40")
# config keys that do not change what a run learns (ignored when deciding whether a run is reusable)
_RUNTIME_KEYS = {"device", "backend", "num_threads", "progress", "eval_batch_size"}


def log(message: str) -> None:
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
    for m in metrics:
        if m not in METRIC_NAMES:
            raise UserError(f"unknown metric {m!r} (known: {', '.join(METRIC_NAMES)})")
    return list(metrics)


# -- noise injection ---------------------------------------------------------------------------

def noise_count(length: int, ratio: float) -> int:
    """Number of noise items for a sequence of ``length`` items: ``floor(ratio * length)`` (with a
    1e-9 tolerance, so that 0.3 * 10 gives 3, not the 2 of the original code's float truncation)."""
    return math.floor(ratio * length + 1e-9)


def inject_noise(seqs: list[np.ndarray], ratio: float, n_items: int, rng: np.random.Generator,
                 forbidden: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Insert ``noise_count(len(s), ratio)`` random items into every sequence ``s``.

    The noise items of a user are distinct, drawn uniformly from ``1..n_items`` minus the items in
    ``forbidden[u]`` (default: the sequence itself; pass the user's whole history so that neither
    the test target nor any other interaction is used), and each is inserted before a uniformly
    random position of the original sequence (several may go before the same position; the
    original items keep their order). If fewer items are allowed than requested, all allowed
    items are used. Returns the noisy sequences and the number of items inserted per user.
    """
    if not 0 <= ratio:
        raise UserError(f"noise ratios must be >= 0, got {ratio}")
    out, counts = [], np.zeros(len(seqs), dtype=np.int64)
    for u, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)
        n = noise_count(len(s), ratio)
        if n == 0 or len(s) == 0:
            out.append(s.copy())
            continue
        banned = np.unique(np.asarray(forbidden[u] if forbidden is not None else s, dtype=np.int64))
        banned = banned[(banned >= 1) & (banned <= n_items)]
        n = min(n, n_items - len(banned))
        if n <= 0:
            out.append(s.copy())
            continue
        picked = np.zeros(0, dtype=np.int64)
        for _ in range(8):  # rejection sampling: cheap when the user knows few of the items
            draw = rng.integers(1, n_items + 1, size=2 * n + 8)
            draw = draw[~np.isin(draw, banned)]
            picked = np.concatenate([picked, draw])
            _, first = np.unique(picked, return_index=True)
            picked = picked[np.sort(first)]  # distinct, in draw order
            if len(picked) >= n:
                break
        if len(picked) < n:  # a user who knows most items: draw from the complement directly
            pool = np.setdiff1d(np.arange(1, n_items + 1), banned, assume_unique=True)
            picked = rng.choice(pool, size=n, replace=False)
        positions = rng.integers(0, len(s), size=n)
        out.append(np.insert(s, np.sort(positions), picked[:n]))
        counts[u] = n
    return out, counts


def noisy_split(data: Sequences, split: LeaveOneOut, ratio: float, seed: int) -> tuple[LeaveOneOut, float]:
    """``split`` with noise injected into the test inputs (``s[:-1]``) at ``ratio``; the items
    excluded from the ranking stay the user's real history. Returns it and the mean number of
    noise items per user."""
    rng = np.random.default_rng([seed, round(ratio * 1e6)])
    noisy, counts = inject_noise([s[:-1] for s in data.items], ratio, split.n_items, rng, forbidden=data.items)
    return dataclasses.replace(split, test_inputs=left_pad(noisy, split.max_len)), float(counts.mean())


# -- groups ------------------------------------------------------------------------------------

def quantile_cuts(values: np.ndarray, n_groups: int) -> np.ndarray:
    """Integer cut points splitting ``values`` into up to ``n_groups`` groups of about equal size
    (fewer where ties make quantiles coincide); group ``j`` holds ``cuts[j-1] <= v < cuts[j]``."""
    if n_groups < 1:
        raise UserError(f"the number of groups must be positive, got {n_groups}")
    values = np.asarray(values)
    q = np.quantile(values, np.linspace(0, 1, n_groups + 1)[1:-1]) if n_groups > 1 else np.zeros(0)
    cuts = np.unique(np.ceil(q).astype(np.int64))
    # a cut at or below the minimum would leave the first group empty
    return cuts[(cuts > values.min()) & (cuts <= values.max())] if len(values) else cuts


def assign_groups(values: np.ndarray, cuts) -> np.ndarray:
    """Group index of every value: ``searchsorted(cuts, v, 'right')`` (0 .. len(cuts))."""
    return np.searchsorted(np.asarray(cuts), np.asarray(values), side="right")


def group_label(j: int, cuts, lo: int, hi: int) -> str:
    """Inclusive integer bounds ``"a-b"`` of group ``j``; ``lo``/``hi`` (the observed minimum and
    maximum) close the open ends. An open-ended group outside the observed range reads ``<c`` / ``>=c``."""
    if j == 0 and len(cuts) and int(lo) > int(cuts[0]) - 1:
        return f"<{int(cuts[0])}"
    if j == len(cuts) and len(cuts) and int(cuts[-1]) > int(hi):
        return f">={int(cuts[-1])}"
    a = int(cuts[j - 1]) if j > 0 else int(lo)
    b = int(cuts[j]) - 1 if j < len(cuts) else int(hi)
    return f"{a}" if a == b else f"{a}-{b}"


def user_groups(data: Sequences, split: LeaveOneOut, length_cuts=None, popularity_cuts=None,
                n_groups: int = DEFAULT_GROUPS) -> dict[str, dict]:
    """The two groupings of the test users.

    * ``length``: the user's history length before the test target (``len(s) - 1``, before the
      truncation to ``max_seq_length``);
    * ``popularity``: occurrences of the test target in the training data (``split.item_counts``).

    Cut points default to quantiles (``n_groups`` groups of about equal user counts). Returns, per
    grouping, ``values``, ``cuts``, ``group`` (index per user) and ``labels``.
    """
    values = {
        "length": np.array([len(s) - 1 for s in data.items], dtype=np.int64),
        "popularity": split.item_counts[split.test_targets].numpy().astype(np.int64),
    }
    given = {"length": length_cuts, "popularity": popularity_cuts}
    out = {}
    for name, v in values.items():
        if given[name] is None:
            cuts = quantile_cuts(v, n_groups)
        else:
            cuts = np.asarray(sorted({int(c) for c in given[name]}), dtype=np.int64)
        g = assign_groups(v, cuts)
        labels = [group_label(j, cuts, v.min(), v.max()) for j in range(len(cuts) + 1)]
        out[name] = {"values": v, "cuts": cuts, "group": g, "labels": labels}
    return out


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
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def train_or_reuse(cfg: TrainConfig, run_dir: str) -> str:
    """Train ``cfg`` into ``run_dir`` (resume an unfinished run there, reuse a finished one);
    returns the path of ``best.pt``."""
    from mstein_fast.train import train

    best = os.path.join(run_dir, "best.pt")
    saved = _saved_config(run_dir)
    if saved is not None:
        defaults = TrainConfig().to_dict()  # a key newer than the saved run counts as its default
        differ = sorted(k for k, v in cfg.to_dict().items()
                        if k not in _RUNTIME_KEYS and saved.get(k, defaults[k]) != v)
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
    label: str
    model: torch.nn.Module
    ckpt: dict


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
    ``--data`` option, else the data the first checkpoint was trained on. Returns
    ``(loaded, data, split)``; the checkpoints must agree on ``max_seq_length`` and item count."""
    from mstein_fast.checkpoint import load_checkpoint, model_from_checkpoint
    from mstein_fast.runtime import load_data, resolve_device

    ckpts = [load_checkpoint(p) for p in paths]
    device = resolve_device(setup.config().device)
    if data is None:
        data_path = setup.cli_values.get("data") or (setup.file_values or {}).get("data")
        data = load_sequences(data_path) if data_path else load_data(ckpts[0]["config"])
    n_items = {c["n_items"] for c in ckpts}
    max_len = {c["config"].max_seq_length for c in ckpts}
    if len(n_items) > 1 or len(max_len) > 1:
        raise UserError("the checkpoints disagree on the number of items or max_seq_length; "
                        "compare models trained on the same data and settings")
    n_items, max_len = n_items.pop(), max_len.pop()
    if data.n_items > n_items:
        raise UserError(f"{data.source} has item ids up to {data.n_items} but the models know only {n_items} items")
    for c in ckpts:
        if c["data_fingerprint"] != data.fingerprint:
            log(f"warning: {c['path']} was trained on {c['data_source']}, not on {data.source}")
    data.n_items = n_items
    loaded = [Loaded(label, model_from_checkpoint(c, device), c) for label, c in zip(_labels(ckpts), ckpts)]
    return loaded, data, leave_one_out(data, max_len)


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
    try:
        os.makedirs(output, exist_ok=True)
        with open(csv_path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump({**meta, "rows": rows}, fh, indent=2)
            fh.write("\n")
    except OSError as err:
        raise UserError(f"cannot write into {output}: {err.strerror or err}") from None
    return [csv_path, json_path]


def _metric_row(ranks: torch.Tensor, metrics) -> dict:
    m = ranking_metrics(ranks)
    return {k: m[k] for k in metrics}


def _preflight(setup: Setup) -> None:
    """Fail on a missing matplotlib or a bad data file before any training, not after."""
    if setup.plots:
        from mstein_fast.plots import require_matplotlib

        require_matplotlib()
    data_path = setup.config().data
    if data_path and not setup.checkpoints:
        load_sequences(data_path)


def _eval_batch(setup: Setup) -> int:
    return setup.config().eval_batch_size


# -- the analyses ------------------------------------------------------------------------------

def analyze_noise(setup: Setup, ratios=DEFAULT_RATIOS, seed: int = 0) -> dict:
    """Metrics of every model with noise injected into the test inputs at each ratio."""
    ratios = sorted({float(r) for r in ratios})
    if any(r < 0 for r in ratios):
        raise UserError(f"noise ratios must be >= 0, got {ratios}")
    _preflight(setup)
    loaded, data, split = models_for(setup)
    rows = []
    bar = tqdm(total=len(ratios) * len(loaded), desc="noise", file=sys.stderr, disable=not setup.progress)
    for ratio in ratios:
        noisy, mean_inserted = noisy_split(data, split, ratio, seed)
        for m in loaded:
            ranks = evaluate_ranks(m.model, noisy, "test", _eval_batch(setup))
            rows.append({"model": m.label, "ratio": ratio, "mean_noise_items": mean_inserted,
                         **_metric_row(ranks, setup.metrics)})
            bar.update()
    bar.close()
    meta = {"analysis": "noise", "data": data.source, "users": split.n_users, "seed": seed, "ratios": ratios,
            "checkpoints": {m.label: m.ckpt["path"] for m in loaded},
            "protocol": "floor(ratio * len) distinct random items the user never interacted with, inserted "
                        "before uniformly random positions of the test input s[:-1]; the ranking still "
                        "excludes only the real history"}
    files = write_outputs(setup.output, "noise", rows, meta)
    if setup.plots:
        from mstein_fast.plots import metric_lines

        files += metric_lines(rows, "ratio", "model", list(setup.metrics), "noise ratio",
                              f"Robustness to noise interactions ({_short(data.source)})",
                              os.path.join(setup.output, "noise"))
    return {"rows": rows, "files": files, **meta}


def analyze_groups(setup: Setup, n_groups: int = DEFAULT_GROUPS, length_cuts=None, popularity_cuts=None) -> dict:
    """Metrics of every model per user history-length group and per target-popularity group."""
    _preflight(setup)
    loaded, data, split = models_for(setup)
    groups = user_groups(data, split, length_cuts, popularity_cuts, n_groups)
    rows = []
    for m in tqdm(loaded, desc="groups", file=sys.stderr, disable=not setup.progress):
        ranks = evaluate_ranks(m.model, split, "test", _eval_batch(setup))
        for grouping, g in groups.items():
            for j, label in enumerate(g["labels"]):
                members = torch.from_numpy(g["group"] == j)
                n = int(members.sum())
                if n == 0:
                    continue  # explicit cut points can leave a group empty
                rows.append({"model": m.label, "grouping": grouping, "group": j, "label": label, "users": n,
                             "share": n / split.n_users, **_metric_row(ranks[members], setup.metrics)})
            rows.append({"model": m.label, "grouping": grouping, "group": -1, "label": "all",
                         "users": split.n_users, "share": 1.0, **_metric_row(ranks, setup.metrics)})
    meta = {"analysis": "groups", "data": data.source, "users": split.n_users,
            "checkpoints": {m.label: m.ckpt["path"] for m in loaded},
            "cuts": {k: g["cuts"].tolist() for k, g in groups.items()},
            "definition": {"length": "interactions before the test target (len(s) - 1)",
                           "popularity": "occurrences of the test target in the training data s[:-2]"}}
    files = write_outputs(setup.output, "groups", rows, meta)
    if setup.plots:
        from mstein_fast.plots import grouped_bars

        titles = {"length": ("user history length (interactions)", "by user history length"),
                  "popularity": ("test item popularity (training occurrences)", "by target item popularity")}
        for grouping, (xlabel, what) in titles.items():
            sub = [r for r in rows if r["grouping"] == grouping and r["group"] >= 0]
            if sub:
                sub = [{**r, "label": f"{r['label']}\n({r['users']} users)"} for r in sub]
                files += grouped_bars(sub, "label", "model", list(setup.metrics), xlabel,
                                      f"Test metrics {what} ({_short(data.source)})",
                                      os.path.join(setup.output, f"groups_{grouping}"))
    return {"rows": rows, "files": files, **meta}


def analyze_batch_size(setup: Setup, batch_sizes=DEFAULT_BATCH_SIZES) -> dict:
    """Test metrics of models trained at each batch size (trained into ``OUTPUT/runs/<model>-bs<B>``,
    or the given checkpoints, whose model and batch size are read from their configuration)."""
    batch_sizes = sorted({int(b) for b in batch_sizes})
    if any(b < 1 for b in batch_sizes):
        raise UserError(f"batch sizes must be positive, got {batch_sizes}")
    _preflight(setup)
    if setup.checkpoints:
        paths = list(setup.checkpoints)
    else:
        todo = [(m, b) for m in setup.models for b in batch_sizes]
        paths = []
        for m, b in tqdm(todo, desc="batch sizes", file=sys.stderr, disable=not setup.progress):
            paths.append(train_or_reuse(setup.config(model=m, batch_size=b),
                                        os.path.join(setup.output, "runs", f"{m}-bs{b}")))
    loaded, data, split = load_models(paths, setup)
    rows = []
    for m in loaded:
        ranks = evaluate_ranks(m.model, split, "test", _eval_batch(setup))
        cfg = m.ckpt["config"]
        rows.append({"model": cfg.model, "batch_size": cfg.batch_size, "best_epoch": m.ckpt["epoch"],
                     "checkpoint": m.ckpt["path"], **_metric_row(ranks, setup.metrics)})
    rows.sort(key=lambda r: (r["model"], r["batch_size"]))
    meta = {"analysis": "batch-size", "data": data.source, "users": split.n_users,
            "batch_sizes": sorted({r["batch_size"] for r in rows})}
    files = write_outputs(setup.output, "batch_size", rows, meta)
    if setup.plots:
        from mstein_fast.plots import metric_lines

        files += metric_lines(rows, "batch_size", "model", list(setup.metrics), "batch size (sequences per step)",
                              f"Test metrics vs. contrastive batch size ({_short(data.source)})",
                              os.path.join(setup.output, "batch_size"), log2_x=True)
    return {"rows": rows, "files": files, **meta}


LOSS_KEYS = ("loss", "rec_loss", "cl_loss")


def read_run(run_dir: str) -> list[dict]:
    """The epoch records of ``run_dir/metrics.jsonl`` (or of that file given directly)."""
    path = os.path.join(run_dir, "metrics.jsonl") if os.path.isdir(run_dir) else run_dir
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file (expected a run directory of `mstein-fast train`)")
    records = []
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    last = max((n for n, line in enumerate(lines, start=1) if line.strip()), default=0)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if lineno == last and records:  # torn by a kill during its write (the run resumes without it)
                continue
            raise UserError(f"{path}:{lineno}: not a JSON line") from None
        if not isinstance(rec, dict) or "epoch" not in rec or not isinstance(rec.get("valid"), dict):
            raise UserError(f"{path}:{lineno}: not an epoch record of mstein-fast train")
        records.append(rec)
    if not records:
        raise UserError(f"{path}: no epoch recorded yet")
    return records


def plot_runs(run_dirs: list[str], output: str, metrics=DEFAULT_METRICS, plots: bool = True) -> dict:
    """Training curves of one or more runs: ``training_curves.csv/.json`` and ``.png/.svg``."""
    if plots:
        from mstein_fast.plots import require_matplotlib

        require_matplotlib()
    runs = {}
    for d in run_dirs:
        run_dir = d if os.path.isdir(d) else os.path.dirname(os.path.abspath(d))
        label = os.path.basename(os.path.normpath(os.path.abspath(run_dir))) or d
        while label in runs:
            label += "'"
        runs[label] = read_run(d)
    rows = []
    for label, records in runs.items():
        for r in records:
            rows.append({"run": label, "epoch": r["epoch"], **{k: r.get(k) for k in LOSS_KEYS},
                         **{f"valid_{k}": v for k, v in r["valid"].items()}, "best_epoch": r.get("best_epoch"),
                         "time_s": sum((r.get("time_s") or {}).values())})
    meta = {"analysis": "training-curves", "runs": {label: os.path.abspath(d) for label, d in zip(runs, run_dirs)}}
    files = write_outputs(output, "training_curves", rows, meta)
    if plots:
        from mstein_fast.plots import training_curves

        title = "Training curves" + (f": {next(iter(runs))}" if len(runs) == 1 else "")
        files += training_curves(runs, list(LOSS_KEYS), list(metrics), title, os.path.join(output, "training_curves"))
    return {"rows": rows, "files": files, **meta}


def _short(source: str) -> str:
    return os.path.basename(source) if os.path.exists(source) else source.split("(")[0]
