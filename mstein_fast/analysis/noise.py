"""Robustness: random items the user never interacted with are inserted before random positions
of the test input sequences (ratio 0.0 .. 0.4), every model evaluated."""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import numpy as np
from tqdm import tqdm

from mstein_fast.analysis._common import Setup, eval_batch, metric_row, models_for, preflight, short_name, write_outputs
from mstein_fast.data import LeaveOneOut, Sequences, left_pad
from mstein_fast.errors import UserError
from mstein_fast.evaluate import evaluate_ranks

DEFAULT_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4)


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


def noisy_inputs(data: Sequences, n_items: int, ratio: float, seed: int) -> tuple[list[np.ndarray], float]:
    """The test inputs (``s[:-1]``) with noise injected at ``ratio`` (the same draws for every model),
    and the mean number of noise items per user."""
    rng = np.random.default_rng([seed, round(ratio * 1e6)])
    noisy, counts = inject_noise([s[:-1] for s in data.items], ratio, n_items, rng, forbidden=data.items)
    return noisy, float(counts.mean())


def noisy_split(data: Sequences, split: LeaveOneOut, ratio: float, seed: int) -> tuple[LeaveOneOut, float]:
    """``split`` with noise injected into the test inputs (``s[:-1]``) at ``ratio``; the items
    excluded from the ranking stay the user's real history. Returns it and the mean number of
    noise items per user."""
    noisy, mean = noisy_inputs(data, split.n_items, ratio, seed)
    return with_test_inputs(split, noisy), mean


def with_test_inputs(split: LeaveOneOut, inputs: list[np.ndarray]) -> LeaveOneOut:
    """``split`` with the test inputs replaced by ``inputs`` (padded to the split's length)."""
    return dataclasses.replace(split, test_inputs=left_pad(inputs, split.max_len))


def analyze_noise(setup: Setup, ratios=DEFAULT_RATIOS, seed: int = 0) -> dict:
    """Metrics of every model with noise injected into the test inputs at each ratio."""
    ratios = sorted({float(r) for r in ratios})
    if any(not (math.isfinite(r) and 0 <= r <= 100) for r in ratios):
        raise UserError(f"noise ratios must be finite numbers in [0, 100], got {', '.join(f'{r:g}' for r in ratios)}")
    if not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise UserError(f"the noise seed must be an integer in [0, 2**63), got {seed}")
    preflight(setup)
    loaded, data, split = models_for(setup)
    rows = []
    bar = tqdm(total=len(ratios) * len(loaded), desc="noise", file=sys.stderr, disable=not setup.progress)
    for ratio in ratios:
        noisy, mean_inserted = noisy_inputs(data, split.n_items, ratio, seed)
        for m in loaded:  # each model at its own max_seq_length
            ranks = evaluate_ranks(m.model, with_test_inputs(m.split, noisy), "test", eval_batch(setup))
            rows.append({"model": m.label, "ratio": ratio, "mean_noise_items": mean_inserted,
                         **metric_row(ranks, setup.metrics)})
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
                              f"Robustness to noise interactions ({short_name(data.source)})",
                              os.path.join(setup.output, "noise"))
    return {"rows": rows, "files": files, **meta}
