"""The leave-one-out split of docs/protocol.md as padded tensors, and vectorised negative sampling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mstein_fast.data.io import Sequences


def left_pad(seqs: list[np.ndarray], width: int) -> torch.Tensor:
    """``[U, width]`` int64: the last ``width`` items of each sequence, right-aligned, 0 on the left."""
    out = np.zeros((len(seqs), width), dtype=np.int64)
    if width == 0 or not seqs:
        return torch.from_numpy(out)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    flat = np.concatenate(seqs) if lengths.sum() else np.zeros(0, dtype=np.int64)
    rows = np.repeat(np.arange(len(seqs)), lengths)
    from_end = np.repeat(np.cumsum(lengths), lengths) - np.arange(len(flat)) - 1  # 0 for the last item
    keep = from_end < width
    out[rows[keep], width - 1 - from_end[keep]] = flat[keep]
    return torch.from_numpy(out)


@dataclass
class Ragged:
    """Variable-length rows as CSR: row ``u`` is ``values[offsets[u]:offsets[u + 1]]``."""

    offsets: torch.Tensor  # [U + 1] int64
    values: torch.Tensor  # [nnz] int64

    @classmethod
    def from_list(cls, seqs: list[np.ndarray]) -> Ragged:
        """The rows ``seqs`` (int64 arrays) as one CSR structure."""
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
        offsets = torch.zeros(len(seqs) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)
        values = torch.from_numpy(np.concatenate(seqs)) if len(seqs) and offsets[-1] > 0 else torch.zeros(0, dtype=torch.int64)
        return cls(offsets, values)

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(row_index_in_batch, value)`` pairs of the given rows, concatenated."""
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        counts = ends - starts
        batch_row = torch.repeat_interleave(torch.arange(len(rows)), counts)
        first = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts)
        return batch_row, self.values[first + torch.arange(int(counts.sum()))]


@dataclass
class LeaveOneOut:
    """The leave-one-out split of docs/protocol.md as padded tensors (all on the CPU).

    For a user with items ``s``: training inputs ``s[:-3]`` predict targets ``s[1:-2]`` position by
    position; validation input ``s[:-2]`` predicts ``s[-2]``; test input ``s[:-1]`` predicts ``s[-1]``.
    Inputs keep their last ``max_len`` items, right-aligned and left-padded with 0.
    """

    n_items: int
    max_len: int
    train_full: torch.Tensor  # [U, W] all training inputs s[:-3] (not truncated), left-padded: augmentation input
    train_lengths: torch.Tensor  # [U] len(s) - 3
    train_inputs: torch.Tensor  # [U, max_len]
    train_targets: torch.Tensor  # [U, max_len], 0 where the input is padding
    valid_inputs: torch.Tensor  # [U, max_len]
    valid_targets: torch.Tensor  # [U]
    valid_seen: Ragged  # s[:-2]: excluded from the validation ranking
    test_inputs: torch.Tensor  # [U, max_len]
    test_targets: torch.Tensor  # [U]
    test_seen: Ragged  # s[:-1]: excluded from the test ranking
    user_item_keys: torch.Tensor  # sorted unique u * (n_items + 1) + item over all of s: negative sampling
    item_counts: torch.Tensor  # [n_items + 1] occurrences in s[:-2] (training data): popularity baseline

    @property
    def n_users(self) -> int:
        """Number of users (rows)."""
        return self.train_inputs.shape[0]

    def eval_arrays(self, split: str) -> tuple[torch.Tensor, torch.Tensor, Ragged]:
        """``(inputs, targets, seen)`` of ``"valid"`` or ``"test"``."""
        if split == "valid":
            return self.valid_inputs, self.valid_targets, self.valid_seen
        if split == "test":
            return self.test_inputs, self.test_targets, self.test_seen
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")


def leave_one_out(data: Sequences, max_len: int = 50) -> LeaveOneOut:
    """Build the :class:`LeaveOneOut` tensors of ``data`` (every user has >= 3 items); a
    :class:`~mstein_fast.errors.UserError` before anything is allocated if they would not fit in the
    available memory (:func:`mstein_fast.memory.split_bytes`)."""
    from mstein_fast.memory import check_bytes, split_bytes

    seqs = data.items
    train_in = [s[:-3] for s in seqs]
    width = max(1, max(len(s) for s in train_in))
    check_bytes(split_bytes(len(seqs), max_len, width), f"the leave-one-out split of {data.source}",
                f"{len(seqs)} users x (4 x max_seq_length {max_len} + the longest history {width}) int64",
                "use a smaller max_seq_length")
    n1 = data.n_items + 1
    keys = np.concatenate([np.unique(s) + u * n1 for u, s in enumerate(seqs)])
    counts = np.bincount(np.concatenate([s[:-2] for s in seqs]), minlength=n1)
    return LeaveOneOut(
        n_items=data.n_items,
        max_len=max_len,
        train_full=left_pad(train_in, width),
        train_lengths=torch.tensor([len(s) for s in train_in], dtype=torch.int64),
        train_inputs=left_pad(train_in, max_len),
        train_targets=left_pad([s[1:-2] for s in seqs], max_len),
        valid_inputs=left_pad([s[:-2] for s in seqs], max_len),
        valid_targets=torch.tensor([int(s[-2]) for s in seqs], dtype=torch.int64),
        valid_seen=Ragged.from_list([s[:-2] for s in seqs]),
        test_inputs=left_pad([s[:-1] for s in seqs], max_len),
        test_targets=torch.tensor([int(s[-1]) for s in seqs], dtype=torch.int64),
        test_seen=Ragged.from_list([s[:-1] for s in seqs]),
        user_item_keys=torch.from_numpy(np.sort(keys)),
        item_counts=torch.from_numpy(counts.astype(np.int64)),
    )


def sample_negatives(
    targets: torch.Tensor,
    users: torch.Tensor,
    user_item_keys: torch.Tensor,
    n_items: int,
    generator: torch.Generator,
    max_rounds: int = 100,
) -> torch.Tensor:
    """One negative item per non-padding target: uniform over items the user never interacted with.

    Args:
        targets: ``[B, L]`` target ids, 0 for padding (gets 0 back).
        users: ``[B]`` user row indices into the split.
        user_item_keys: sorted ``u * (n_items + 1) + item`` of every (user, item) pair of the data.
        generator: CPU generator (reproducibility).

    Rejection sampling, vectorised: draw all, redraw the collisions, repeat (at most ``max_rounds``
    rounds; a user who interacted with nearly every item may then keep a collision).
    """
    n1 = n_items + 1
    neg = torch.randint(1, n1, targets.shape, generator=generator)
    base = (users * n1).unsqueeze(1).expand_as(targets)
    todo = targets > 0
    for _ in range(max_rounds):
        keys = base + neg
        pos = torch.searchsorted(user_item_keys, keys).clamp_max(len(user_item_keys) - 1)
        bad = (user_item_keys[pos] == keys) & todo
        n_bad = int(bad.sum())
        if n_bad == 0:
            break
        neg[bad] = torch.randint(1, n1, (n_bad,), generator=generator)
    return neg.masked_fill(targets == 0, 0)
