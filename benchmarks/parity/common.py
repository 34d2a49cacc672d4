"""What the harness's commands share: where the repository and the default data lie, its errors,
and the validation metrics compared per epoch."""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "Office_Products.txt"))
# validation metrics kept per epoch in parity_curves.json: ours -> the original's log key
CURVE_METRICS = {"recall@1": "HIT@1", "recall@5": "HIT@5", "recall@10": "HIT@10", "recall@20": "HIT@20",
                 "ndcg@1": "NDCG@1", "ndcg@5": "NDCG@5", "ndcg@10": "NDCG@10", "ndcg@20": "NDCG@20",
                 "mrr@40": "MRR"}
PLOTTED = ("recall@10", "ndcg@10", "mrr@40")


class ParityError(RuntimeError):
    """The harness cannot run (bad checkout, missing module, unmapped parameter, ...)."""


class MappingError(ParityError):
    """Our parameters and the original's do not correspond one to one (a rename on either side?)."""
