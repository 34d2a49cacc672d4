"""Interaction sequences (docs/protocol.md), one module per concern:

* :mod:`~mstein_fast.data.io`: sequence files (``user_id item_id ...``): :func:`load_sequences`,
  :class:`Sequences`, :class:`DataError`, the id limits;
* :mod:`~mstein_fast.data.split`: the leave-one-out split (:func:`leave_one_out`,
  :class:`LeaveOneOut`, :class:`Ragged`, :func:`left_pad`) and :func:`sample_negatives`;
* :mod:`~mstein_fast.data.prepare`: raw interaction files -> sequence file (:func:`prepare_raw`);
* :mod:`~mstein_fast.data.synthetic`: the built-in synthetic data set (:func:`synthetic_sequences`).

Every name is importable from ``mstein_fast.data`` itself, as before the split. Files are read
through :mod:`mstein_fast.reader` and written through :mod:`mstein_fast.writer`.
"""

from mstein_fast.data.io import (
    MAX_ITEM_ID,
    MAX_USER_ID,
    MIN_INTERACTIONS,
    DataError,
    Sequences,
    UserError,
    load_sequences,
)
from mstein_fast.data.prepare import FORMATS, prepare_raw
from mstein_fast.data.split import LeaveOneOut, Ragged, leave_one_out, left_pad, sample_negatives
from mstein_fast.data.synthetic import synthetic_sequences

__all__ = [
    "FORMATS",
    "MAX_ITEM_ID",
    "MAX_USER_ID",
    "MIN_INTERACTIONS",
    "DataError",
    "LeaveOneOut",
    "Ragged",
    "Sequences",
    "UserError",
    "leave_one_out",
    "left_pad",
    "load_sequences",
    "prepare_raw",
    "sample_negatives",
    "synthetic_sequences",
]
