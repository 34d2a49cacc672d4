"""Interaction sequences: loading, the built-in synthetic data set, the leave-one-out split and
vectorised negative sampling (docs/protocol.md).

File format: one line per user, ``user_id item_id item_id ...`` in time order, ids are positive
integers in plain ASCII digits (0 is the padding id; item ids up to :data:`MAX_ITEM_ID`); a UTF-8
byte-order mark is skipped. Users with fewer than 3 interactions cannot be split into
train / valid / test and are skipped (and counted).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch

from mstein_fast.errors import UserError

MIN_INTERACTIONS = 3  # one training pair needs >= 1 more, but valid and test need the last two
# Item ids index the embedding tables (one row per id up to the largest): larger ids would ask for
# absurd allocations. User ids are only labels, but must fit in int64.
MAX_ITEM_ID = 10**7
MAX_USER_ID = 2**63 - 1


class DataError(UserError, ValueError):
    """A data file is missing or malformed; the message names the file and, where known, the line."""


@dataclass
class Sequences:
    """Time-ordered item sequences of the kept users (ids as in the file)."""

    user_ids: list[int]
    items: list[np.ndarray]  # int64 item ids per user, time order
    n_items: int  # largest item id; item ids are 1..n_items
    source: str  # file path, or a description of the synthetic data
    fingerprint: str  # sha1 of the content, to tell whether a checkpoint was trained on this data
    skipped_users: int = 0  # users with fewer than MIN_INTERACTIONS interactions

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.items))


def load_sequences(path: str) -> Sequences:
    """Read a ``user_id item_id ...`` file; raise :class:`DataError` naming file and line on bad input."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a sequence file 'user_id item_id item_id ...'")
    if not os.path.isfile(path):  # a FIFO, /dev/zero, ...: could be read without end
        raise DataError(f"{path}: not a regular file, expected a sequence file 'user_id item_id item_id ...'")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None

    user_ids: list[int] = []
    items: list[np.ndarray] = []
    first_line: dict[int, int] = {}
    skipped = 0
    n_items = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue  # blank lines (e.g. a trailing one) carry nothing
        ids = []
        for pos, tok in enumerate(tokens):
            what = "user id" if pos == 0 else "item id"
            digits = tok[1:] if tok[:1] == "-" else tok
            if not (digits.isascii() and digits.isdigit()):  # int() would also take "+5", "1_0", "٣"
                raise DataError(f"{path}:{lineno}: {what} {tok!r} is not an integer (ids are plain digits 1, 2, ...)")
            value = int(tok)
            if value <= 0:
                raise DataError(f"{path}:{lineno}: {what} {value} is not positive (ids start at 1; 0 is padding)")
            limit = MAX_USER_ID if pos == 0 else MAX_ITEM_ID
            if value > limit:
                raise DataError(f"{path}:{lineno}: {what} {value} is larger than {limit} (item ids index the "
                                "embeddings: renumber them 1..n, e.g. with `mstein-fast data prepare`)")
            ids.append(value)
        user = ids[0]
        if len(ids) == 1:
            raise DataError(f"{path}:{lineno}: expected 'user_id item_id item_id ...', got only a user id")
        if user in first_line:
            raise DataError(f"{path}:{lineno}: user {user} already appeared on line {first_line[user]}")
        first_line[user] = lineno
        seq = np.asarray(ids[1:], dtype=np.int64)
        if len(seq) < MIN_INTERACTIONS:
            skipped += 1
            continue
        n_items = max(n_items, int(seq.max()))
        user_ids.append(user)
        items.append(seq)
    if not first_line:
        raise DataError(f"{path}: the file is empty (expected lines 'user_id item_id item_id ...')")
    if not items:
        raise DataError(
            f"{path}: all {skipped} users have fewer than {MIN_INTERACTIONS} interactions; nothing to train on"
        )
    return Sequences(user_ids, items, n_items, path, hashlib.sha1(raw).hexdigest(), skipped)


