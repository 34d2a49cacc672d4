"""Sequential recommenders: the STOSA backbone (MStein, STOSA) and the SASRec backbone (SASRec,
CoSeRec, CoSeRec(WDM)), SPEC section 3. Device-agnostic: no ``.cuda()`` anywhere.

Every model maps a left-padded ``[B, L]`` batch of item ids (0 = padding) to per-position outputs
and offers the same four methods used by the trainer: :meth:`rec_loss` (next-item ranking loss),
:meth:`contrastive_loss` (between two augmented views, or ``None``), :meth:`score_items`
(higher = better, for every item 1..n_items) and :meth:`nearest_items` (item similarity for the
insert / substitute augmentations).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import mstein_fast
from mstein_fast import distributed

# ELU(x) + 1 underflows to 0 in float32 for x < -88: variances are kept at the floor of every op
from mstein_fast.numerics import COV_FLOOR, std_from_cov
from mstein_fast.ops.dropout import Dropout
from mstein_fast.ops.wasserstein_infonce_sequences import wasserstein_infonce_sequences

MASKED_SCORE = -1e9  # attention score of a masked key (finite: no NaN for a fully masked row)

# model name -> (backbone, contrastive objective)
MODELS = {
    "mstein": ("stosa", "wasserstein"),
    "stosa": ("stosa", None),
    "sasrec": ("sasrec", None),
    "coserec": ("sasrec", "dot"),
    "coserec-wdm": ("sasrec", "wasserstein-split"),
}


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """``ELU(x) + 1``: the activation that makes covariances positive (floored at 1e-24)."""
    return (F.elu(x) + 1.0).clamp_min(COV_FLOOR)


def paired_w2(mean1, cov1, mean2, cov2) -> torch.Tensor:
    """Squared W2 between matching rows ``[..., D]`` -> ``[...]`` (the diagonal of pairwise_w2)."""
    std1, std2 = std_from_cov(cov1), std_from_cov(cov2)
    return ((mean1 - mean2) ** 2).sum(-1) + ((std1 - std2) ** 2).sum(-1)


def original_attention_mask(seqs: torch.Tensor, masked: float) -> torch.Tensor:
    """The original code's additive ``[B, 1, L, L]`` float mask: 0 where key j <= query i is an item,
    ``masked`` elsewhere (-(2**32) + 1 in STOSA/MStein, -10000 in SASRec/CoSeRec). A query with no
    allowed key (a padding position) then attends uniformly to every position of its row, future
    items included; in float32 the distances vanish next to -(2**32)."""
    L = seqs.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=seqs.device).tril()
    allowed = causal & (seqs > 0)[:, None, None, :]
    return (1.0 - allowed.float()) * masked


def _apply_mask(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Scores with the keys outside ``allowed`` masked: a bool mask (:func:`attention_mask`) or the
    original's additive float mask (:func:`original_attention_mask`)."""
    if allowed.dtype == torch.bool:
        return scores.masked_fill(~allowed, MASKED_SCORE)
    return scores + allowed


def attention_mask(seqs: torch.Tensor) -> torch.Tensor:
    """``[B, 1, L, L]`` bool, True where query i may attend key j: j <= i and item j is not padding.

    A query with no such key (a padding position, or a masked item with only masked items before
    it) attends to itself only, instead of to every position (no NaN, no look-ahead).
    """
    L = seqs.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=seqs.device).tril()
    allowed = causal & (seqs > 0)[:, None, None, :]
    empty = ~allowed.any(-1, keepdim=True)
    eye = torch.eye(L, dtype=torch.bool, device=seqs.device)
    return allowed | (empty & eye)


def dot_infonce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """CoSeRec's InfoNCE on dot products between two views ``[N, D]`` (the official ``NCELoss``)."""
    n = a.shape[0]
    sim11 = a @ a.T / temperature
    sim22 = b @ b.T / temperature
    sim12 = a @ b.T / temperature
    eye = torch.eye(n, dtype=torch.bool, device=a.device)
    sim11 = sim11.masked_fill(eye, float("-inf"))
    sim22 = sim22.masked_fill(eye, float("-inf"))
    logits = torch.cat([torch.cat([sim12, sim11], 1), torch.cat([sim22, sim12.T], 1)], 0)
    return F.cross_entropy(logits, torch.arange(2 * n, device=a.device))


