"""The building blocks of the models: activations and masks, CoSeRec's dot-product InfoNCE, the
position-wise feed-forward block and the two self-attention layers (Wasserstein and dot-product)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import mstein_fast
from mstein_fast.numerics import std_from_cov
from mstein_fast.nn import activations
from mstein_fast.nn.dropout import Dropout
from mstein_fast.nn.linear import feed_forward, linear
from mstein_fast.nn.residual_norm import residual_layer_norm

MASKED_SCORE = -1e9  # attention score of a masked key (finite: no NaN for a fully masked row)


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """``ELU(x) + 1``: the activation that makes covariances positive (floored at 1e-24; one fused
    pass each way on float32 CPU tensors, :mod:`mstein_fast.nn.activations`)."""
    return activations.elu_plus_one(x)


def paired_w2(mean1, cov1, mean2, cov2) -> torch.Tensor:
    """Squared W2 between matching rows ``[..., D]`` -> ``[...]`` (the diagonal of pairwise_w2)."""
    std1, std2 = std_from_cov(cov1), std_from_cov(cov2)
    return ((mean1 - mean2) ** 2).sum(-1) + ((std1 - std2) ** 2).sum(-1)


def dense(layer: nn.Linear, x: torch.Tensor, rows: slice | None = None, activation: str | None = None) -> torch.Tensor:
    """``layer(x)``, or only its outputs ``rows``, followed by ``activation`` (None, ``"elu"`` or
    ``"elu_plus_one"``), by :func:`mstein_fast.nn.linear.linear` (the C++ dense-layer kernels with
    the activation fused on float32 CPU tensors, ``F.linear`` and the activation elsewhere)."""
    weight, bias = layer.weight, layer.bias
    if rows is not None:
        weight, bias = weight[rows], (None if bias is None else bias[rows])
    return linear(x, weight, bias, activation)


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


def sublayer_end(layer: nn.Module, z: torch.Tensor, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
    """``activation(layer.norm(layer.dropout(z) + x))``, the end of every attention and feed-forward
    block, by :func:`mstein_fast.nn.residual_norm.residual_layer_norm` (one fused pass each way on
    float32 CPU tensors; the same dropout masks as the separate ops)."""
    return residual_layer_norm(z, x, layer.norm, layer.dropout.p, layer.dropout.training, activation)


class FeedForward(nn.Module):
    """Position-wise ``dense(4h) -> activation -> dense(h) -> dropout -> LayerNorm(x + input)``;
    the activation is GELU in SASRec's block and ELU in the distributional models' (the original
    code's ``DistIntermediate`` uses ELU whatever ``hidden_act`` says). ``forward(x, "elu_plus_one")``
    applies the covariance activation to the output (fused into the LayerNorm's pass)."""

    def __init__(self, hidden: int, dropout: float, activation: str = "gelu"):
        super().__init__()
        if activation not in ("gelu", "elu"):
            raise ValueError(f"activation must be gelu or elu, got {activation!r}")
        self.dense_1 = nn.Linear(hidden, 4 * hidden)
        self.dense_2 = nn.Linear(4 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = Dropout(dropout)
        self.activation = activation

    def forward(self, x: torch.Tensor, out_activation: str | None = None) -> torch.Tensor:
        if self.activation == "elu":  # one op: the hidden layer stays in cache (and is recomputed in the backward)
            z = feed_forward(x, self.dense_1.weight, self.dense_1.bias, self.dense_2.weight, self.dense_2.bias)
        else:
            z = dense(self.dense_2, F.gelu(dense(self.dense_1, x)))
        return sublayer_end(self, z, x, out_activation)


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
        b, L, width = x.shape
        return [t.reshape(b, L, self.heads, self.head_dim).transpose(1, 2)
                for t in x.chunk(width // (self.heads * self.head_dim), dim=-1)]

    def forward(self, mean, cov, allowed, last_only: bool = False, mean_out: bool = True):
        """``[B, L, H]`` Gaussians -> ``[B, L, H]`` Gaussians; with ``last_only`` only the outputs at the
        last position, ``[B, 1, H]`` (its query attends to all keys; what a scoring pass needs).
        Without ``mean_out`` the mean output is not computed (``None``: no mean values, no mean
        output layer; the original's encoder drops it, ``mean_stream_typo``)."""
        b, _, h = mean.shape
        if mean_out:
            q_mean, k_mean, v_mean = self._split(dense(self.mean_qkv, mean))
        else:  # the queries' and keys' rows of the projection only
            q_mean, k_mean = self._split(dense(self.mean_qkv, mean, slice(0, 2 * h)))
        q_cov, k_cov, v_cov = self._split(dense(self.cov_qkv, cov, activation="elu_plus_one"))
        if last_only:
            q_mean, q_cov, allowed = q_mean[:, :, -1:], q_cov[:, :, -1:], allowed[..., -1:, :]
            mean, cov = mean[:, -1:], cov[:, -1:]
        queries = q_mean.shape[2]
        # [B, heads, queries, L]; no value check (a host sync per layer call): a NaN here reaches the loss
        w = mstein_fast.pairwise_w2(q_mean, q_cov, k_mean, k_cov, backend=self.backend, check_values=False)
        scores = _apply_mask(-w / math.sqrt(self.head_dim), allowed)
        probs = self.attn_dropout(torch.softmax(scores, dim=-1))
        mean_ctx = (probs @ v_mean).transpose(1, 2).reshape(b, queries, h) if mean_out else None
        cov_ctx = ((probs * probs) @ v_cov).transpose(1, 2).reshape(b, queries, h)
        return self._output(mean_ctx, cov_ctx, mean, cov)

    def _output(self, mean_ctx, cov_ctx, mean, cov):
        """The output layers (dense + dropout + LayerNorm(residual)) of both streams; a ``None``
        context gives a ``None`` output."""
        mean_out = None if mean_ctx is None else sublayer_end(self, dense(self.mean_dense, mean_ctx), mean)
        cov_out = sublayer_end(self, dense(self.cov_dense, cov_ctx), cov)
        return mean_out, cov_out

    def forward_self_only(self, mean, cov, mean_out: bool = True):
        """:meth:`forward` for positions that attend to themselves only (the leading padding of a
        left-padded row): the softmax row is one-hot, so the contexts are the values themselves
        (no queries, keys or distances needed; the softmax passes no gradient to the scores).
        Without ``mean_out`` the mean output is ``None`` (not computed)."""
        b, L, h = mean.shape
        hd = self.head_dim
        values = slice(2 * h, 3 * h)
        if not (self.training and self.attn_dropout.p > 0):
            # the contexts are the values: value projection and output layer as one op (its hidden
            # layer, the values, stays in cache; the same bits as the two dense layers)
            mean_z = feed_forward(mean, self.mean_qkv.weight[values], self.mean_qkv.bias[values],
                                  self.mean_dense.weight, self.mean_dense.bias, activation=None) if mean_out else None
            cov_z = feed_forward(cov, self.cov_qkv.weight[values], self.cov_qkv.bias[values],
                                 self.cov_dense.weight, self.cov_dense.bias, activation="elu_plus_one")
            mean_z = None if mean_z is None else sublayer_end(self, mean_z, mean)
            return mean_z, sublayer_end(self, cov_z, cov)
        v_mean = dense(self.mean_qkv, mean, values) if mean_out else None
        v_cov = dense(self.cov_qkv, cov, values, activation="elu_plus_one")
        # the one-hot probability is dropped (or scaled) per head
        keep = self.attn_dropout(torch.ones(b, L, self.heads, 1, dtype=mean.dtype, device=mean.device))
        if mean_out:
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

    def forward(self, x, allowed, last_only: bool = False):
        """``[B, L, H]`` -> ``[B, L, H]``; with ``last_only`` the last position's output only, ``[B, 1, H]``."""
        b, L, h = x.shape
        q, k, v = (t.reshape(b, L, self.heads, self.head_dim).transpose(1, 2) for t in dense(self.qkv, x).chunk(3, -1))
        if last_only:
            q, allowed, x = q[:, :, -1:], allowed[..., -1:, :], x[:, -1:]
        scores = _apply_mask(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), allowed)
        probs = self.attn_dropout(torch.softmax(scores, dim=-1))
        ctx = (probs @ v).transpose(1, 2).reshape(b, q.shape[2], h)
        return sublayer_end(self, dense(self.dense, ctx), x)