def synthetic_sequences(
    n_users: int = 2000,
    n_items: int = 500,
    n_clusters: int = 20,
    min_length: int = 5,
    max_length: int = 30,
    follow_prob: float = 0.5,
    seed: int = 0,
) -> Sequences:
    """A deterministic synthetic data set with structure a sequential model can learn.

    Items fall into ``n_clusters`` latent clusters with Zipf-like popularity; inside each cluster
    the items form a cycle of successors. A user prefers one cluster and walks: with probability
    ``follow_prob`` to the successor of the current item (the sequential signal), otherwise to a
    popularity-weighted item of the preferred cluster (70%) or of any cluster (30%, noise). Items
    are not repeated within a user. Popularity ranking therefore scores poorly while a model of
    the transitions scores well. Lengths are drawn log-uniformly in ``[min_length, max_length]``.
    """
    if n_items < 2 * n_clusters or n_clusters < 1:
        raise ValueError("synthetic data needs n_clusters >= 1 and at least 2 items per cluster")
    if not 3 <= min_length <= max_length:
        raise ValueError("synthetic data needs 3 <= min_length <= max_length")
    rng = np.random.default_rng(seed)
    cluster = rng.permutation(np.arange(n_items) % n_clusters)  # cluster of item index i (id i + 1)
    popularity = 1.0 / (1.0 + rng.permutation(n_items)) ** 0.8
    successor = np.empty(n_items, dtype=np.int64)
    members = [np.flatnonzero(cluster == c) for c in range(n_clusters)]
    for m in members:
        cycle = rng.permutation(m)
        successor[cycle] = np.roll(cycle, -1)
    # popularity-weighted sampling tables: one for all items, one per cluster
    global_p = popularity / popularity.sum()
    cluster_p = [popularity[m] / popularity[m].sum() for m in members]

    lengths = np.exp(rng.uniform(np.log(min_length), np.log(max_length + 1), size=n_users)).astype(np.int64)
    lengths = np.clip(lengths, min_length, max_length)
    pref = rng.integers(0, n_clusters, size=n_users)
    seqs = []
    for u in range(n_users):
        seen: set[int] = set()
        m, p = members[pref[u]], cluster_p[pref[u]]
        cur = int(rng.choice(m, p=p))
        seq = [cur]
        seen.add(cur)
        while len(seq) < lengths[u]:
            for _ in range(20):  # retry a few times to avoid repeats
                r = rng.random()
                if r < follow_prob:
                    nxt = int(successor[cur])
                elif r < follow_prob + (1 - follow_prob) * 0.7:
                    nxt = int(rng.choice(m, p=p))
                else:
                    nxt = int(rng.choice(n_items, p=global_p))
                if nxt not in seen:
                    break
            else:
                break  # cluster exhausted: end this user's sequence
            seq.append(nxt)
            seen.add(nxt)
            cur = nxt
        seqs.append(np.asarray(seq, dtype=np.int64) + 1)
    keep = [s for s in seqs if len(s) >= MIN_INTERACTIONS]
    user_ids = [u + 1 for u, s in enumerate(seqs) if len(s) >= MIN_INTERACTIONS]
    desc = (
        f"synthetic(n_users={n_users}, n_items={n_items}, n_clusters={n_clusters}, "
        f"length={min_length}..{max_length}, follow_prob={follow_prob}, seed={seed})"
    )
    digest = hashlib.sha1(np.concatenate(keep).tobytes() + desc.encode()).hexdigest()
    return Sequences(user_ids, keep, n_items, desc, digest, len(seqs) - len(keep))


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
        return self.train_inputs.shape[0]

    def eval_arrays(self, split: str) -> tuple[torch.Tensor, torch.Tensor, Ragged]:
        """``(inputs, targets, seen)`` of ``"valid"`` or ``"test"``."""
        if split == "valid":
            return self.valid_inputs, self.valid_targets, self.valid_seen
        if split == "test":
            return self.test_inputs, self.test_targets, self.test_seen
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")


