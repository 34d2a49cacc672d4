"""Interaction sequences (docs/protocol.md); the package's modules are split out of here."""

from mstein_fast.data.io import (  # noqa: F401
    MAX_ITEM_ID,
    MAX_USER_ID,
    MIN_INTERACTIONS,
    DataError,
    LeaveOneOut,
    Ragged,
    Sequences,
    UserError,
    leave_one_out,
    left_pad,
    load_sequences,
    prepare_raw,
    sample_negatives,
    synthetic_sequences,
)
