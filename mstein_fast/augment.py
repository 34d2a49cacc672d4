"""CoSeRec's and CL4SRec's sequence augmentations, batched on tensors (docs/models.md).

``augmentations = "coserec"``: each view of a sequence of length n gets one augmentation, drawn
uniformly from {insert, substitute, mask} when n <= augment_threshold and from {insert, crop,
mask, reorder, substitute} otherwise. ``augmentations = "cl4srec"``: the two views of a sequence
get two different augmentations of {crop, mask, reorder}, the ordered pair drawn uniformly (as
CL4SRec's reference implementation), whatever the length; no item similarity is needed then.
All randomness comes from the ``torch.Generator`` passed in, so a batch's views are a function of
the generator's seed.

- crop: keep a contiguous window of ``max(1, int(tao * n))`` items (every window equally likely;
  the original's ``randint(0, n - k - 1)`` never picks the last window: ``original_windows``).
- mask: ``int(gamma * n)`` random items are replaced by 0, the padding id (as the original code,
  so the attention then ignores them); this is the only augmentation that produces a 0 inside a
  sequence.
- reorder: a random window of ``int(beta * n)`` items is shuffled (beta defaults to 0.7: the
  original passes its mask ratio gamma here; window start as crop's).
- substitute: ``max(1, int(substitute_rate * n))`` random items are replaced by their most
  similar item.
- insert: before each of ``m = max(1, int(insert_rate * n))`` random items, its ``c`` most similar
  items are inserted (most similar first), ``c`` uniform in ``1..max(1, int(max_insert_num_per_pos
  / m))`` (the original's rule: with max_insert_num_per_pos = 1, exactly one item); the sequence
  grows by the total ``c``.

The augmentations act on the whole training sequence (not only its last ``max_len`` items, as the
original), whose last ``max_len`` items then form the view. A sequence of length 0 stays empty.

Item similarity is a ``[n_items + 1, k]`` tensor of each item's most similar items: ItemCF-IUF on
the training sequences (:func:`itemcf_iuf_topk`) during the warm-up epochs, then the model's own
item representations (``model.nearest_items``), refreshed every epoch by the trainer. With
``degenerate`` (compat = "original", after the warm-up) the augmentations use the original's
online similarity as it behaves: every item scores the same, so the "most similar" items are
always items 0 and 1 (the item itself excluded): substitute writes 0 (the padding id), insert
puts 0 and 1 before the chosen item (only 0 before item 1).
"""

from __future__ import annotations

import numpy as np
import torch

from mstein_fast.compat import original_compat
from mstein_fast.contracts import AugmentConfig, require

INSERT, SUBSTITUTE, MASK, CROP, REORDER = range(5)
OP_NAMES = ("insert", "substitute", "mask", "crop", "reorder")
SHORT_OPS = (INSERT, SUBSTITUTE, MASK)
LONG_OPS = (INSERT, CROP, MASK, REORDER, SUBSTITUTE)
CL4SREC_OPS = (CROP, MASK, REORDER)
# the values of AugmentConfig.augmentations
AUGMENTATION_SETS = ("coserec", "cl4srec")