def leave_one_out(data: Sequences, max_len: int = 50) -> LeaveOneOut:
    """Build the :class:`LeaveOneOut` tensors of ``data`` (every user has >= 3 items)."""
    seqs = data.items
    train_in = [s[:-3] for s in seqs]
    width = max(1, max(len(s) for s in train_in))
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


# -- raw Amazon files -> sequence file ---------------------------------------------------------

_JSON_KEYS = {  # field -> accepted keys (2014/2018 Amazon dumps, then the 2023 one)
    "user": ("reviewerID", "user_id"),
    "item": ("asin", "parent_asin"),
    "time": ("unixReviewTime", "timestamp"),
}


def _open_text(path: str):
    import gzip

    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gz else open(path, encoding="utf-8")


def _read_json_lines(path: str, fh):
    import ast
    import json

    for lineno, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except RecursionError:
            raise DataError(f"{path}:{lineno}: JSON nested too deeply for a review record") from None
        except json.JSONDecodeError:
            if line.lstrip()[:1] != "{":
                raise DataError(f"{path}:{lineno}: not a JSON object") from None
            try:  # some Amazon dumps hold Python dict literals, not JSON
                obj = ast.literal_eval(line.strip())
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                raise DataError(f"{path}:{lineno}: not a JSON object") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        row = []
        for field, keys in _JSON_KEYS.items():
            value = next((obj[k] for k in keys if k in obj), None)
            if value is None:
                raise DataError(f"{path}:{lineno}: missing {field} field (one of {', '.join(keys)})")
            row.append(value)
        try:
            t = float(row[2])
        except (TypeError, ValueError):
            raise DataError(f"{path}:{lineno}: time {row[2]!r} is not a number") from None
        yield str(row[0]), str(row[1]), t


def _read_csv(path: str, fh):
    import csv

    reader = csv.reader(fh)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}: not a CSV line user,item,rating,timestamp ({err})") from None
        lineno = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 4:
            raise DataError(f"{path}:{lineno}: expected 4 columns user,item,rating,timestamp, got {len(row)}")
        try:
            t = float(row[3])
        except ValueError:
            if lineno == 1:
                continue  # a header line
            raise DataError(f"{path}:{lineno}: timestamp {row[3]!r} is not a number") from None
        yield row[0].strip(), row[1].strip(), t


