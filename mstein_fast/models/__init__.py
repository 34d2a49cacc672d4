"""Sequential recommenders: the STOSA backbone (MStein, STOSA) and the SASRec backbone (SASRec,
CoSeRec, CoSeRec(WDM)), docs/models.md. Device-agnostic: no ``.cuda()`` anywhere.

Every model maps a left-padded ``[B, L]`` batch of item ids (0 = padding) to per-position outputs
and offers the same four methods used by the trainer: :meth:`rec_loss` (next-item ranking loss),
:meth:`contrastive_loss` (between two augmented views, or ``None``), :meth:`score_items`
(higher = better, for every item 1..n_items) and :meth:`nearest_items` (item similarity for the
insert / substitute augmentations). The models with a user embedding (``needs_users``: BPRMF and
Caser) also take ``users``, the rows of the batch's users in the training data, in :meth:`rec_loss`
and :meth:`score_items` (every model accepts the argument; the sequential ones ignore it).

Where things live: :mod:`.layers` (activations, masks, feed-forward and attention layers),
:mod:`.buckets` (length bucketing of left-padded rows, the padding-skipping encoder's plan),
:mod:`.losses` (BPR + pvn, BCE, dot-product InfoNCE), :mod:`.base` (what all models share),
:mod:`.stosa` (STOSA / MStein), :mod:`.sasrec` (SASRec / CoSeRec / CoSeRec(WDM)), :mod:`.cl4srec`
(CL4SRec), :mod:`.duorec` (DuoRec and its same-target positives), :mod:`.bprmf` (BPRMF), :mod:`.caser`
(Caser), :mod:`.bert4rec` (BERT4Rec), :mod:`.registry` (the model names,
:func:`build_model`).

A model receives a :class:`~mstein_fast.contracts.ModelConfig` (``TrainConfig.model_config()``), the
typed settings it reads, never the run's whole configuration (docs/models.md).
"""

from __future__ import annotations

from mstein_fast.contracts import ModelConfig
from mstein_fast.models.base import _Recommender
from mstein_fast.models.bert4rec import BERT4Rec
from mstein_fast.models.bprmf import BPRMF
from mstein_fast.models.buckets import BUCKET_COST, length_buckets, unpermute
from mstein_fast.models.caser import Caser
from mstein_fast.models.cl4srec import CL4SRec, full_softmax_ce
from mstein_fast.models.duorec import DuoRec, SameTargetPositives
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
from mstein_fast.models.registry import MODELS, build_model, needs_users
from mstein_fast.models.sasrec import SASRec
from mstein_fast.models.stosa import STOSA
from mstein_fast.numerics import COV_FLOOR

__all__ = [
    "BERT4Rec",
    "BPRMF",
    "BUCKET_COST",
    "CL4SRec",
    "COV_FLOOR",
    "Caser",
    "MASKED_SCORE",
    "MODELS",
    "ModelConfig",
    "STOSA",
    "SameTargetPositives",
    "DotSelfAttention",
    "DuoRec",
    "FeedForward",
    "SASRec",
    "WassersteinSelfAttention",
    "attention_mask",
    "bce",
    "bpr_pvn_sums",
    "build_model",
    "dot_infonce",
    "elu_plus_one",
    "full_softmax_ce",
    "length_buckets",
    "needs_users",
    "original_attention_mask",
    "paired_w2",
    "unpermute",
    "weighted_mean",
]