def itemcf_iuf_topk(sequences: list[np.ndarray], n_items: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``[n_items + 1, k]``: each item's k most similar items by ItemCF-IUF co-occurrence.

    ``sim(i, j) = sum over users having both of 1 / log(1 + n_u) / sqrt(N_i * N_j)``, where ``n_u``
    is the number of distinct items of user u and ``N_i`` the number of users having item i (the
    original's ``ItemCF_IUF``), on the given (training) sequences, vectorised over all co-occurring pairs.
    Items with fewer than k co-occurring items are completed with random other items (the
    original falls back to random items too); row 0 (padding) is never used.
    """
    n1 = n_items + 1
    uniq = [np.unique(s) for s in sequences]
    sizes = torch.tensor([len(u) for u in uniq], dtype=torch.int64)
    items = torch.from_numpy(np.concatenate(uniq)) if len(uniq) else torch.zeros(0, dtype=torch.int64)
    counts = torch.bincount(items, minlength=n1).double()  # N_i: users having item i
    # every ordered pair (i, j) of items of the same user, weighted 1 / log(1 + n_u)
    owner = torch.repeat_interleave(torch.arange(len(uniq)), sizes)
    first = torch.cumsum(sizes, 0) - sizes  # offset of each user's items
    reps = sizes[owner]  # each item pairs with all items of its user
    i = torch.repeat_interleave(items, reps)
    pair_owner = torch.repeat_interleave(owner, reps)
    within = torch.arange(len(i)) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
    j = items[first[pair_owner] + within]
    weight = 1.0 / torch.log1p(sizes[pair_owner].double())
    keys, inverse = torch.unique(i * n1 + j, return_inverse=True)
    co = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, inverse, weight)
    i, j = keys // n1, keys % n1
    score = co / torch.sqrt(counts[i] * counts[j])
    keep = i != j
    i, j, score = i[keep], j[keep], score[keep]
    # sort by (row, -score, column): the top entries of each row come first
    order = torch.argsort(j, stable=True)
    order = order[torch.argsort(-score[order], stable=True)]
    order = order[torch.argsort(i[order], stable=True)]
    i, j = i[order], j[order]
    row_start = torch.zeros(n1 + 1, dtype=torch.int64)
    row_start[1:] = torch.cumsum(torch.bincount(i, minlength=n1), 0)
    rank = torch.arange(len(i)) - row_start[i]
    top = rank < k
    # random other items as the fallback (shifted so that an item is never its own neighbour)
    out = 1 + (torch.arange(n1).unsqueeze(1) + torch.randint(1, max(n_items, 2), (n1, k), generator=generator) - 1) % n_items
    out[i[top], rank[top]] = j[top]
    return out


def _choose_positions(lengths: torch.Tensor, counts: torch.Tensor, width: int, generator) -> torch.Tensor:
    """``[B, width]`` bool: ``counts[b]`` distinct positions among the first ``lengths[b]``, uniformly."""
    keys = torch.rand(len(lengths), width, generator=generator)
    keys.masked_fill_(torch.arange(width) >= lengths.unsqueeze(1), 2.0)
    ranks = torch.argsort(torch.argsort(keys, dim=1), dim=1)
    return (ranks < counts.unsqueeze(1)) & (torch.arange(width) < lengths.unsqueeze(1))


def _count(rate: float, lengths: torch.Tensor, at_least_one: bool) -> torch.Tensor:
    """``int(rate * n)`` exactly as Python computes it (float64), optionally at least 1."""
    c = torch.floor(lengths.double() * rate).long()
    return torch.maximum(c, torch.ones_like(c)) if at_least_one else c


def _uniform_int(high: torch.Tensor, generator) -> torch.Tensor:
    """Uniform integers in ``[0, high]`` (inclusive), elementwise."""
    return torch.floor(torch.rand(high.shape, generator=generator, dtype=torch.float64) * (high + 1)).long().minimum(high)


class Augmenter:
    """Two augmented views per sequence, vectorised over a batch.

    ``cfg`` is the :class:`~mstein_fast.contracts.AugmentConfig` the augmentations read
    (``TrainConfig.augment_config()``; anything else, a TrainConfig included, is a TypeError).
    ``similar`` is the ``[n_items + 1, k]`` item-similarity table (replace it with
    :meth:`set_similarity`); ``k`` must be at least :attr:`similar_k`.
    """

    def __init__(self, cfg: AugmentConfig, similar: torch.Tensor | None = None):
        require(cfg, AugmentConfig, "Augmenter")
        self.tao, self.gamma, self.beta = cfg.tao, cfg.gamma, cfg.beta
        self.insert_rate, self.substitute_rate = cfg.insert_rate, cfg.substitute_rate
        self.max_insert = cfg.max_insert_num_per_pos
        self.threshold = cfg.augment_threshold
        self.max_len = cfg.max_seq_length
        if cfg.augmentations not in AUGMENTATION_SETS:
            raise ValueError(f"augmentations must be one of {AUGMENTATION_SETS}, got {cfg.augmentations!r}")
        self.augmentations = cfg.augmentations
        # compat = "original": crop / reorder windows start in 0..n-k-1, reorder uses gamma
        self.original_windows = original_compat(cfg)
        if self.original_windows:
            self.beta = self.gamma
        self.degenerate = False
        self.similar = None
        if similar is not None:
            self.set_similarity(similar)

    @property
    def needs_similarity(self) -> bool:
        """Whether the augmentations use the item-similarity table (insert, substitute): not with
        ``augmentations = "cl4srec"``."""
        return self.augmentations != "cl4srec"

    @property
    def similar_k(self) -> int:
        """How many similar items per item the augmentations use."""
        return self.max_insert

    def set_similarity(self, similar: torch.Tensor) -> None:
        """Use the ``[n_items + 1, >= similar_k]`` table of each item's most similar items."""
        if similar.dim() != 2 or similar.shape[1] < self.similar_k:
            raise ValueError(f"similarity table must be [n_items + 1, >= {self.similar_k}], got {tuple(similar.shape)}")
        self.similar = similar.cpu()
        self.degenerate = False

    def set_degenerate(self, n_items: int) -> None:
        """Use the original's degenerate online similarity (see the module docstring)."""
        table = torch.zeros(n_items + 1, max(2, self.similar_k), dtype=torch.int64)
        table[:, 1] = 1
        table[1, 1] = 0
        self.similar = table
        self.degenerate = True

    def views(self, seqs: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``[2B, max_len]``: view A of every sequence, then view B (left-padded with 0).

        ``seqs`` is ``[B, W]`` left-padded with 0 (the whole training sequences), ``lengths`` ``[B]``."""
        both = torch.cat([seqs, seqs])
        n = torch.cat([lengths, lengths])
        ops = None
        if self.augmentations == "cl4srec":  # two different augmentations per sequence
            first = torch.randint(0, 3, lengths.shape, generator=generator)
            second = (first + torch.randint(1, 3, lengths.shape, generator=generator)) % 3
            ops = torch.tensor(CL4SREC_OPS)[torch.cat([first, second])]
        return self.augment(both, n, generator, ops)

    def augment(self, seqs: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator,
                ops: torch.Tensor | None = None) -> torch.Tensor:
        """One random augmentation per row of ``seqs`` ``[B, W]`` (left-padded); ``[B, max_len]`` out.

        ``ops`` (``[B]`` of INSERT..REORDER) forces the augmentation per row (tests)."""
        seqs, lengths = seqs.cpu(), lengths.cpu()
        if ops is None:
            ops = self.choose_ops(lengths, generator)
        if self.similar is None and bool(((ops == INSERT) | (ops == SUBSTITUTE)).any()):
            raise RuntimeError("Augmenter has no item similarity table; call set_similarity first")
        b, width = seqs.shape
        # to left-aligned rows: item t of row r at [r, t]
        idx = (torch.arange(width) + (width - lengths).unsqueeze(1)).clamp_max(width - 1)
        aligned = torch.gather(seqs, 1, idx).masked_fill(torch.arange(width) >= lengths.unsqueeze(1), 0)
        out = torch.zeros(b, self.max_len, dtype=torch.int64)
        for op, fn in ((INSERT, self._insert), (SUBSTITUTE, self._substitute), (MASK, self._mask),
                       (CROP, self._crop), (REORDER, self._reorder)):
            rows = torch.nonzero(ops == op).squeeze(1)
            if len(rows):
                res, res_len = fn(aligned[rows], lengths[rows], generator)
                out[rows] = _right_align(res, res_len, self.max_len)
        return out

    def choose_ops(self, lengths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``[B]`` augmentation per row: uniform over SHORT_OPS if length <= threshold, else LONG_OPS
        (``augmentations = "cl4srec"``: uniform over CL4SREC_OPS)."""
        if self.augmentations == "cl4srec":
            return torch.tensor(CL4SREC_OPS)[torch.randint(0, 3, lengths.shape, generator=generator)]
        pick = torch.randint(0, 15, lengths.shape, generator=generator)  # 15 = lcm(3, 5): one draw serves both
        short, long_ = torch.tensor(SHORT_OPS), torch.tensor(LONG_OPS)
        return torch.where(lengths <= self.threshold, short[pick % 3], long_[pick % 5])

    def _mask(self, x, n, g):
        chosen = _choose_positions(n, _count(self.gamma, n, False), x.shape[1], g)
        return x.masked_fill(chosen, 0), n

    def _substitute(self, x, n, g):
        chosen = _choose_positions(n, _count(self.substitute_rate, n, True), x.shape[1], g)
        return torch.where(chosen, self.similar[x, 0], x), n

    def _window_start(self, n, size, g):
        """Uniform start of a window of ``size`` items in rows of length ``n``: every window, or the
        original's ``randint(0, n - size - 1)`` (not the last window) with ``original_windows``."""
        last = n - size - 1 if self.original_windows else n - size
        return _uniform_int(last.clamp_min(0), g)

    def _crop(self, x, n, g):
        size = _count(self.tao, n, False)
        keep = torch.maximum(size, torch.ones_like(n)).minimum(n)
        # the original draws the start for int(tao * n) items, also when it then keeps one item
        start = self._window_start(n, size if self.original_windows else keep, g)
        idx = (start.unsqueeze(1) + torch.arange(x.shape[1])).clamp_max(x.shape[1] - 1)
        out = torch.gather(x, 1, idx).masked_fill(torch.arange(x.shape[1]) >= keep.unsqueeze(1), 0)
        return out, keep

    def _reorder(self, x, n, g):
        size = _count(self.beta, n, False)
        start = self._window_start(n, size, g)
        pos = torch.arange(x.shape[1]).unsqueeze(0).double()
        inside = (pos >= start.unsqueeze(1)) & (pos < (start + size).unsqueeze(1))
        # sort keys: outside the window the position itself; inside, random keys within [start, start + size)
        keys = torch.where(inside, start.unsqueeze(1) + torch.rand(x.shape, generator=g, dtype=torch.float64)
                           * (size.unsqueeze(1) - 1e-6), pos)
        return torch.gather(x, 1, torch.argsort(keys, dim=1, stable=True)), n

    def _insert(self, x, n, g):
        b, width = x.shape
        m = _count(self.insert_rate, n, True)
        chosen = _choose_positions(n, m, width, g)
        if self.degenerate:  # items 0 and 1 before every chosen item (only 0 before item 1)
            k = 2
            count = torch.where(chosen, torch.where(x == 1, 1, 2), 0)
        else:
            k = self.max_insert
            most = torch.clamp(self.max_insert // m, min=1).unsqueeze(1)  # the original's max(1, int(M / m))
            draw = torch.floor(torch.rand(b, width, generator=g, dtype=torch.float64) * most).long() + 1
            count = torch.where(chosen, draw.minimum(most), 0)  # items inserted before position t
        slots = count + (torch.arange(width) < n.unsqueeze(1)).long()  # output slots taken by position t
        end = torch.cumsum(slots, 1)  # one past the last slot of position t
        start = end - slots
        new_len = end[:, -1]
        out = torch.zeros(b, int(new_len.max()) if b else 0, dtype=torch.int64)
        row = torch.arange(b).unsqueeze(1).expand(b, width)
        # inserted items: slot start + j holds the j-th most similar item, for j < count
        for j in range(k):
            put = (j < count)
            out[row[put], (start + j)[put]] = self.similar[x[put], j]
        real = torch.arange(width) < n.unsqueeze(1)
        out[row[real], (end - 1)[real]] = x[real]
        return out, new_len


def _right_align(aligned: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Left-aligned rows of the given lengths -> their last ``width`` items, left-padded with 0."""
    b, w = aligned.shape
    src = lengths.unsqueeze(1) - width + torch.arange(width)  # source index of output column c
    valid = src >= 0
    out = torch.gather(aligned, 1, src.clamp(0, max(w - 1, 0))) if w else torch.zeros(b, width, dtype=torch.int64)
    return out.masked_fill(~valid, 0)
