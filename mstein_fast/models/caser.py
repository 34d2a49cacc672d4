"""Caser (Tang and Wang, WSDM 2018, "Personalized Top-N Sequential Recommendation via Convolutional
Sequence Embedding"): convolutions over the embedding matrix of the user's last L items.

The convolutions are written as matrix products (same maps as ``nn.Conv2d``, deterministic on every
device): a horizontal filter of height ``h`` spans the whole embedding width, so it is a linear map
of each window of ``h`` consecutive rows; a vertical filter spans the L rows of one embedding column,
so it is a linear map of each column.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mstein_fast.contracts import ModelConfig
from mstein_fast.models.base import _Recommender
from mstein_fast.models.losses import bce


def last_windows(seqs: torch.Tensor, length: int) -> torch.Tensor:
    """``[B, T, length]``: for each position t of the left-padded ``[B, T]`` ids, the ``length`` items
    ending at t (0, the padding, where the row has fewer)."""
    padded = F.pad(seqs, (length - 1, 0))
    return padded.unfold(1, length, 1)


class Caser(_Recommender):
    """Caser with the layout of the paper and its authors' code (github graytowne/caser_pytorch):

    * the last L = ``caser_window`` items of the history, embedded: ``E`` ``[L, d]`` (d = ``hidden_size``);
    * horizontal convolutions: for each height ``h`` in 1..L, ``caser_nh`` filters ``[h, d]`` slid over
      the rows of ``E``, ReLU, max-pooled over the positions: ``L * caser_nh`` values;
    * vertical convolutions: ``caser_nv`` filters ``[L, 1]``, weighted sums of the rows of ``E``:
      ``caser_nv * d`` values (no activation, as the paper);
    * both concatenated, dropout (``hidden_dropout_prob``), a dense layer to d with ReLU: ``z``;
    * ``x = [z ; user embedding]`` (2d), scored against every item's output embedding (2d) plus
      its bias: ``score(u, S, i) = <x, W_i> + b_i``.

    Training: each non-padding target position t of the training row predicts its target from the
    L items ending at t (the paper's sliding windows with T = 1 target each), with the binary
    cross-entropy of the paper, ``-log sigmoid(s(pos)) - log sigmoid(-s(neg))`` against the one
    negative the trainer samples per position, averaged over the positions. Windows reach no further
    back than the training row (its last ``max_seq_length`` items).

    Initialisation (the authors' code): input and user embeddings normal(0, 1/d), output embeddings
    normal(0, 1/(2d)), biases 0, convolution and dense layers PyTorch's default for a convolution of
    that size; with ``init_mean`` set, every weight normal(init_mean, initializer_range) and zero
    biases like the other models."""

    needs_users = True

    def __init__(self, n_items: int, cfg: ModelConfig, contrastive: str | None = None, *, n_users: int):
        super().__init__(n_items, cfg, contrastive)
        if contrastive is not None:
            raise ValueError(f"Caser has no contrastive objective, got {contrastive!r}")
        if n_users < 1:
            raise ValueError(f"Caser needs at least one user, got n_users={n_users}")
        if not (cfg.caser_nh or cfg.caser_nv):
            raise ValueError("Caser needs horizontal or vertical filters: caser_nh and caser_nv are both 0")
        d, L = cfg.hidden_size, cfg.caser_window
        self.n_users = n_users
        self.window = L
        self.n_h, self.n_v = cfg.caser_nh, cfg.caser_nv
        self.user_emb = nn.Embedding(n_users, d)
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        # horizontal filters of height h: a linear map of h consecutive embedding rows (h * d inputs)
        self.horizontal = nn.ModuleList(nn.Linear(h * d, self.n_h) for h in range(1, L + 1)) if self.n_h else None
        # vertical filters: a linear map of the L values of each embedding column
        self.vertical = nn.Linear(L, self.n_v) if self.n_v else None
        self.fc = nn.Linear(self.n_v * d + self.n_h * L, d)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.out_emb = nn.Embedding(n_items + 1, 2 * d, padding_idx=0)
        self.out_bias = nn.Embedding(n_items + 1, 1, padding_idx=0)
        if cfg.init_mean is None:
            nn.init.normal_(self.user_emb.weight, 0.0, 1.0 / d)
            nn.init.normal_(self.item_emb.weight, 0.0, 1.0 / d)
            nn.init.normal_(self.out_emb.weight, 0.0, 1.0 / (2 * d))
            nn.init.zeros_(self.out_bias.weight)
            with torch.no_grad():
                self.item_emb.weight[0].zero_()
                self.out_emb.weight[0].zero_()
        else:
            self._init_weights()

    def encode(self, windows: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` item windows and ``[N]`` user rows -> ``x = [z ; user]`` ``[N, 2d]``."""
        e = self.item_emb(windows)  # [N, L, d]
        parts = []
        if self.vertical is not None:
            parts.append(self.vertical(e.transpose(1, 2)).transpose(1, 2).flatten(1))  # [N, n_v * d]
        if self.horizontal is not None:
            n, L, d = e.shape
            for h, layer in enumerate(self.horizontal, start=1):
                rows = e.unfold(1, h, 1).transpose(2, 3).reshape(n, L - h + 1, h * d)  # [N, L-h+1, h*d]
                parts.append(F.relu(layer(rows)).amax(1))  # max over the positions: [N, n_h]
        z = F.relu(self.fc(self.dropout(torch.cat(parts, 1))))
        return torch.cat([z, self.user_emb(users)], 1)

    def _windows(self, seqs: torch.Tensor) -> torch.Tensor:
        """The last ``caser_window`` items of each left-padded row ``[B, T]`` (padded if T is shorter)."""
        if seqs.shape[1] >= self.window:
            return seqs[:, seqs.shape[1] - self.window:]
        return F.pad(seqs, (self.window - seqs.shape[1], 0))

    def user_vectors(self, seqs: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        """``[B, 2d]``: each history's ``x`` (its last L items and its user)."""
        users = self._check_users(users, seqs.shape[0]).to(seqs.device)
        return self.encode(self._windows(seqs), users)

    def rec_loss(self, seqs, targets, negatives, users=None) -> tuple[torch.Tensor, dict]:
        """BCE over the non-padding target positions: position t is scored from the L items of
        ``seqs`` ending at t and the row's user."""
        users = self._check_users(users, seqs.shape[0]).to(seqs.device)
        rows, cols = (targets > 0).nonzero(as_tuple=True)
        windows = last_windows(seqs, self.window)[rows, cols]  # [N, L]
        x = self.encode(windows, users[rows])
        pos, neg = targets[rows, cols], negatives[rows, cols]
        pos_logit = (x * self.out_emb(pos)).sum(-1) + self.out_bias(pos)[:, 0]
        neg_logit = (x * self.out_emb(neg)).sum(-1) + self.out_bias(neg)[:, 0]
        loss = bce(pos_logit, neg_logit, torch.ones_like(pos_logit), original=self.compat)
        return loss, {"bce": loss.detach()}

    def contrastive_loss(self, views: torch.Tensor) -> None:
        """None: Caser has no contrastive objective."""
        return None

    def score_items(self, seqs: torch.Tensor, include_padding: bool = False, users=None) -> torch.Tensor:
        """``[B, n_items]`` scores ``<x, W_i> + b_i`` of every item (column i: id i + 1) from the last L
        items of each history and its user (``users``, ``[B]`` rows in the training data, required);
        with ``include_padding`` ``[B, n_items + 1]``, column 0 scoring the padding item."""
        first = 0 if include_padding else 1
        return self.user_vectors(seqs, users) @ self.out_emb.weight[first:].T + self.out_bias.weight[first:, 0]

    def item_vectors(self) -> dict[str, torch.Tensor]:
        """The output embeddings and biases that score the items, row i = item id i + 1:
        ``{"vector": [n_items, 2d], "bias": [n_items]}``."""
        return {"vector": self.out_emb.weight[1:], "bias": self.out_bias.weight[1:, 0]}

    def _item_similarity(self, rows):
        return self.item_emb(rows) @ self.item_emb.weight[1:].T