BUCKET_COST = 2048.0  # overhead of one more encoder call, in units of one encoded position of one row


class _Unpermute(torch.autograd.Function):
    """Scatter the row blocks ``parts`` to the rows ``orders`` of one new tensor; the backward
    gathers the gradient's rows back (autograd's default for ``cat(parts)[inverse]`` is a copy,
    a gather and a scatter-add into zeros)."""

    @staticmethod
    def forward(ctx, orders, *parts):
        rows = sum(len(o) for o in orders)
        out = parts[0].new_empty((rows, *parts[0].shape[1:]))
        for o, part in zip(orders, parts):
            out.index_copy_(0, o, part)
        ctx.orders = orders
        return out

    @staticmethod
    def backward(ctx, grad):
        return (None, *(grad.index_select(0, o) for o in ctx.orders))


def unpermute(parts: list[torch.Tensor], orders: list[torch.Tensor]) -> torch.Tensor:
    """Rows of ``parts`` put back in their original order: row ``k`` of ``parts[i]`` is original
    row ``orders[i][k]`` (the orders together hold every original row exactly once)."""
    return _Unpermute.apply(tuple(orders), *parts)


def length_buckets(lengths: torch.Tensor, call_cost: float = BUCKET_COST) -> list[tuple[torch.Tensor, int]]:
    """Split rows into buckets ``[(rows, width), ...]`` (every row once; ``width`` = the largest
    length in the bucket) minimising ``sum(len(rows) * width * (1 + width / 64)) + call_cost *
    buckets`` (token work plus quadratic attention work plus per-call overhead), by dynamic
    programming over the distinct lengths of the rows sorted by length."""
    sorted_len, order = torch.sort(lengths, stable=True)
    values, counts = torch.unique_consecutive(sorted_len, return_counts=True)
    values, counts = values.tolist(), counts.tolist()
    m = len(values)
    prefix = [0]
    for c in counts:
        prefix.append(prefix[-1] + c)
    best = [0.0] + [float("inf")] * m
    cut = [0] * (m + 1)
    for j in range(1, m + 1):  # bucket = distinct lengths i .. j-1, width values[j - 1]
        w = values[j - 1]
        per_row = w * (1.0 + w / 64.0)
        for i in range(j):
            c = best[i] + (prefix[j] - prefix[i]) * per_row + call_cost
            if c < best[j]:
                best[j], cut[j] = c, i
    buckets = []
    j = m
    while j > 0:
        i = cut[j]
        buckets.append((order[prefix[i]:prefix[j]], int(values[j - 1])))
        j = i
    return buckets[::-1]


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


class FeedForward(nn.Module):
    """Position-wise ``dense(4h) -> activation -> dense(h) -> dropout -> LayerNorm(x + input)``;
    the activation is GELU in SASRec's block and ELU in the distributional models' (the original
    code's ``DistIntermediate`` uses ELU whatever ``hidden_act`` says)."""

    def __init__(self, hidden: int, dropout: float, activation: str = "gelu"):
        super().__init__()
        if activation not in ("gelu", "elu"):
            raise ValueError(f"activation must be gelu or elu, got {activation!r}")
        self.dense_1 = nn.Linear(hidden, 4 * hidden)
        self.dense_2 = nn.Linear(4 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = Dropout(dropout)
        self.activation = F.gelu if activation == "gelu" else F.elu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.dropout(self.dense_2(self.activation(self.dense_1(x)))) + x)


