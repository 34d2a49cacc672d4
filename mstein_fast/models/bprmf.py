"""BPRMF (Rendle et al., UAI 2009): matrix factorisation trained with the BPR pairwise loss.

Not sequential: a user is one embedding, whatever the order of their items; the history a caller
passes is ignored and the user's row in the training data (``users``) selects the embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mstein_fast.contracts import ModelConfig
from mstein_fast.models.base import _Recommender
from mstein_fast.models.losses import weighted_mean


def bpr(pos_score: torch.Tensor, neg_score: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``-log sigmoid(pos - neg)`` (a stable log-sigmoid) averaged over the positions of ``weight``
    (1 at a real (positive, negative) pair, 0 at padding)."""
    return weighted_mean(-F.logsigmoid(pos_score - neg_score), weight)


class BPRMF(_Recommender):
    """User and item embeddings of size ``hidden_size``; ``score(u, i) = <user_u, item_i>``.

    Trained with BPR, ``-log sigmoid(s(u, pos) - s(u, neg))``: every non-padding target of the
    user's training row is a positive, paired with the negative the trainer sampled for that
    position (an item the user never interacted with), the mean taken over all pairs of the batch;
    an epoch thus visits each (user, training item) pair once, as RecBole's BPR does. No L2 term
    (RecBole's BPR has none; ``weight_decay`` adds one through Adam).

    Initialisation: Xavier-normal embeddings as RecBole's BPR, or with ``init_mean`` set a normal
    of mean ``init_mean`` and std ``initializer_range`` like the other models."""

    needs_users = True

    def __init__(self, n_items: int, cfg: ModelConfig, contrastive: str | None = None, *, n_users: int):
        super().__init__(n_items, cfg, contrastive)
        if contrastive is not None:
            raise ValueError(f"BPRMF has no contrastive objective, got {contrastive!r}")
        if n_users < 1:
            raise ValueError(f"BPRMF needs at least one user, got n_users={n_users}")
        self.n_users = n_users
        self.user_emb = nn.Embedding(n_users, cfg.hidden_size)
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden_size, padding_idx=0)
        if cfg.init_mean is None:
            nn.init.xavier_normal_(self.user_emb.weight)
            nn.init.xavier_normal_(self.item_emb.weight)
            with torch.no_grad():
                self.item_emb.weight[0].zero_()
        else:
            self._init_weights()

    def user_vectors(self, seqs: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        """``[B, H]`` embeddings of the users (``seqs``, ``[B, L]``, only gives the batch size)."""
        return self.user_emb(self._check_users(users, seqs.shape[0]).to(self.user_emb.weight.device))

    def rec_loss(self, seqs, targets, negatives, users=None) -> tuple[torch.Tensor, dict]:
        """BPR over the non-padding target positions of ``targets`` ``[B, L]`` against ``negatives``."""
        u = self.user_vectors(seqs, users).unsqueeze(1)  # [B, 1, H]
        pos = (u * self.item_emb(targets)).sum(-1)
        neg = (u * self.item_emb(negatives)).sum(-1)
        loss = bpr(pos, neg, (targets > 0).to(pos.dtype))
        return loss, {"bpr": loss.detach()}

    def contrastive_loss(self, views: torch.Tensor) -> None:
        """None: BPRMF has no contrastive objective."""
        return None

    def score_items(self, seqs: torch.Tensor, include_padding: bool = False, users=None) -> torch.Tensor:
        """``[B, n_items]`` dot products of each user with every item (column i: id i + 1); with
        ``include_padding`` ``[B, n_items + 1]``, column 0 scoring the padding item. ``users``
        (``[B]`` rows in the training data) is required; the history ``seqs`` is not read."""
        return self.user_vectors(seqs, users) @ self.item_emb.weight[0 if include_padding else 1:].T

    def item_vectors(self) -> dict[str, torch.Tensor]:
        """The item embeddings, row i = item id i + 1: ``{"vector": [n_items, H]}``."""
        return {"vector": self.item_emb.weight[1:]}

    def _item_similarity(self, rows):
        return self.item_emb(rows) @ self.item_emb.weight[1:].T
