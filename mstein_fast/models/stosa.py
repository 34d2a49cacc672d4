"""The STOSA backbone (STOSA, and MStein with its Wasserstein contrastive loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import mstein_fast
from mstein_fast.contracts import ModelConfig
from mstein_fast.models.base import _Recommender
from mstein_fast.models.buckets import length_buckets, unpermute
from mstein_fast.models.layers import (
    FeedForward,
    WassersteinSelfAttention,
    attention_mask,
    elu_plus_one,
    original_attention_mask,
    paired_w2,
)
from mstein_fast.models.losses import bpr_pvn_sums
from mstein_fast.nn import activations
from mstein_fast.nn.dropout import Dropout, position_dropout, position_dropout_usable


class STOSA(_Recommender):
    """STOSA backbone: items and positions as diagonal Gaussians, Wasserstein self-attention,
    BPR on W2 distances + pvn regulariser; with ``contrastive="wasserstein"`` it is MStein."""

    distributional = True
    init_mean_default = 0.01

    def __init__(self, n_items: int, cfg: ModelConfig, contrastive: str | None = None):
        super().__init__(n_items, cfg, contrastive)
        h = cfg.hidden_size
        self.item_mean = nn.Embedding(n_items + 1, h, padding_idx=0)
        self.item_cov = nn.Embedding(n_items + 1, h, padding_idx=0)
        self.position_mean = nn.Embedding(cfg.max_seq_length, h)
        self.position_cov = nn.Embedding(cfg.max_seq_length, h)
        self.embed_norm = nn.LayerNorm(h, eps=1e-12)  # shared by the two streams, as the original's
        self.dropout = Dropout(cfg.hidden_dropout_prob)
        self.attention = nn.ModuleList(
            WassersteinSelfAttention(h, cfg.num_attention_heads, cfg.attention_probs_dropout_prob,
                                     cfg.hidden_dropout_prob, cfg.backend)
            for _ in range(cfg.num_hidden_layers)
        )
        self.mean_ffn = nn.ModuleList(FeedForward(h, cfg.hidden_dropout_prob, "elu")
                                      for _ in range(cfg.num_hidden_layers))
        self.cov_ffn = nn.ModuleList(FeedForward(h, cfg.hidden_dropout_prob, "elu")
                                     for _ in range(cfg.num_hidden_layers))
        self._init_weights()
        if self.mean_stream_typo:
            # the layers whose output the original's mean stream drops (not computed: _layers) are
            # frozen, so that nothing waits for their gradients (DistributedDataParallel's reducer);
            # they stay in the state dict, which keeps the original's parameter set
            for module in [*self.mean_ffn, *(attention.mean_dense for attention in self.attention)]:
                module.requires_grad_(False)

    def encode(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, L]`` ids -> per-position Gaussians: mean ``[B, L, H]`` and variances ``[B, L, H]``.

        With ``mean_stream_typo`` (the default of stosa and mstein, implied by compat = "original")
        the mean stream is not propagated: every layer sees, and the encoder returns, the embedded
        input means, as in the original STOSA/MStein code; without it both streams go through every
        layer. With compat = "original" padding queries attend uniformly to their whole row
        (:func:`original_attention_mask`). This is the straightforward computation over all ``L``
        positions; :meth:`encode_fast` gives the same result with less work on padding."""
        return self._encode_window(seqs, 0)

    def _embed(self, ids, pos, items=None):
        """The embedded input Gaussians of ``ids`` ``[b, w]`` at positions ``pos`` ``[w]``; ``items``: the
        ids' rows of the two item tables (:meth:`_item_rows`), when already looked up."""
        item_mean, item_cov = items if items is not None else (self.item_mean(ids), self.item_cov(ids))
        mean = activations.elu(self.dropout(self.embed_norm(item_mean + self.position_mean(pos))))
        cov = elu_plus_one(self.dropout(self.embed_norm(item_cov + self.position_cov(pos))))
        return mean, cov

    def _item_rows(self, windows: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The rows of both item tables for every id of each ``[b, w]`` window, looked up for all the
        windows at once: one lookup per table, so the backward forms one dense table gradient per
        table instead of one per window (each the size of the table: 12k x 64 on Beauty)."""
        if len(windows) == 1:
            return [(self.item_mean(windows[0]), self.item_cov(windows[0]))]
        ids = torch.cat([w.reshape(-1) for w in windows])
        sizes = [w.numel() for w in windows]
        means, covs = self.item_mean(ids).split(sizes), self.item_cov(ids).split(sizes)
        return [(m.view(*w.shape, -1), c.view(*w.shape, -1)) for m, c, w in zip(means, covs, windows)]

    def _layers(self, mean, cov, attend, last_only: bool = False):
        """The encoder layers; ``attend(attention, mean, cov, last, mean_out)`` runs one attention
        layer (``last``: only its output at the last position is needed; without ``mean_out`` its
        mean output is not needed). With ``last_only`` the last layer computes the last position
        only (the outputs are ``[B, 1, H]``).

        With ``mean_stream_typo`` (the original code) every layer's new means are dropped: each layer
        sees, and the encoder returns, the embedded input means. What only feeds the dropped means
        (the mean values, the mean output layer and the mean feed-forward block) is then not
        computed: the same outputs and gradients, less work (dropout masks are drawn for fewer
        tensors, so the random streams differ from the full computation's)."""
        layers = len(self.attention)
        for i, (attention, mean_ffn, cov_ffn) in enumerate(zip(self.attention, self.mean_ffn, self.cov_ffn)):
            last = last_only and i == layers - 1
            if self.mean_stream_typo:
                _, cov = attend(attention, mean, cov, last, False)
                if last:
                    mean = mean[:, -1:]
            else:
                mean, cov = attend(attention, mean, cov, last, True)
                mean = mean_ffn(mean)
            cov = cov_ffn(cov, "elu_plus_one")
        return mean, cov

    def _encode_window(self, seqs: torch.Tensor, offset: int, last_only: bool = False, items=None):
        """:meth:`encode` of the window ``seqs`` ``[B, w]`` = positions ``offset .. offset + w - 1``
        of a longer left-padded batch whose earlier positions are all padding: causal attention
        never reaches back into them (padding keys are masked), so the window's outputs are
        those of the whole batch at these positions. With ``last_only``: the outputs at the last
        position only, ``[B, 1, H]`` (the last layer skips the other positions' queries,
        projections and feed-forward blocks). ``items``: the window's item-table rows, when
        already looked up (:meth:`_item_rows`)."""
        pos = torch.arange(offset, offset + seqs.shape[1], device=seqs.device)
        mean, cov = self._embed(seqs, pos, items)
        allowed = original_attention_mask(seqs, -(2.0**32) + 1) if self.compat else attention_mask(seqs)
        return self._layers(mean, cov, lambda attention, m, c, last, with_mean: attention(m, c, allowed, last, with_mean),
                            last_only)

    def _encode_lead(self, n: int, width: int):
        """:meth:`encode` at positions ``0 .. width - 1`` of ``n`` rows that are padding there (and
        before): each such position attends to itself only, so no attention scores are needed; the
        embedding LayerNorm is computed once per position (dropout stays per row)."""
        mean, cov = self._encode_lead_packed([(n, width)])
        return mean.reshape(n, width, -1), cov.reshape(n, width, -1)

    def _encode_lead_packed(self, blocks: list[tuple[int, int]]):
        """:meth:`_encode_lead` of several blocks ``(n, width)`` in one computation: returns the
        ``[1, sum(n * width), H]`` outputs, block after block, each block row-major."""
        device = self.item_mean.weight.device
        width = max(w for _, w in blocks)
        pos = torch.arange(width, device=device)
        mean = self.embed_norm(self.item_mean.weight[0].detach() + self.position_mean(pos))  # padding_idx: no grad
        cov = self.embed_norm(self.item_cov.weight[0].detach() + self.position_cov(pos))
        if position_dropout_usable(mean):  # gathered, dropped out and activated in one pass each way
            # each packed row's position (block after block, row-major): the table row it takes
            positions = torch.cat([torch.arange(w, device=device).repeat(n) for n, w in blocks])
            p, training = self.dropout.p, self.dropout.training
            mean = position_dropout(mean, positions, p, training, "elu").unsqueeze(0)
            cov = position_dropout(cov, positions, p, training, "elu_plus_one").unsqueeze(0)
        else:
            # repeated blocks, not a gather: the backward of a gather (an accumulating index_put) is
            # not deterministic on a multi-threaded CPU, that of repeat (a sum) is
            mean = torch.cat([mean[:w].repeat(n, 1) for n, w in blocks])
            cov = torch.cat([cov[:w].repeat(n, 1) for n, w in blocks])
            mean = activations.elu(self.dropout(mean.unsqueeze(0)))
            cov = elu_plus_one(self.dropout(cov.unsqueeze(0)))
        return self._layers(mean, cov, lambda attention, m, c, last, with_mean: attention.forward_self_only(m, c, with_mean))

    def _windows(self, seqs: torch.Tensor, needed: torch.Tensor):
        """Group the rows into buckets of similar active length: ``[(rows, w), ...]`` where the last
        ``w`` positions of each row of ``rows`` hold everything from its first non-padding item (or
        first ``needed`` position) on."""
        L = seqs.shape[1]
        active = needed | (seqs > 0)
        first = torch.where(active.any(1), active.to(torch.int8).argmax(1), torch.full_like(active[:, 0], L, dtype=torch.long))
        return length_buckets(L - first, self.bucket_cost)

    def encode_fast(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` with less work on the leading padding: the rows are bucketed by active
        length; each bucket runs the full encoder on its window only and the cheap self-only path
        (:meth:`_encode_lead`) on the padding before it. Same outputs as :meth:`encode` (up to
        float rounding; dropout masks are drawn in another order, with the same distribution).

        With ``padding_pool = K`` (opt-in, changes training slightly) the leading padding positions
        are encoded for K rows of padding only, each with its own dropout, and every row takes each
        of its padding positions from one of the K samples drawn at random: the same distribution
        per position as the exact computation (rows meet the same sample with probability 1/K), at
        the cost of K rows instead of all."""
        if not self.skip_padding or self.compat:  # the original's padding outputs depend on the whole row
            return self.encode(seqs)
        L = seqs.shape[1]
        means, covs, order = [], [], []
        buckets = self._windows(seqs, torch.zeros_like(seqs, dtype=torch.bool))
        lead_width = L - min(w for _, w in buckets)
        lead = {}
        if self.padding_pool and self.training and lead_width > 0:
            pool_mean, pool_cov = self._encode_lead(self.padding_pool, lead_width)  # [K, lead_width, H]
            for i, (rows, w) in enumerate(buckets):
                if w < L:
                    width = L - w
                    sample = torch.randint(self.padding_pool, (len(rows), width), device=seqs.device)
                    index = sample * lead_width + torch.arange(width, device=seqs.device)
                    # an embedding lookup: its backward accumulates deterministically
                    lead[i] = (F.embedding(index, pool_mean.reshape(-1, pool_mean.shape[-1])),
                               F.embedding(index, pool_cov.reshape(-1, pool_cov.shape[-1])))
        elif lead_width > 0:  # all buckets' leading padding in one computation
            blocks = [(len(rows), L - w) for rows, w in buckets if w < L]
            lead_mean, lead_cov = self._encode_lead_packed(blocks)
            sizes = [n * width for n, width in blocks]
            parts_mean, parts_cov = lead_mean[0].split(sizes), lead_cov[0].split(sizes)
            blocks_iter = iter(zip(blocks, parts_mean, parts_cov))
            for i, (rows, w) in enumerate(buckets):
                if w < L:
                    (n, width), m, c = next(blocks_iter)
                    lead[i] = (m.reshape(n, width, -1), c.reshape(n, width, -1))
        windows = {i: seqs[rows, L - w:] for i, (rows, w) in enumerate(buckets) if w > 0}
        items = dict(zip(windows, self._item_rows(list(windows.values())))) if windows else {}
        for i, (rows, w) in enumerate(buckets):
            parts = []
            if w < L:
                parts.append(lead[i])
            if w > 0:
                parts.append(self._encode_window(windows[i], L - w, items=items[i]))
            means.append(torch.cat([p[0] for p in parts], 1) if len(parts) > 1 else parts[0][0])
            covs.append(torch.cat([p[1] for p in parts], 1) if len(parts) > 1 else parts[0][1])
            order.append(rows)
        return unpermute(means, order), unpermute(covs, order)

    def item_gaussians(self, ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and variances of the given item ids (default: all items 1..n_items)."""
        if ids is None:
            return self.item_mean.weight[1:], elu_plus_one(self.item_cov.weight[1:])
        return self.item_mean(ids), elu_plus_one(self.item_cov(ids))

    def rec_loss(self, seqs, targets, negatives, users=None) -> tuple[torch.Tensor, dict]:
        """BPR on W2, ``-log sigmoid(W(seq, neg) - W(seq, pos))``, plus ``pvn_weight *
        max(0, W(seq, pos) - W(pos, neg))``, both averaged over non-padding target positions.

        With ``skip_padding`` only the window of each row from its first item (or target) on is
        encoded (rows bucketed by length): the loss ignores the other positions, and causal
        attention never reaches back into them, so the loss is the same."""
        if not self.skip_padding:
            return self._rec_loss_full(seqs, targets, negatives)
        L, h = seqs.shape[1], self.hidden
        means, covs, ts, ns = [], [], [], []
        buckets = [(rows, w) for rows, w in self._windows(seqs, targets > 0) if w > 0]
        windows = [seqs[rows, L - w:] for rows, w in buckets]
        for (rows, w), window, items in zip(buckets, windows, self._item_rows(windows) if windows else []):
            mean, cov = self._encode_window(window, L - w, items=items)
            means.append(mean.reshape(-1, h))
            covs.append(cov.reshape(-1, h))
            ts.append(targets[rows, L - w:].reshape(-1))
            ns.append(negatives[rows, L - w:].reshape(-1))
        if not means:  # nothing to predict (all padding): the zero loss of the full path
            return self._rec_loss_full(seqs, targets, negatives)
        # the buckets' positions in one row list: one set of loss ops and item lookups per batch
        bpr_sum, pvn_sum, weight_sum = self._rec_terms(*(torch.cat(p) if len(p) > 1 else p[0]
                                                         for p in (means, covs, ts, ns)))
        weight_sum = weight_sum.clamp_min(1.0)
        bpr, pvn = bpr_sum / weight_sum, pvn_sum / weight_sum
        return bpr + self.pvn_weight * pvn, {"bpr": bpr.detach(), "pvn": pvn.detach()}

    def _rec_terms(self, mean, cov, targets, negatives):
        """Sums of the BPR and pvn terms over the non-padding targets, and their number."""
        item_mean, item_cov = self.item_gaussians(torch.cat([targets, negatives]))  # one lookup per table
        (pos_mean, neg_mean), (pos_cov, neg_cov) = item_mean.chunk(2), item_cov.chunk(2)
        d_pos = paired_w2(mean, cov, pos_mean, pos_cov)
        d_neg = paired_w2(mean, cov, neg_mean, neg_cov)
        d_pos_neg = paired_w2(pos_mean, pos_cov, neg_mean, neg_cov)
        return bpr_pvn_sums(d_pos, d_neg, d_pos_neg, (targets > 0).to(mean.dtype), original=self.compat)

    def _rec_loss_full(self, seqs, targets, negatives) -> tuple[torch.Tensor, dict]:
        """:meth:`rec_loss` computed over all positions (the straightforward computation)."""
        mean, cov = self.encode(seqs)
        bpr_sum, pvn_sum, weight_sum = self._rec_terms(mean, cov, targets, negatives)
        weight_sum = weight_sum.clamp_min(1.0)
        bpr, pvn = bpr_sum / weight_sum, pvn_sum / weight_sum
        return bpr + self.pvn_weight * pvn, {"bpr": bpr.detach(), "pvn": pvn.detach()}

    def contrastive_loss(self, views: torch.Tensor) -> torch.Tensor | None:
        """Wasserstein InfoNCE between the two views stacked in ``views`` ``[2B, L]`` (MStein)."""
        if self.contrastive is None:
            return None
        return self._wasserstein_infonce(*self.encode_fast(views))

    def last_gaussians(self, seqs):
        """The Gaussians at the last position ``[B, H]`` (the last layer computes that position only;
        with ``skip_padding`` each bucket of rows encodes only its window from the first item on)."""
        L = seqs.shape[1]
        if not self.skip_padding:
            mean, cov = self._encode_window(seqs, 0, last_only=True)
            return mean[:, -1], cov[:, -1]
        means, covs, order = [], [], []
        for rows, w in self._windows(seqs, torch.zeros_like(seqs, dtype=torch.bool)):
            # an all-padding row: its last position is padding, which under the original's masking
            # attends to its whole row (so the whole row is encoded); else that position alone
            w = L if w == 0 and self.compat else max(w, 1)
            mean, cov = self._encode_window(seqs[rows, L - w:], L - w, last_only=True)
            means.append(mean[:, -1])
            covs.append(cov[:, -1])
            order.append(rows)
        return unpermute(means, order), unpermute(covs, order)

    def score_items(self, seqs: torch.Tensor, include_padding: bool = False, users=None) -> torch.Tensor:
        """``[B, n_items]`` scores, ``-W`` between the last position and every item (column i: id i+1);
        with ``include_padding`` ``[B, n_items + 1]`` whose column 0 scores the padding item 0 (the
        original code ranks it as a candidate: compat = "original")."""
        mean, cov = self.last_gaussians(seqs)
        if include_padding:
            item_mean, item_cov = self.item_mean.weight, elu_plus_one(self.item_cov.weight)
        else:
            item_mean, item_cov = self.item_gaussians()
        return -mstein_fast.pairwise_w2(mean, cov, item_mean, item_cov, backend=self.backend)

    def _item_similarity(self, rows):
        m, c = self.item_gaussians(rows)
        item_mean, item_cov = self.item_gaussians()
        return -mstein_fast.pairwise_w2(m, c, item_mean, item_cov, backend=self.backend)
