"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional transformer trained with the Cloze objective,
masked items predicted from both sides, and scored through a mask token appended after the history
(docs/models.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mstein_fast.contracts import ModelConfig
from mstein_fast.models.sasrec import DotTransformer

# the share of training rows whose last item alone is masked (the scoring situation: the item after
# the history predicted from a mask at the end); RecBole 1.2.1's ft_ratio default, drawn per row here
LAST_ITEM_SHARE = 0.5
# the masked rows of a batch are padded to a multiple of this before the output layer (cloze_loss)
MASKED_ROWS_BUCKET = 256


def bidirectional_mask(seqs: torch.Tensor) -> torch.Tensor:
    """``[B, 1, 1, L]`` bool, True where key j is an item (or the mask token): every query attends to
    every item of its row, before and after it; padding keys are masked. A row without items attends
    uniformly (the masked score is finite: no NaN)."""
    return (seqs > 0)[:, None, None, :]


class BERT4Rec(DotTransformer):
    """BERT4Rec: item embeddings (ids ``1..n_items``, padding 0, the mask token ``n_items + 1``) plus
    learned positions, a LayerNorm and dropout, then ``num_hidden_layers`` blocks of SASRec's
    dot-product self-attention and GELU feed-forward layers (:mod:`mstein_fast.models.layers`)
    without the causal mask (padding keys masked).

    Output layer (the paper's, eq. 7, with the LayerNorm of the authors' code and RecBole 1.2.1): an
    output position's vector ``h`` becomes ``LayerNorm(GELU(W h + b))``, scored against every item's
    input embedding (tied) plus a per-item bias: ``logit_i = <LayerNorm(GELU(W h + b)), E_i> + b_i``
    for the items ``1..n_items`` (neither padding nor the mask token is a candidate).

    Training (:meth:`rec_loss`): the row of training items is masked by :meth:`cloze_mask` and the
    loss is the cross-entropy over all items at the masked positions, averaged over the masked
    positions of the batch. Scoring (:meth:`score_items`): the mask token is appended after the
    history (the oldest item dropped at ``max_seq_length``), and the items are scored from its output.
    """

    def __init__(self, n_items: int, cfg: ModelConfig, contrastive: str | None = None):
        super().__init__(n_items, cfg, contrastive)
        if contrastive is not None:
            raise ValueError(f"BERT4Rec has no contrastive objective, got contrastive={contrastive!r}")
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {cfg.mask_ratio}")
        h = cfg.hidden_size
        self.mask_ratio = cfg.mask_ratio
        self.mask_token = n_items + 1
        self._build_encoder(cfg, n_items + 2)  # item row n_items + 1: the mask token
        self.out_dense = nn.Linear(h, h)
        self.out_norm = nn.LayerNorm(h, eps=1e-12)
        self.out_bias = nn.Parameter(torch.zeros(n_items + 1))  # entry 0 (padding) is never a candidate
        self._init_weights()

    def encode(self, seqs: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``[B, L]`` ids (mask tokens included, ``L <= max_seq_length``) -> ``[B, L, H]`` encoder
        outputs (before the output layer); with ``last_only`` the last position's only, ``[B, 1, H]``."""
        if seqs.shape[1] > self.max_len:
            raise ValueError(f"BERT4Rec encodes at most max_seq_length {self.max_len} positions, got {seqs.shape[1]}")
        return self._encode(seqs, bidirectional_mask(seqs), last_only)

    def _logits(self, out: torch.Tensor, first: int = 1) -> torch.Tensor:
        """``[N, H]`` encoder outputs -> ``[N, n_items + 1 - first]`` logits of the items ``first..n_items``
        through the output layer (``first = 0`` adds the padding item's column)."""
        z = self.out_norm(F.gelu(self.out_dense(out)))
        return z @ self.item_emb.weight[first:self.n_items + 1].T + self.out_bias[first:]

    def training_rows(self, seqs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The trainer's inputs ``s[:-3]`` and targets ``s[1:-2]`` (``[B, W]`` each, left-padded) ->
        the rows of training items ``s[:-2]``, their last ``min(W + 1, max_seq_length)`` items."""
        rows = torch.cat([seqs, targets[:, -1:]], 1)
        return rows[:, -min(rows.shape[1], self.max_len):]

    def cloze_mask(self, rows: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` bool: the positions of ``rows`` to mask. A row is, with probability
        :data:`LAST_ITEM_SHARE`, a last-item row (its last position only), else each of its items is
        masked with probability ``mask_ratio``, its last item when that masked none; a row without
        items has none. Drawn on the CPU from PyTorch's default generator (the trainer seeds it each
        epoch: a resumed run draws the same masks), whatever the model's device."""
        b, width = rows.shape
        last_row = torch.rand(b, dtype=torch.float64) < LAST_ITEM_SHARE
        draw = torch.rand(b, width, dtype=torch.float64) < self.mask_ratio
        is_item = (rows > 0).cpu()
        mask = draw & is_item & ~last_row.unsqueeze(1)
        last = torch.zeros(b, width, dtype=torch.bool)
        if width:
            last[:, -1] = ~mask.any(1)  # last-item rows, and the rows whose draw masked nothing
        return (mask | (last & is_item)).to(rows.device)

    def cloze_loss(self, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all items of the items of ``rows`` at the positions ``mask``, with
        those positions replaced by the mask token; 0 (attached to the graph) when nothing is masked."""
        out = self.encode(rows.masked_fill(mask, self.mask_token))
        picked = out[mask]
        n = picked.shape[0]
        if n == 0:
            return self._logits(picked).sum()
        # the masked positions go through the output layer as a multiple of MASKED_ROWS_BUCKET rows
        # (zero rows appended, their logits dropped): the count changes with every batch, and each
        # new shape of these products cost oneDNN a cached primitive (memory that grew ~200 MB an
        # epoch on Office until the process was killed); a few bucket sizes keep that cache bounded
        size = -(-n // MASKED_ROWS_BUCKET) * MASKED_ROWS_BUCKET
        if size > n:
            picked = torch.cat([picked, picked.new_zeros(size - n, picked.shape[1])])
        return F.cross_entropy(self._logits(picked)[:n], rows[mask] - 1)

    def rec_loss(self, seqs, targets, negatives, users=None) -> tuple[torch.Tensor, dict]:
        """The Cloze loss of the rows of training items (:meth:`training_rows`) masked by
        :meth:`cloze_mask` (``negatives`` and ``users`` are not used)."""
        rows = self.training_rows(seqs, targets)
        loss = self.cloze_loss(rows, self.cloze_mask(rows))
        return loss, {"ce": loss.detach()}

    def contrastive_loss(self, views: torch.Tensor) -> None:
        """None: BERT4Rec has no contrastive term."""
        return None

    def append_mask(self, seqs: torch.Tensor) -> torch.Tensor:
        """``[B, W]`` left-padded histories -> ``[B, min(W + 1, max_seq_length)]``: the mask token
        after each history, its oldest position dropped when the row would exceed ``max_seq_length``."""
        token = torch.full((seqs.shape[0], 1), self.mask_token, dtype=seqs.dtype, device=seqs.device)
        rows = torch.cat([seqs, token], 1)
        return rows[:, -min(rows.shape[1], self.max_len):]

    def score_items(self, seqs: torch.Tensor, include_padding: bool = False, users=None) -> torch.Tensor:
        """``[B, n_items]`` scores of every item (column i: id i + 1) from the output at the mask token
        appended after each history (:meth:`append_mask`); with ``include_padding`` ``[B, n_items + 1]``
        whose column 0 scores the padding item (``users`` is ignored)."""
        out = self.encode(self.append_mask(seqs), last_only=True)[:, -1]
        return self._logits(out, 0 if include_padding else 1)

    def item_vectors(self) -> dict[str, torch.Tensor]:
        """The item embeddings and biases that score the items, row i = item id i + 1 (the mask token's
        row left out): ``{"vector": [n_items, H], "bias": [n_items]}``."""
        return {"vector": self.item_emb.weight[1:self.n_items + 1], "bias": self.out_bias[1:]}

    def _item_similarity(self, rows):
        return self.item_emb(rows) @ self.item_emb.weight[1:self.n_items + 1].T
