"""Training curves of run directories (their ``metrics.jsonl``)."""

from __future__ import annotations

import json
import os

from mstein_fast.analysis._common import DEFAULT_METRICS, write_outputs
from mstein_fast.errors import UserError

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
