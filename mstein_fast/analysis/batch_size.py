"""Efficiency: test metrics of models trained at several (contrastive) batch sizes. The trainer's
``batch_size`` is the number of sequences per step, and the contrastive loss is taken over the two
views of that batch: the same number."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

from mstein_fast.analysis._common import (
    Setup,
    eval_batch,
    load_models,
    metric_row,
    preflight,
    short_name,
    train_or_reuse,
    write_outputs,
)
from mstein_fast.errors import UserError
from mstein_fast.evaluate import evaluate_ranks

DEFAULT_BATCH_SIZES = (64, 128, 256, 512, 1024)


def analyze_batch_size(setup: Setup, batch_sizes=DEFAULT_BATCH_SIZES) -> dict:
    """Test metrics of models trained at each batch size (trained into ``OUTPUT/runs/<model>-bs<B>``,
    or the given checkpoints, whose model and batch size are read from their configuration)."""
    batch_sizes = sorted({int(b) for b in batch_sizes})
    if any(b < 1 for b in batch_sizes):
        raise UserError(f"batch sizes must be positive, got {batch_sizes}")
    preflight(setup)
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
        ranks = evaluate_ranks(m.model, m.split, "test", eval_batch(setup))
        cfg = m.ckpt["config"]
        rows.append({"model": cfg.model, "batch_size": cfg.batch_size, "best_epoch": m.ckpt["epoch"],
                     "checkpoint": m.ckpt["path"], **metric_row(ranks, setup.metrics)})
    rows.sort(key=lambda r: (r["model"], r["batch_size"]))
    meta = {"analysis": "batch-size", "data": data.source, "users": split.n_users,
            "batch_sizes": sorted({r["batch_size"] for r in rows})}
    files = write_outputs(setup.output, "batch_size", rows, meta)
    if setup.plots:
        from mstein_fast.plots import metric_lines

        files += metric_lines(rows, "batch_size", "model", list(setup.metrics), "batch size (sequences per step)",
                              f"Test metrics vs. contrastive batch size ({short_name(data.source)})",
                              os.path.join(setup.output, "batch_size"), log2_x=True)
    return {"rows": rows, "files": files, **meta}