def prepare_raw(raw_path: str, out_path: str, min_count: int = 5, fmt: str = "auto") -> dict:
    """Turn raw Amazon reviews into a sequence file (docs/protocol.md).

    Reads JSON lines (``reviewerID``, ``asin``, ``unixReviewTime``; plain or gzipped) or CSV
    ``user,item,rating,timestamp``; keeps the ``min_count``-core (users and items with at least
    ``min_count`` interactions, filtered repeatedly until stable); sorts each user's items by time
    (ties keep file order); maps users to 1.. in order of first appearance in the file and items
    to 1.. in order of first appearance in the output. Writes ``out_path`` and, beside it,
    ``<stem>.user_map.tsv`` and ``<stem>.item_map.tsv`` (``raw_id<TAB>id``). Returns counts.
    """
    if not os.path.isfile(raw_path):
        raise DataError(f"{raw_path}: no such file")
    stem = out_path.removesuffix(".txt")
    outputs = [out_path, f"{stem}.user_map.tsv", f"{stem}.item_map.tsv"]
    for target in outputs:
        if os.path.isdir(target):
            raise DataError(f"-o {out_path}: {target} is a directory; name a file to write")
        if os.path.exists(target) and os.path.samefile(target, raw_path):
            raise DataError(f"-o {out_path}: {target} is the input file; choose another output name")
    if fmt == "auto":
        name = raw_path.lower().removesuffix(".gz")
        if name.endswith(".csv"):
            fmt = "csv"
        elif name.endswith((".json", ".jsonl")):
            fmt = "json"
        else:
            with _open_text(raw_path) as fh:
                head = fh.read(4096).lstrip()
            fmt = "json" if head.startswith("{") else "csv"
    if fmt not in ("json", "csv"):
        raise DataError(f"format must be auto, json or csv, got {fmt!r}")
    users, items, times = [], [], []
    try:
        with _open_text(raw_path) as fh:
            reader = _read_json_lines if fmt == "json" else _read_csv
            for u, i, t in reader(raw_path, fh):
                users.append(u)
                items.append(i)
                times.append(t)
    except UnicodeDecodeError:
        raise DataError(f"{raw_path}: not a UTF-8 text (or gzipped UTF-8) file") from None
    except (OSError, EOFError) as err:  # e.g. a truncated gzip file
        raise DataError(f"{raw_path}: cannot read ({str(err).splitlines()[0] if str(err) else type(err).__name__}; "
                        "a truncated or corrupt .gz?)") from None
    if not users:
        raise DataError(f"{raw_path}: the file holds no interactions")
    user_names, u = np.unique(np.asarray(users, dtype=object), return_inverse=True)
    item_names, i = np.unique(np.asarray(items, dtype=object), return_inverse=True)
    t = np.asarray(times, dtype=np.float64)
    order = np.arange(len(u))
    while True:  # iterated k-core
        keep = (np.bincount(u, minlength=len(user_names))[u] >= min_count) & (
            np.bincount(i, minlength=len(item_names))[i] >= min_count)
        if keep.all():
            break
        u, i, t, order = u[keep], i[keep], t[keep], order[keep]
    if len(u) == 0:
        raise DataError(f"{raw_path}: no interactions left after the {min_count}-core filter")
    first_seen = np.full(len(user_names), len(order), dtype=np.int64)
    np.minimum.at(first_seen, u, order)
    srt = np.lexsort((order, t, first_seen[u]))
    u, i = u[srt], i[srt]
    _, user_id = np.unique(first_seen[u], return_inverse=True)  # 0.. in order of first appearance
    item_first = np.full(len(item_names), len(i), dtype=np.int64)
    np.minimum.at(item_first, i, np.arange(len(i)))
    used_items = np.flatnonzero(item_first < len(i))
    item_rank = np.empty(len(item_names), dtype=np.int64)
    item_rank[used_items[np.argsort(item_first[used_items])]] = np.arange(1, len(used_items) + 1)
    item_id = item_rank[i]
    bounds = np.flatnonzero(np.diff(user_id)) + 1
    lines = [f"{k + 1} " + " ".join(map(str, chunk)) for k, chunk in enumerate(np.split(item_id, bounds))]
    user_raw = user_names[u[np.r_[0, bounds]]]
    item_raw = item_names[used_items[np.argsort(item_first[used_items])]]
    for name in (*user_raw, *item_raw):
        if any(c in str(name) for c in "\t\n\r"):
            raise DataError(f"{raw_path}: the id {str(name)!r} holds a tab or a line break; the id maps cannot hold it")
    texts = ["\n".join(lines) + "\n",
             "raw_id\tid\n" + "".join(f"{name}\t{k + 1}\n" for k, name in enumerate(user_raw)),
             "raw_id\tid\n" + "".join(f"{name}\t{k + 1}\n" for k, name in enumerate(item_raw))]
    try:
        out_dir = os.path.dirname(out_path)
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
        for target, text in zip(outputs, texts):
            with open(target, "w", encoding="utf-8") as fh:
                fh.write(text)
    except OSError as err:
        raise DataError(f"cannot write {err.filename or out_path}: {err.strerror or err}") from None
    return {"users": len(lines), "items": len(used_items), "interactions": len(u),
            "raw_interactions": len(users), "format": fmt}
