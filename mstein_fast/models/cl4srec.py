"""CL4SRec (Xie et al., ICDE 2022): SASRec trained with cross-entropy over all items plus a
dot-product InfoNCE between two augmented views of each sequence, on the last position's output
(docs/models.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mstein_fast import distributed
from mstein_fast.contracts import ModelConfig
from mstein_fast.models.losses import dot_infonce
from mstein_fast.models.sasrec import SASRec


def full_softmax_ce(out: torch.Tensor, targets: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next item over every item, at the non-padding target positions.

    ``out`` ``[B, L, H]`` outputs, ``targets`` ``[B, L]`` item ids (0: no target there),
    ``item_table`` ``[n_items + 1, H]`` (row 0, padding, is never a candidate): the logits of a
    position are ``<out, item_table[1:]>`` and its label ``target - 1``. Only the positions with a
    target are multiplied with the table (``[positions, n_items]`` logits, not ``[B, L, n_items]``).
    0 when no position has a target."""
    keep = targets > 0
    logits = out[keep] @ item_table[1:].T
    if logits.shape[0] == 0:
        return logits.sum()  # 0, still attached to the graph
    return F.cross_entropy(logits, targets[keep] - 1)


class CL4SRec(SASRec):
    """SASRec's encoder; next-item loss: softmax cross-entropy over all items at every position;
    contrastive loss: dot-product InfoNCE (temperature ``dot_temperature``) between the two views'
    last-position outputs. The views come from the augmenter (``augmentations = "cl4srec"``: crop,
    mask, reorder; the model preset sets it)."""

    def __init__(self, n_items: int, cfg: ModelConfig, contrastive: str | None = "dot-last"):
        super().__init__(n_items, cfg, contrastive)

    def rec_loss(self, seqs, targets, negatives, users=None) -> tuple[torch.Tensor, dict]:
        """Cross-entropy of each position's next item over all ``n_items`` items, averaged over the
        non-padding target positions (``negatives`` and ``users`` are not used)."""
        loss = full_softmax_ce(self.encode(seqs), targets, self.item_emb.weight)
        return loss, {"ce": loss.detach()}

    def contrastive_loss(self, views: torch.Tensor) -> torch.Tensor | None:
        """InfoNCE between rows ``r`` and ``B + r`` of ``views`` ``[2B, L]`` (two views of sequence
        ``r``), on their last-position outputs ``[2B, H]``; the other ``2B - 2`` rows are the negatives."""
        if self.contrastive is None:
            return None
        out = self.encode(views, last_only=True)[:, -1]
        b = out.shape[0] // 2
        if self.cl_group is not None:
            return distributed.dot_infonce(out[:b], out[b:], self.dot_temperature, group=self.cl_group)
        return dot_infonce(out[:b], out[b:], self.dot_temperature)
