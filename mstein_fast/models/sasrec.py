"""The SASRec backbone (SASRec, CoSeRec, CoSeRec(WDM))."""

from __future__ import annotations

import torch
from torch import nn

from mstein_fast import distributed
from mstein_fast.contracts import ModelConfig
from mstein_fast.models.base import _Recommender
from mstein_fast.models.layers import (
    DotSelfAttention,
    FeedForward,
    attention_mask,
    elu_plus_one,
    original_attention_mask,
)
from mstein_fast.models.losses import bce, dot_infonce
from mstein_fast.nn.dropout import Dropout


class DotTransformer(_Recommender):
    """The encoder SASRec, CL4SRec, DuoRec, CoSeRec and BERT4Rec share: item embeddings (padding 0)
    plus learned positions, a LayerNorm and dropout, then ``num_hidden_layers`` blocks of dot-product
    self-attention and GELU feed-forward layers (:mod:`mstein_fast.models.layers`); the subclass
    chooses the item table's rows and the attention mask."""

    def _build_encoder(self, cfg: ModelConfig, item_rows: int) -> None:
        """The encoder's modules, in the order the weights are drawn by ``_init_weights``."""
        h = cfg.hidden_size
        self.item_emb = nn.Embedding(item_rows, h, padding_idx=0)
        self.position_emb = nn.Embedding(cfg.max_seq_length, h)
        self.embed_norm = nn.LayerNorm(h, eps=1e-12)
        self.dropout = Dropout(cfg.hidden_dropout_prob)
        self.attention = nn.ModuleList(
            DotSelfAttention(h, cfg.num_attention_heads, cfg.attention_probs_dropout_prob, cfg.hidden_dropout_prob)
            for _ in range(cfg.num_hidden_layers)
        )
        self.ffn = nn.ModuleList(FeedForward(h, cfg.hidden_dropout_prob) for _ in range(cfg.num_hidden_layers))

    def _encode(self, seqs: torch.Tensor, allowed: torch.Tensor, last_only: bool) -> torch.Tensor:
        """``[B, L]`` ids -> ``[B, L, H]`` outputs under the attention mask ``allowed``; with
        ``last_only`` the last position's only, ``[B, 1, H]`` (the last layer computes nothing else)."""
        pos = torch.arange(seqs.shape[1], device=seqs.device)
        x = self.dropout(self.embed_norm(self.item_emb(seqs) + self.position_emb(pos)))
        layers = len(self.attention)
        for i, (attention, ffn) in enumerate(zip(self.attention, self.ffn)):
            x = ffn(attention(x, allowed, last_only and i == layers - 1))
        return x


class SASRec(DotTransformer):
    """SASRec backbone: dot-product attention, BCE with one sampled negative per position.

    ``contrastive="dot"`` is CoSeRec (dot-product InfoNCE on the flattened outputs);
    ``"wasserstein-split"`` is CoSeRec(WDM): each output vector is split into halves
    ``[mean ; ELU(cov) + 1]`` and the views are compared by Wasserstein InfoNCE."""

    def __init__(self, n_items: int, cfg: ModelConfig, contrastive: str | None = None):
        super().__init__(n_items, cfg, contrastive)
        h = cfg.hidden_size
        if contrastive == "wasserstein-split" and h % 2:
            raise ValueError(f"coserec-wdm splits the output in halves: hidden_size must be even, got {h}")
        self._build_encoder(cfg, n_items + 1)
        self._init_weights()

    def encode(self, seqs: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``[B, L]`` ids -> ``[B, L, H]`` outputs; with ``last_only`` the last position's only,
        ``[B, 1, H]`` (the last layer computes nothing else)."""
        allowed = original_attention_mask(seqs, -10000.0) if self.compat else attention_mask(seqs)
        return self._encode(seqs, allowed, last_only)

    def rec_loss(self, seqs, targets, negatives, users=None) -> tuple[torch.Tensor, dict]:
        """``-log sigmoid(<h, pos>) - log sigmoid(-<h, neg>)`` over non-padding target positions."""
        out = self.encode(seqs)
        pos_logit = (out * self.item_emb(targets)).sum(-1)
        neg_logit = (out * self.item_emb(negatives)).sum(-1)
        loss = bce(pos_logit, neg_logit, (targets > 0).to(out.dtype), original=self.compat)
        return loss, {"bce": loss.detach()}

    def contrastive_loss(self, views: torch.Tensor) -> torch.Tensor | None:
        if self.contrastive is None:
            return None
        out = self.encode(views)
        if self.contrastive == "dot":
            flat = out.reshape(out.shape[0], -1)
            b = flat.shape[0] // 2
            if self.cl_group is not None:
                return distributed.dot_infonce(flat[:b], flat[b:], self.dot_temperature, group=self.cl_group)
            return dot_infonce(flat[:b], flat[b:], self.dot_temperature)
        half = self.hidden // 2
        return self._wasserstein_infonce(out[..., :half], elu_plus_one(out[..., half:]))

    def score_items(self, seqs: torch.Tensor, include_padding: bool = False, users=None) -> torch.Tensor:
        """``[B, n_items]`` dot products of the last position with every item (column i: id i+1);
        with ``include_padding`` ``[B, n_items + 1]`` whose column 0 scores the padding item 0
        (``users`` is ignored: the history is the whole input)."""
        return self.encode(seqs, last_only=True)[:, -1] @ self.item_emb.weight[0 if include_padding else 1:].T

    def _item_similarity(self, rows):
        return self.item_emb(rows) @ self.item_emb.weight[1:].T
