"""Sequential recommenders: the STOSA backbone (MStein, STOSA) and the SASRec backbone (SASRec,
CoSeRec, CoSeRec(WDM)), docs/models.md. Device-agnostic: no ``.cuda()`` anywhere.

Every model maps a left-padded ``[B, L]`` batch of item ids (0 = padding) to per-position outputs
and offers the same four methods used by the trainer: :meth:`rec_loss` (next-item ranking loss),
:meth:`contrastive_loss` (between two augmented views, or ``None``), :meth:`score_items`
(higher = better, for every item 1..n_items) and :meth:`nearest_items` (item similarity for the
insert / substitute augmentations).

Where things live: :mod:`.layers` (activations, masks, feed-forward and attention layers),
:mod:`.buckets` (length bucketing of left-padded rows, the padding-skipping encoder's plan),
:mod:`.losses` (BPR + pvn, BCE, dot-product InfoNCE), :mod:`.base` (what all models share),
:mod:`.stosa` (STOSA / MStein), :mod:`.sasrec` (SASRec / CoSeRec / CoSeRec(WDM)).
"""

from __future__ import annotations

from mstein_fast.models.base import _Recommender
from mstein_fast.models.buckets import BUCKET_COST, length_buckets, unpermute
from mstein_fast.models.layers import (
    MASKED_SCORE,
    DotSelfAttention,
    FeedForward,
    WassersteinSelfAttention,
    attention_mask,
    elu_plus_one,
    original_attention_mask,
    paired_w2,
)
from mstein_fast.models.losses import bce, bpr_pvn_sums, dot_infonce, weighted_mean
from mstein_fast.models.sasrec import SASRec
from mstein_fast.models.stosa import STOSA
from mstein_fast.numerics import COV_FLOOR

# model name -> (backbone, contrastive objective)
MODELS = {
    "mstein": ("stosa", "wasserstein"),
    "stosa": ("stosa", None),
    "sasrec": ("sasrec", None),
    "coserec": ("sasrec", "dot"),
    "coserec-wdm": ("sasrec", "wasserstein-split"),
}


def build_model(name: str, n_items: int, cfg) -> _Recommender:
    """The model called ``name`` (a key of :data:`MODELS`) for items ``1..n_items``."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    backbone, contrastive = MODELS[name]
    cls = STOSA if backbone == "stosa" else SASRec
    return cls(n_items, cfg, contrastive)


__all__ = [
    "BUCKET_COST",
    "COV_FLOOR",
    "MASKED_SCORE",
    "MODELS",
    "STOSA",
    "DotSelfAttention",
    "FeedForward",
    "SASRec",
    "WassersteinSelfAttention",
    "attention_mask",
    "bce",
    "bpr_pvn_sums",
    "build_model",
    "dot_infonce",
    "elu_plus_one",
    "length_buckets",
    "original_attention_mask",
    "paired_w2",
    "unpermute",
    "weighted_mean",
]
