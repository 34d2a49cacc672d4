"""Sequence files: loading them, with every check (docs/protocol.md).

File format: one line per user, ``user_id item_id item_id ...`` in time order, ids are positive
integers in plain ASCII digits (0 is the padding id; item ids up to :data:`MAX_ITEM_ID`),
separated by spaces or tabs. Lines end with ``\n`` (a ``\r`` before it is dropped); no other
character ends a line or separates ids: a token holding one is not an integer. A UTF-8
byte-order mark is skipped. Users with fewer than 3 interactions cannot be split into
train / valid / test and are skipped (and counted).

The file is read through :mod:`mstein_fast.reader` (streamed, bounded, one :class:`DataError`
naming the file and line for any malformed input).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from mstein_fast.errors import UserError  # noqa: F401  (re-exported: mstein_fast.data.UserError)
from mstein_fast.reader import DataError, file_label, open_text_lines, show

MIN_INTERACTIONS = 3  # one training pair needs >= 1 more, but valid and test need the last two
# Item ids index the embedding tables (one row per id up to the largest): larger ids would ask for
# absurd allocations. User ids are only labels, but must fit in int64.
MAX_ITEM_ID = 10**7
MAX_USER_ID = 2**63 - 1


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
        """Number of kept users."""
        return len(self.user_ids)

    @property
    def n_interactions(self) -> int:
        """Number of interactions of the kept users."""
        return int(sum(len(s) for s in self.items))


SEQUENCE_FILE = "a sequence file 'user_id item_id item_id ...'"
_MAX_ID_DIGITS = len(str(MAX_USER_ID))  # longer tokens are out of range without converting them


def _parse_id(tok: str, pos: int, where: str) -> int:
    what = "user id" if pos == 0 else "item id"
    digits = tok[1:] if tok[:1] == "-" else tok
    if not (digits.isascii() and digits.isdigit()):  # int() would also take "+5", "1_0", "٣"
        raise DataError(f"{where}: {what} {show(tok)} is not an integer (ids are plain digits 1, 2, ...)")
    limit = MAX_USER_ID if pos == 0 else MAX_ITEM_ID
    if len(digits.lstrip("0")) > _MAX_ID_DIGITS:  # int() of 4301+ digits raises; no id is that long
        shown = tok if len(tok) <= 40 else show(tok)
        if tok[:1] == "-":
            raise DataError(f"{where}: {what} {shown} is not positive (ids start at 1; 0 is padding)")
        raise DataError(f"{where}: {what} {shown} is larger than {limit} (item ids index the "
                        "embeddings: renumber them 1..n, e.g. with `mstein-fast data prepare`)")
    value = int(tok)
    if value <= 0:
        raise DataError(f"{where}: {what} {value} is not positive (ids start at 1; 0 is padding)")
    if value > limit:
        raise DataError(f"{where}: {what} {value} is larger than {limit} (item ids index the "
                        "embeddings: renumber them 1..n, e.g. with `mstein-fast data prepare`)")
    return value


def load_sequences(path: str) -> Sequences:
    """Read a ``user_id item_id ...`` file; raise :class:`DataError` naming file and line on bad input.

    The file is streamed (memory for the parsed ids, not for the file's text); its sha1, the
    :attr:`Sequences.fingerprint`, is computed over its bytes while they are read.
    """
    digest = hashlib.sha1()
    user_ids: list[int] = []
    items: list[np.ndarray] = []
    first_line: dict[int, int] = {}
    skipped = 0
    n_items = 0
    with open_text_lines(path, SEQUENCE_FILE, digest=digest) as lines:
        for lineno, line in lines:
            tokens = [t for t in line.replace("\t", " ").split(" ") if t]
            if not tokens:
                continue  # blank lines (e.g. a trailing one) carry nothing
            where = f"{file_label(path)}:{lineno}"
            ids = None
            if line.isascii() and all(map(str.isdigit, tokens)) and max(map(len, tokens)) <= _MAX_ID_DIGITS:
                ids = list(map(int, tokens))  # the common case, checked at once; else token by token
                if min(ids) <= 0 or ids[0] > MAX_USER_ID or (len(ids) > 1 and max(ids[1:]) > MAX_ITEM_ID):
                    ids = None
            if ids is None:
                ids = [_parse_id(tok, pos, where) for pos, tok in enumerate(tokens)]
            user = ids[0]
            if len(ids) == 1:
                raise DataError(f"{where}: expected 'user_id item_id item_id ...', got only a user id")
            if user in first_line:
                raise DataError(f"{where}: user {user} already appeared on line {first_line[user]}")
            first_line[user] = lineno
            seq = np.asarray(ids[1:], dtype=np.int64)
            if len(seq) < MIN_INTERACTIONS:
                skipped += 1
                continue
            n_items = max(n_items, int(seq.max()))
            user_ids.append(user)
            items.append(seq)
    if not first_line:
        raise DataError(f"{file_label(path)}: the file is empty (expected lines 'user_id item_id item_id ...')")
    if not items:
        raise DataError(
            f"{file_label(path)}: all {skipped} users have fewer than {MIN_INTERACTIONS} interactions; "
            "nothing to train on"
        )
    return Sequences(user_ids, items, n_items, path, digest.hexdigest(), skipped)