class WassersteinSelfAttention(nn.Module):
    """STOSA's attention over Gaussians: score = -W(q_i, k_j) / sqrt(head_dim), masked softmax P;
    mean out = P V_mean, cov out = P^2 V_cov; then dense + dropout + LayerNorm(residual) per stream,
    one LayerNorm shared by the two streams (as the original code)."""

    def __init__(self, hidden: int, heads: int, attn_dropout: float, dropout: float, backend: str):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
        self.heads, self.head_dim, self.backend = heads, hidden // heads, backend
        self.mean_qkv = nn.Linear(hidden, 3 * hidden)
        self.cov_qkv = nn.Linear(hidden, 3 * hidden)
        self.mean_dense = nn.Linear(hidden, hidden)
        self.cov_dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.attn_dropout = Dropout(attn_dropout)
        self.dropout = Dropout(dropout)

    def _split(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, L, _ = x.shape
        return [t.reshape(b, L, self.heads, self.head_dim).transpose(1, 2) for t in x.chunk(3, dim=-1)]

    def forward(self, mean, cov, allowed):
        b, L, h = mean.shape
        q_mean, k_mean, v_mean = self._split(self.mean_qkv(mean))
        q_cov, k_cov, v_cov = self._split(elu_plus_one(self.cov_qkv(cov)))
        # [B, heads, L, L]; no value check (a host sync per layer call): a NaN here reaches the loss
        w = mstein_fast.pairwise_w2(q_mean, q_cov, k_mean, k_cov, backend=self.backend, check_values=False)
        scores = _apply_mask(-w / math.sqrt(self.head_dim), allowed)
        probs = self.attn_dropout(torch.softmax(scores, dim=-1))
        mean_ctx = (probs @ v_mean).transpose(1, 2).reshape(b, L, h)
        cov_ctx = ((probs * probs) @ v_cov).transpose(1, 2).reshape(b, L, h)
        return self._output(mean_ctx, cov_ctx, mean, cov)

    def _output(self, mean_ctx, cov_ctx, mean, cov):
        mean_out = self.norm(self.dropout(self.mean_dense(mean_ctx)) + mean)
        cov_out = self.norm(self.dropout(self.cov_dense(cov_ctx)) + cov)
        return mean_out, cov_out

    def forward_self_only(self, mean, cov):
        """:meth:`forward` for positions that attend to themselves only (the leading padding of a
        left-padded row): the softmax row is one-hot, so the contexts are the values themselves
        (no queries, keys or distances needed; the softmax passes no gradient to the scores)."""
        b, L, h = mean.shape
        hd = self.head_dim
        v_mean = F.linear(mean, self.mean_qkv.weight[2 * h:], self.mean_qkv.bias[2 * h:])
        v_cov = elu_plus_one(F.linear(cov, self.cov_qkv.weight[2 * h:], self.cov_qkv.bias[2 * h:]))
        if self.training and self.attn_dropout.p > 0:  # the one-hot probability is dropped (or scaled) per head
            keep = self.attn_dropout(torch.ones(b, L, self.heads, 1, dtype=mean.dtype, device=mean.device))
            v_mean = (v_mean.reshape(b, L, self.heads, hd) * keep).reshape(b, L, h)
            v_cov = (v_cov.reshape(b, L, self.heads, hd) * (keep * keep)).reshape(b, L, h)
        return self._output(v_mean, v_cov, mean, cov)


class DotSelfAttention(nn.Module):
    """SASRec's scaled dot-product multi-head attention + dense + dropout + LayerNorm(residual)."""

    def __init__(self, hidden: int, heads: int, attn_dropout: float, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
        self.heads, self.head_dim = heads, hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.attn_dropout = Dropout(attn_dropout)
        self.dropout = Dropout(dropout)

    def forward(self, x, allowed):
        b, L, h = x.shape
        q, k, v = (t.reshape(b, L, self.heads, self.head_dim).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        scores = _apply_mask(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), allowed)
        probs = self.attn_dropout(torch.softmax(scores, dim=-1))
        ctx = (probs @ v).transpose(1, 2).reshape(b, L, h)
        return self.norm(self.dropout(self.dense(ctx)) + x)


class _Recommender(nn.Module):
    """Shared parts: configuration, initialisation, item similarity, the contrastive dispatch."""

    distributional = False

    def __init__(self, n_items: int, cfg, contrastive: str | None):
        super().__init__()
        self.n_items = n_items
        self.max_len = cfg.max_seq_length
        self.hidden = cfg.hidden_size
        self.contrastive = contrastive
        self.backend = cfg.backend
        self.temperature = cfg.temperature
        self.similarity = cfg.similarity
        self.dot_temperature = cfg.dot_temperature
        # compat = "original": every behaviour of the original code, defects included (README table)
        self.compat = getattr(cfg, "compat", "none") == "original"
        self.double_cov_activation = cfg.cl_double_cov_activation or self.compat
        # the original's padding: random frozen padding rows, padding queries attending to their whole row
        self.original_padding = getattr(cfg, "original_padding", False) or self.compat
        self.pvn_weight = cfg.pvn_weight
        self.skip_padding = getattr(cfg, "skip_padding", True)
        self.shared_padding = getattr(cfg, "shared_padding", False)
        self.padding_pool = getattr(cfg, "padding_pool", 0)
        self.bucket_cost = BUCKET_COST
        init_mean = getattr(cfg, "init_mean", None)
        self.init_mean = (0.01 if self.distributional else 0.0) if init_mean is None else init_mean
        self.init_std = cfg.initializer_range
        # a torch.distributed process group: the contrastive losses then contrast each local
        # row with the global batch (set by the trainer under torchrun; None: one process)
        self.cl_group = None

    def _init_weights(self) -> None:
        """normal(init_mean, initializer_range) for linear and embedding weights (the original
        init: mean 0.01 for the distributional models, 0.0 for SASRec's, std 0.02), zero biases, unit
        LayerNorm; the padding rows are zeroed (with ``original_padding`` or compat = "original" they
        keep their random values, as the original's; ``padding_idx`` keeps them untrained either way)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=self.init_mean, std=self.init_std)
                if isinstance(module, nn.Embedding) and module.padding_idx is not None and not self.original_padding:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _wasserstein_infonce(self, mean: torch.Tensor, cov: torch.Tensor, anchor: int | None = None) -> torch.Tensor:
        """InfoNCE between the two halves (views) of ``[2B, L, H]`` flattened to ``[B, L*H]``.

        ``anchor``: a row whose leading positions are shared by the other rows (``shared_padding``):
        the loss then skips the work on shared positions (same result, fewer flops)."""
        if self.double_cov_activation:  # the official loss activates its (already activated) cov again
            cov = elu_plus_one(cov)
        if anchor is not None and self.cl_group is None and self.backend != "torch":
            return wasserstein_infonce_sequences(mean, cov, temperature=self.temperature, similarity=self.similarity,
                                                 backend=self.backend, anchor=anchor)
        n2 = mean.shape[0]
        mean, cov = mean.reshape(n2, -1), cov.reshape(n2, -1)
        b = n2 // 2
        if self.cl_group is not None:
            return distributed.wasserstein_infonce(
                mean[:b], cov[:b], mean[b:], cov[b:], temperature=self.temperature, similarity=self.similarity,
                reduction="mean", backend=self.backend, group=self.cl_group)
        return mstein_fast.wasserstein_infonce(
            mean[:b], cov[:b], mean[b:], cov[b:],
            temperature=self.temperature, similarity=self.similarity, reduction="mean", backend=self.backend,
        )

    @torch.no_grad()
    def nearest_items(self, k: int, batch_size: int = 1024) -> torch.Tensor:
        """``[n_items + 1, k]`` ids of each item's k most similar other items (row 0: padding, unused).

        By W2 between the item Gaussians for the distributional models, by dot product otherwise;
        computed ``batch_size`` items at a time (never the full n x n matrix)."""
        ids = torch.arange(1, self.n_items + 1, device=self._device())
        out = torch.zeros(self.n_items + 1, k, dtype=torch.int64)
        for start in range(0, self.n_items, batch_size):
            rows = ids[start:start + batch_size]
            sim = self._item_similarity(rows)  # [b, n_items], higher = more similar
            sim[torch.arange(len(rows)), rows - 1] = float("-inf")
            out[rows.cpu()] = (sim.topk(k, dim=-1).indices + 1).cpu()
        return out

    def _device(self) -> torch.device:
        return next(self.parameters()).device


class STOSA(_Recommender):
    """STOSA backbone: items and positions as diagonal Gaussians, Wasserstein self-attention,
    BPR on W2 distances + pvn regulariser; with ``contrastive="wasserstein"`` it is MStein."""

    distributional = True

    def __init__(self, n_items: int, cfg, contrastive: str | None = None):
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

    def encode(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, L]`` ids -> per-position Gaussians: mean ``[B, L, H]`` and variances ``[B, L, H]``.

        Both streams go through every layer; with compat = "original" the mean stream is not
        propagated (every layer sees, and the encoder returns, the embedded input means), as in
        the original STOSA/MStein code, and padding queries attend uniformly to their whole row
        (:func:`original_attention_mask`). This is the straightforward computation over all ``L``
        positions; :meth:`encode_fast` gives the same result with less work on padding."""
        return self._encode_window(seqs, 0)

    def _embed(self, ids, pos):
        mean = F.elu(self.dropout(self.embed_norm(self.item_mean(ids) + self.position_mean(pos))))
        cov = elu_plus_one(self.dropout(self.embed_norm(self.item_cov(ids) + self.position_cov(pos))))
        return mean, cov

    def _layers(self, mean, cov, attend):
        for attention, mean_ffn, cov_ffn in zip(self.attention, self.mean_ffn, self.cov_ffn):
            new_mean, cov = attend(attention, mean, cov)
            new_mean = mean_ffn(new_mean)
            cov = elu_plus_one(cov_ffn(cov))
            if not self.compat:  # the original's typo drops the new means
                mean = new_mean
        return mean, cov

    def _encode_window(self, seqs: torch.Tensor, offset: int):
        """:meth:`encode` of the window ``seqs`` ``[B, w]`` = positions ``offset .. offset + w - 1``
        of a longer left-padded batch whose earlier positions are all padding: causal attention
        never reaches back into them (padding keys are masked), so the window's outputs are
        those of the whole batch at these positions."""
        pos = torch.arange(offset, offset + seqs.shape[1], device=seqs.device)
        mean, cov = self._embed(seqs, pos)
        allowed = original_attention_mask(seqs, -(2.0**32) + 1) if self.original_padding else attention_mask(seqs)
        return self._layers(mean, cov, lambda attention, m, c: attention(m, c, allowed))

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
        # repeated blocks, not a gather: the backward of a gather (an accumulating index_put) is not
        # deterministic on a multi-threaded CPU, that of repeat (a sum) is
        mean = torch.cat([mean[:w].repeat(n, 1) for n, w in blocks])
        cov = torch.cat([cov[:w].repeat(n, 1) for n, w in blocks])
        mean = F.elu(self.dropout(mean.unsqueeze(0)))
        cov = elu_plus_one(self.dropout(cov.unsqueeze(0)))
        return self._layers(mean, cov, lambda attention, m, c: attention.forward_self_only(m, c))

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

        With ``shared_padding`` (opt-in, changes training) the leading padding positions are
        computed once per position without dropout and shared by all rows. With ``padding_pool =
        K`` (opt-in, changes training slightly) they are encoded for K rows of padding only, each
        with its own dropout, and every row takes each of its padding positions from one of the K
        samples drawn at random: the same distribution per position as the exact computation
        (rows meet the same sample with probability 1/K), at the cost of K rows instead of all."""
        if not self.skip_padding or self.original_padding:  # the original's padding outputs depend on the whole row
            return self.encode(seqs)
        L = seqs.shape[1]
        means, covs, order = [], [], []
        buckets = self._windows(seqs, torch.zeros_like(seqs, dtype=torch.bool))
        shared = None
        lead_width = L - min(w for _, w in buckets)
        if self.shared_padding and self.training and lead_width > 0:
            was_training = self.training
            self.train(False)  # no dropout: one computation per position, shared by all rows
            try:
                shared = self._encode_lead(1, lead_width)
            finally:
                self.train(was_training)
        lead = {}
        if shared is None and self.padding_pool and self.training and lead_width > 0:
            pool_mean, pool_cov = self._encode_lead(self.padding_pool, lead_width)  # [K, lead_width, H]
            for i, (rows, w) in enumerate(buckets):
                if w < L:
                    width = L - w
                    sample = torch.randint(self.padding_pool, (len(rows), width), device=seqs.device)
                    index = sample * lead_width + torch.arange(width, device=seqs.device)
                    # an embedding lookup: its backward accumulates deterministically
                    lead[i] = (F.embedding(index, pool_mean.reshape(-1, pool_mean.shape[-1])),
                               F.embedding(index, pool_cov.reshape(-1, pool_cov.shape[-1])))
        elif shared is None and lead_width > 0:  # all buckets' leading padding in one computation
            blocks = [(len(rows), L - w) for rows, w in buckets if w < L]
            lead_mean, lead_cov = self._encode_lead_packed(blocks)
            sizes = [n * width for n, width in blocks]
            parts_mean, parts_cov = lead_mean[0].split(sizes), lead_cov[0].split(sizes)
            blocks_iter = iter(zip(blocks, parts_mean, parts_cov))
            for i, (rows, w) in enumerate(buckets):
                if w < L:
                    (n, width), m, c = next(blocks_iter)
                    lead[i] = (m.reshape(n, width, -1), c.reshape(n, width, -1))
        for i, (rows, w) in enumerate(buckets):
            parts = []
            if w < L and shared is not None:
                parts.append(tuple(t[:, :L - w].expand(len(rows), -1, -1) for t in shared))
            elif w < L:
                parts.append(lead[i])
            if w > 0:
                parts.append(self._encode_window(seqs[rows, L - w:], L - w))
            means.append(torch.cat([p[0] for p in parts], 1) if len(parts) > 1 else parts[0][0])
            covs.append(torch.cat([p[1] for p in parts], 1) if len(parts) > 1 else parts[0][1])
            order.append(rows)
        return unpermute(means, order), unpermute(covs, order)

    def item_gaussians(self, ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and variances of the given item ids (default: all items 1..n_items)."""
        if ids is None:
            return self.item_mean.weight[1:], elu_plus_one(self.item_cov.weight[1:])
        return self.item_mean(ids), elu_plus_one(self.item_cov(ids))

    def rec_loss(self, seqs, targets, negatives) -> tuple[torch.Tensor, dict]:
        """BPR on W2, ``-log sigmoid(W(seq, neg) - W(seq, pos))``, plus ``pvn_weight *
        max(0, W(seq, pos) - W(pos, neg))``, both averaged over non-padding target positions.

        With ``skip_padding`` only the window of each row from its first item (or target) on is
        encoded (rows bucketed by length): the loss ignores the other positions, and causal
        attention never reaches back into them, so the loss is the same."""
        if not self.skip_padding:
            return self._rec_loss_full(seqs, targets, negatives)
        L = seqs.shape[1]
        bpr_sum = pvn_sum = weight_sum = 0.0
        for rows, w in self._windows(seqs, targets > 0):
            if w == 0:
                continue
            mean, cov = self._encode_window(seqs[rows, L - w:], L - w)
            t, n = targets[rows, L - w:], negatives[rows, L - w:]
            bpr, pvn, weight = self._rec_terms(mean, cov, t, n)
            bpr_sum, pvn_sum, weight_sum = bpr_sum + bpr, pvn_sum + pvn, weight_sum + weight
        if not torch.is_tensor(bpr_sum):  # nothing to predict (all padding): the zero loss of the full path
            return self._rec_loss_full(seqs, targets, negatives)
        weight_sum = weight_sum.clamp_min(1.0)
        bpr, pvn = bpr_sum / weight_sum, pvn_sum / weight_sum
        return bpr + self.pvn_weight * pvn, {"bpr": bpr.detach(), "pvn": pvn.detach()}

    def _rec_terms(self, mean, cov, targets, negatives):
        """Sums of the BPR and pvn terms over the non-padding targets, and their number."""
        pos_mean, pos_cov = self.item_gaussians(targets)
        neg_mean, neg_cov = self.item_gaussians(negatives)
        d_pos = paired_w2(mean, cov, pos_mean, pos_cov)
        d_neg = paired_w2(mean, cov, neg_mean, neg_cov)
        d_pos_neg = paired_w2(pos_mean, pos_cov, neg_mean, neg_cov)
        weight = (targets > 0).to(mean.dtype)
        if self.compat:  # the original's form: inf once sigmoid underflows to 0 (d_pos - d_neg > ~88)
            bpr = -torch.log(torch.sigmoid(d_neg - d_pos + 1e-24))
        else:
            bpr = -F.logsigmoid(d_neg - d_pos)
        return (bpr * weight).sum(), (F.relu(d_pos - d_pos_neg) * weight).sum(), weight.sum()

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
        mean, cov = self.encode_fast(views)
        anchor = None
        if self.shared_padding and self.skip_padding and self.training and not self.original_padding:
            anchor = int((views > 0).sum(1).argmin())
        return self._wasserstein_infonce(mean, cov, anchor)

    def last_gaussians(self, seqs):
        """The Gaussians at the last position ``[B, H]`` (with ``skip_padding``: each bucket of rows
        encodes only its window from the first item on)."""
        L = seqs.shape[1]
        if not self.skip_padding:
            mean, cov = self.encode(seqs)
            return mean[:, -1], cov[:, -1]
        means, covs, order = [], [], []
        for rows, w in self._windows(seqs, torch.zeros_like(seqs, dtype=torch.bool)):
            mean, cov = self._encode_window(seqs[rows, L - max(w, 1):], L - max(w, 1))
            means.append(mean[:, -1])
            covs.append(cov[:, -1])
            order.append(rows)
        return unpermute(means, order), unpermute(covs, order)

    def score_items(self, seqs: torch.Tensor) -> torch.Tensor:
        """``[B, n_items]`` scores, ``-W`` between the last position and every item (column i: id i+1)."""
        mean, cov = self.last_gaussians(seqs)
        item_mean, item_cov = self.item_gaussians()
        return -mstein_fast.pairwise_w2(mean, cov, item_mean, item_cov, backend=self.backend)

    def _item_similarity(self, rows):
        m, c = self.item_gaussians(rows)
        item_mean, item_cov = self.item_gaussians()
        return -mstein_fast.pairwise_w2(m, c, item_mean, item_cov, backend=self.backend)


class SASRec(_Recommender):
    """SASRec backbone: dot-product attention, BCE with one sampled negative per position.

    ``contrastive="dot"`` is CoSeRec (dot-product InfoNCE on the flattened outputs);
    ``"wasserstein-split"`` is CoSeRec(WDM): each output vector is split into halves
    ``[mean ; ELU(cov) + 1]`` and the views are compared by Wasserstein InfoNCE."""

    def __init__(self, n_items: int, cfg, contrastive: str | None = None):
        super().__init__(n_items, cfg, contrastive)
        h = cfg.hidden_size
        if contrastive == "wasserstein-split" and h % 2:
            raise ValueError(f"coserec-wdm splits the output in halves: hidden_size must be even, got {h}")
        self.item_emb = nn.Embedding(n_items + 1, h, padding_idx=0)
        self.position_emb = nn.Embedding(cfg.max_seq_length, h)
        self.embed_norm = nn.LayerNorm(h, eps=1e-12)
        self.dropout = Dropout(cfg.hidden_dropout_prob)
        self.attention = nn.ModuleList(
            DotSelfAttention(h, cfg.num_attention_heads, cfg.attention_probs_dropout_prob, cfg.hidden_dropout_prob)
            for _ in range(cfg.num_hidden_layers)
        )
        self.ffn = nn.ModuleList(FeedForward(h, cfg.hidden_dropout_prob) for _ in range(cfg.num_hidden_layers))
        self._init_weights()

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` ids -> ``[B, L, H]`` outputs."""
        pos = torch.arange(seqs.shape[1], device=seqs.device)
        x = self.dropout(self.embed_norm(self.item_emb(seqs) + self.position_emb(pos)))
        allowed = original_attention_mask(seqs, -10000.0) if self.original_padding else attention_mask(seqs)
        for attention, ffn in zip(self.attention, self.ffn):
            x = ffn(attention(x, allowed))
        return x

    def rec_loss(self, seqs, targets, negatives) -> tuple[torch.Tensor, dict]:
        """``-log sigmoid(<h, pos>) - log sigmoid(-<h, neg>)`` over non-padding target positions."""
        out = self.encode(seqs)
        pos_logit = (out * self.item_emb(targets)).sum(-1)
        neg_logit = (out * self.item_emb(negatives)).sum(-1)
        weight = (targets > 0).to(out.dtype)
        if self.compat:  # the original's form
            terms = -torch.log(torch.sigmoid(pos_logit) + 1e-24) - torch.log(1 - torch.sigmoid(neg_logit) + 1e-24)
        else:
            terms = -F.logsigmoid(pos_logit) - F.logsigmoid(-neg_logit)
        bce = _weighted_mean(terms, weight)
        return bce, {"bce": bce.detach()}

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

    def score_items(self, seqs: torch.Tensor) -> torch.Tensor:
        """``[B, n_items]`` dot products of the last position with every item (column i: id i+1)."""
        return self.encode(seqs)[:, -1] @ self.item_emb.weight[1:].T

    def _item_similarity(self, rows):
        return self.item_emb(rows) @ self.item_emb.weight[1:].T


def build_model(name: str, n_items: int, cfg) -> _Recommender:
    """The model called ``name`` (a key of :data:`MODELS`) for items ``1..n_items``."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    backbone, contrastive = MODELS[name]
    cls = STOSA if backbone == "stosa" else SASRec
    return cls(n_items, cfg, contrastive)
