"""Where the gains are: metrics by user history-length group and by target-item popularity group."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from mstein_fast.analysis._common import Setup, eval_batch, metric_row, models_for, preflight, short_name, write_outputs
from mstein_fast.data import LeaveOneOut, Sequences
from mstein_fast.errors import UserError
from mstein_fast.evaluate import evaluate_ranks

DEFAULT_GROUPS = 4
MAX_GROUPS = 1000  # groups of one grouping (quantiles or cut points): far more than a chart can show
MAX_CUT = 10**12  # a cut point is a count (interactions, occurrences)


def quantile_cuts(values: np.ndarray, n_groups: int) -> np.ndarray:
    """Integer cut points splitting ``values`` into up to ``n_groups`` groups of about equal size
    (fewer where ties make quantiles coincide); group ``j`` holds ``cuts[j-1] <= v < cuts[j]``."""
    if not 1 <= n_groups <= MAX_GROUPS:
        raise UserError(f"the number of groups must be in [1, {MAX_GROUPS}], got {n_groups}")
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


def check_cuts(cuts, what: str) -> list[int]:
    """Explicit cut points as sorted distinct integers; :class:`UserError` naming ``what`` unless
    each is an integer in [0, :data:`MAX_CUT`] and there are at most :data:`MAX_GROUPS` - 1."""
    values = sorted(set(cuts))
    for c in values:
        if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c <= MAX_CUT:
            raise UserError(f"{what}: cut points are counts in [0, {MAX_CUT}], got {c!r}")
    if len(values) >= MAX_GROUPS:
        raise UserError(f"{what}: at most {MAX_GROUPS - 1} cut points, got {len(values)}")
    return values


def analyze_groups(setup: Setup, n_groups: int = DEFAULT_GROUPS, length_cuts=None, popularity_cuts=None) -> dict:
    """Metrics of every model per user history-length group and per target-popularity group.
    The group count and cut points are checked before any model is loaded or trained."""
    if not 1 <= n_groups <= MAX_GROUPS:
        raise UserError(f"--groups must be in [1, {MAX_GROUPS}], got {n_groups}")
    if length_cuts is not None:
        length_cuts = check_cuts(length_cuts, "--length-bins")
    if popularity_cuts is not None:
        popularity_cuts = check_cuts(popularity_cuts, "--popularity-bins")
    preflight(setup)
    loaded, data, split = models_for(setup)
    groups = user_groups(data, split, length_cuts, popularity_cuts, n_groups)
    rows = []
    for m in tqdm(loaded, desc="groups", file=sys.stderr, disable=not setup.progress):
        ranks = evaluate_ranks(m.model, m.split, "test", eval_batch(setup))
        for grouping, g in groups.items():
            for j, label in enumerate(g["labels"]):
                members = torch.from_numpy(g["group"] == j)
                n = int(members.sum())
                if n == 0:
                    continue  # explicit cut points can leave a group empty
                rows.append({"model": m.label, "grouping": grouping, "group": j, "label": label, "users": n,
                             "share": n / split.n_users, **metric_row(ranks[members], setup.metrics)})
            rows.append({"model": m.label, "grouping": grouping, "group": -1, "label": "all",
                         "users": split.n_users, "share": 1.0, **metric_row(ranks, setup.metrics)})
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
                                      f"Test metrics {what} ({short_name(data.source)})",
                                      os.path.join(setup.output, f"groups_{grouping}"))
    return {"rows": rows, "files": files, **meta}
