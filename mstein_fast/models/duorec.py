"""DuoRec (Qiu et al., WSDM 2022): SASRec trained with cross-entropy over all items plus a
contrastive regulariser between a dropout-augmented encoding of each training sequence and the
encoding of another training sequence with the same next item (the reference's ``contrast:
us_x``; docs/models.md). :class:`SameTargetPositives` draws those other sequences."""

from __future__ import annotations

import torch

from mstein_fast.contracts import ModelConfig
from mstein_fast.models.cl4srec import CL4SRec


class DuoRec(CL4SRec):
    """SASRec's encoder, cross-entropy over all items at every position (as :class:`CL4SRec`); the
    contrastive loss is the dot-product InfoNCE (temperature ``dot_temperature``) between the
    last-position outputs of rows ``r`` and ``B + r`` of its views, where row ``r`` is training
    sequence ``r`` itself (encoded again, with its own dropout masks: the unsupervised,
    model-level augmentation) and row ``B + r`` a training sequence with the same next item (the
    supervised positive), both from :class:`SameTargetPositives`; the other ``2B - 2`` rows are
    the negatives."""

    # where the trainer takes the contrastive views from: SameTargetPositives, not the augmenter
    contrastive_views = "same-target"

    def __init__(self, n_items: int, cfg: ModelConfig, contrastive: str | None = "dot-last"):
        super().__init__(n_items, cfg, contrastive)


class SameTargetPositives:
    """For each user's training sequence, a random other training prefix with the same next item.

    The training pairs are every prefix ``s[:j]`` of a user's training items with its next item
    ``s[j]`` (``1 <= j <= len(s) - 3``: the targets ``s[1:-2]`` of docs/protocol.md, so every
    position of every user, as the reference's prefix-per-sample data). A user's *anchor* is its
    whole training input ``s[:-3]`` with target ``s[-3]`` (the trainer's row); its positive is drawn
    uniformly among the other pairs with the same target, any user's (the anchor itself excluded,
    other prefixes of the same user included, as the reference); with no other such pair, or
    for a user with no training input, the positive is the anchor itself (as the reference).

    ``train_full`` ``[U, W]`` the training inputs ``s[:-3]`` left-padded with 0 (not truncated),
    ``train_targets`` ``[U, L]`` their targets (its last column: ``s[-3]``, 0 for an empty input),
    ``max_len`` the width of the views. Everything stays on the CPU.
    """

    def __init__(self, train_full: torch.Tensor, train_targets: torch.Tensor, max_len: int):
        self.full = train_full.cpu()
        self.max_len = max_len
        users, width = self.full.shape
        # s[:-2] left-padded: [U, W + 1]; a pair ends (its prefix's last item) at column e of train_full
        ext = torch.cat([self.full, train_targets[:, -1:].cpu()], 1)
        has_prefix = ext[:, :-1] > 0  # [U, W]: column e ends a prefix whose target is ext[:, e + 1]
        pair_user, pair_end = torch.nonzero(has_prefix, as_tuple=True)
        pair_target = ext[pair_user, pair_end + 1]
        order = torch.argsort(pair_target, stable=True)  # pairs grouped by target
        self.pair_user, self.pair_end = pair_user[order], pair_end[order]
        sorted_target = pair_target[order]
        n_ids = int(ext.max()) + 1 if ext.numel() else 1
        counts = torch.bincount(sorted_target, minlength=n_ids)
        self.count = counts
        self.start = torch.cumsum(counts, 0) - counts
        # each user's anchor: its pair ending at the last column (-1: a user without training input)
        self.anchor = torch.full((users,), -1, dtype=torch.int64)
        if width:
            is_anchor = self.pair_end == width - 1
            self.anchor[self.pair_user[is_anchor]] = torch.nonzero(is_anchor).squeeze(1)
        self.anchor_target = ext[:, -1]

    def positives(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``[B]`` pair indices: a positive for each of ``users`` (``-1``: the user's own row)."""
        anchor = self.anchor[users]
        target = self.anchor_target[users]
        others = (self.count[target] - 1).clamp_min(0)
        draw = torch.rand(len(users), generator=generator, dtype=torch.float64)
        pick = torch.floor(draw * others).long().minimum((others - 1).clamp_min(0))
        index = self.start[target] + pick
        index = index + (index >= anchor).long()  # skip the anchor itself
        return torch.where((others > 0) & (anchor >= 0), index, torch.full_like(index, -1))

    def views(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``[2B, max_len]``: the users' training inputs (last ``max_len`` items), then their
        positives (each prefix's last ``max_len`` items), left-padded with 0."""
        users = users.cpu()
        pick = self.positives(users, generator)
        own = pick < 0
        rows = torch.where(own, users, self.pair_user[pick.clamp_min(0)])
        width = self.full.shape[1]
        end = torch.where(own, torch.full_like(users, width - 1), self.pair_end[pick.clamp_min(0)])
        return torch.cat([self._window(users, torch.full_like(users, width - 1)), self._window(rows, end)])

    def _window(self, rows: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """``[B, max_len]``: columns ``end - max_len + 1 .. end`` of ``train_full``'s ``rows`` (0 before column 0)."""
        col = end.unsqueeze(1) - self.max_len + 1 + torch.arange(self.max_len)
        if self.full.shape[1] == 0:
            return torch.zeros(len(rows), self.max_len, dtype=torch.int64)
        out = self.full[rows.unsqueeze(1), col.clamp_min(0)]
        return out.masked_fill(col < 0, 0)
