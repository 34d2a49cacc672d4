"""``views``: the augmented views' distribution over a whole data set, the original's dataset code
against our ``Augmenter`` in compat mode."""

from __future__ import annotations

import contextlib
import importlib
import os
import types

import numpy as np
import torch

from .common import ParityError
from .original import import_original
from .stats import z_score

VIEW_STATS = {"items": "non-padding items", "zeros_inside": "zeros after the first item (masked)",
              "new_items": "items not in the input", "last_kept": "last item = the input's last",
              "first_kept": "first item = the input's first (within max_len)"}


def view_stats(views: list[list[int]], inputs: list[list[int]], max_len: int) -> dict[str, float]:
    """Per-view averages over ``views`` (each left-padded to ``max_len``, the augmentation of
    ``inputs[i]``; :data:`VIEW_STATS` names them): what an augmentation's distribution shows over a
    whole data set (insert and crop move ``items``, mask ``zeros_inside``, substitute and insert
    ``new_items``, crop and reorder the kept ends)."""
    if len(views) != len(inputs) or not views:
        raise ParityError(f"{len(views)} views for {len(inputs)} inputs")
    totals = dict.fromkeys(VIEW_STATS, 0.0)
    for view, seq in zip(views, inputs):
        if len(view) != max_len:
            raise ParityError(f"a view of length {len(view)}, not max_len {max_len}")
        start = next((i for i, t in enumerate(view) if t != 0), max_len)
        body = view[start:]
        tail = seq[-max_len:]
        seen = set(seq)
        totals["items"] += sum(1 for t in body if t != 0)
        totals["zeros_inside"] += sum(1 for t in body if t == 0)
        totals["new_items"] += sum(1 for t in body if t != 0 and t not in seen)
        totals["last_kept"] += float(bool(body) and bool(tail) and body[-1] == tail[-1])
        totals["first_kept"] += float(bool(body) and bool(tail) and body[0] == tail[0])
    return {k: v / len(views) for k, v in totals.items()}


def _compare_stats(theirs: list[dict], ours: list[dict], z_max: float) -> list[tuple[str, float, float, float, float, float, bool]]:
    """Per statistic: mean and std over the draws of each side, z = |difference| / its standard
    error, and whether z exceeds ``z_max``."""
    rows = []
    for key in VIEW_STATS:
        a = np.array([d[key] for d in theirs], dtype=np.float64)
        b = np.array([d[key] for d in ours], dtype=np.float64)
        z = z_score(a, b)
        rows.append((key, float(a.mean()), float(a.std(ddof=1)), float(b.mean()), float(b.std(ddof=1)), z, z > z_max))
    return rows


def original_view_maker(original: types.SimpleNamespace, cfg, data_file: str, similarity_path: str | None = None):
    """The original's training dataset (``datasets.RecWithContrastiveLearningDataset``, its
    ``Random`` augmentation with ``cfg``'s settings and its own ItemCF-IUF model: the warm-up's
    views); its ``_one_pair_data_augmentation(items)`` draws two views of one input with Python's
    ``random``. The ItemCF-IUF pickle goes to ``similarity_path`` (default: a temporary folder)."""
    import io
    import tempfile

    try:
        datasets = importlib.import_module("datasets")
    except ImportError as err:
        raise ParityError(f"cannot import the original's datasets.py: {err}") from err
    if not hasattr(datasets, "RecWithContrastiveLearningDataset"):
        raise ParityError(f"{datasets.__file__} has no RecWithContrastiveLearningDataset")
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        similarity = original.models.OfflineItemSimilarity(
            data_file=data_file, similarity_path=similarity_path or os.path.join(tmp, "similarity.pkl"),
            model_name="ItemCF_IUF")
        ns = types.SimpleNamespace(
            max_seq_length=cfg.max_seq_length, offline_similarity_model=similarity, online_similarity_model=None,
            tao=cfg.tao, gamma=cfg.gamma, beta=cfg.beta, substitute_rate=cfg.substitute_rate,
            insert_rate=cfg.insert_rate, max_insert_num_per_pos=cfg.max_insert_num_per_pos,
            augment_threshold=cfg.augment_threshold, augment_type_for_short="SIM", base_augment_type="random",
            n_views=2)
        # (the user list is not read by _one_pair_data_augmentation)
        return datasets.RecWithContrastiveLearningDataset(ns, [[1, 2, 3, 4]], data_type="train")


def views_command(args) -> int:
    """The distribution of the augmented views, the original's dataset code against our Augmenter."""
    import random

    from mstein_fast.augment import Augmenter, itemcf_iuf_topk
    from mstein_fast.config import build_config
    from mstein_fast.data import load_sequences

    original = import_original(args.original, args.original_deps)
    cfg, _ = build_config(None, {"data": args.data, "model": "mstein", "compat": "original", "seed": args.seed})
    data = load_sequences(args.data)
    inputs = [[int(t) for t in s[:-3]] for s in data.items]  # the training inputs of both codes
    dataset = original_view_maker(original, cfg, args.data, args.similarity)
    augmenter = Augmenter(cfg.augment_config())
    g = torch.Generator().manual_seed(args.seed)
    augmenter.set_similarity(itemcf_iuf_topk([s[:-3] for s in data.items], data.n_items, augmenter.similar_k, g))
    width = max(1, max(len(s) for s in inputs))
    full = torch.zeros(len(inputs), width, dtype=torch.int64)
    for i, s in enumerate(inputs):
        if s:
            full[i, width - len(s):] = torch.tensor(s)
    lengths = torch.tensor([len(s) for s in inputs])
    theirs, ours = [], []
    for draw in range(args.draws):
        random.seed(args.seed * 1000 + draw)
        views = [v.tolist() for s in inputs for v in dataset._one_pair_data_augmentation(s)]
        theirs.append(view_stats(views, [s for s in inputs for _ in range(2)], cfg.max_seq_length))
        both = augmenter.views(full, lengths, torch.Generator().manual_seed(args.seed * 1000 + draw)).tolist()
        ours.append(view_stats(both, inputs + inputs, cfg.max_seq_length))
    rows = _compare_stats(theirs, ours, args.z_max)
    print(f"{os.path.basename(args.data)}: two views of each of {len(inputs)} training inputs, {args.draws} draws a side; "
          f"the original's RecWithContrastiveLearningDataset (its ItemCF-IUF model, the warm-up) against our "
          f"Augmenter, compat original; settings: tao {cfg.tao}, gamma {cfg.gamma}, insert {cfg.insert_rate}, "
          f"substitute {cfg.substitute_rate}, threshold {cfg.augment_threshold}, max_len {cfg.max_seq_length}")
    print("| per view | original (mean +- std over draws) | ours | z | |")
    print("| --- | ---: | ---: | ---: | --- |")
    for key, a, sa, b, sb, z, bad in rows:
        print(f"| {VIEW_STATS[key]} | {a:.4f} +- {sa:.4f} | {b:.4f} +- {sb:.4f} | {z:.1f} | {'DIFFERS' if bad else 'ok'} |")
    differ = [r[0] for r in rows if r[-1]]
    print(f"{len(differ)} of {len(rows)} statistics differ by more than {args.z_max} standard errors"
          + (f": {', '.join(differ)}" if differ else ""))
    return 1 if differ else 0

