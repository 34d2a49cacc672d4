"""Training curves of run directories (their ``metrics.jsonl``)."""

from __future__ import annotations

import os

from mstein_fast.analysis._common import DEFAULT_METRICS, write_outputs
from mstein_fast.errors import UserError

LOSS_KEYS = ("loss", "rec_loss", "cl_loss")


def read_run(run_dir: str) -> list[dict]:
    """The epoch records of ``run_dir/metrics.jsonl`` (or of that file given directly)."""
    path = os.path.join(run_dir, "metrics.jsonl") if os.path.isdir(run_dir) else run_dir
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file (expected a run directory of `mstein-fast train`)")
    from mstein_fast.checkpoint import read_metrics

    records, _ = read_metrics(path)  # (a torn last line is dropped)
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
