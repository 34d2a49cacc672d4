"""``evaluate``: the validation and test metrics of a checkpoint the original saved, by our evaluator
on our compat model holding its weights."""

from __future__ import annotations

import json
import os

import torch

from .mapping import load_original_weights, parameter_pairs
from .original import OriginalSide, import_original, original_args


def evaluate_checkpoint(args) -> int:
    """Validation and test metrics of a checkpoint the original saved (its best epoch so far), by
    our evaluator on our compat model holding its weights: the same forward (the transplant check)
    and the original's evaluation rules (compat: MRR over the top 40, the padding item a
    candidate). Its validation numbers must equal the original's log line of that epoch; its test
    numbers are what the original prints once it stops early."""
    from mstein_fast.config import TrainConfig
    from mstein_fast.data import leave_one_out, load_sequences
    from mstein_fast.evaluate import evaluate
    from mstein_fast.models import build_model

    torch.set_num_threads(args.threads)
    original = import_original(args.original, args.original_deps)
    cfg = TrainConfig(model="mstein", compat="original", data=args.data, backend=args.backend, device="cpu").validate()
    data = load_sequences(args.data)
    split = leave_one_out(data, cfg.max_seq_length)
    ours = build_model("mstein", split.n_items, cfg.model_config()).eval()
    side = OriginalSide(original, original_args(cfg, split.n_items, split.n_users))
    pairs = parameter_pairs(ours, side.model)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    load_original_weights(pairs, ours, state)
    result = {"checkpoint": os.path.abspath(args.checkpoint), "valid": evaluate(ours, split, "valid"),
              "test": evaluate(ours, split, "test")}
    print(json.dumps(result, indent=1))
    return 0
