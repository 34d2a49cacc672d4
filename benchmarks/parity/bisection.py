"""``bisect``: our compat trainer with parts of the original swapped in (views, negatives, losses,
init, model), for K epochs; where the curves differ, the part whose swap closes the gap is where
the difference lives."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

import torch

from .band import load_curves
from .common import ParityError
from .curves import our_curve
from .mapping import load_original_weights, parameter_pairs
from .original import OriginalSide, import_original, original_args
from .views import original_view_maker

BISECT_PARTS = ("views", "negatives", "losses", "init", "model")


def parse_parts(text: str) -> list[str]:
    """``--swap``'s comma-separated parts (``none`` or empty: none), checked against
    :data:`BISECT_PARTS`; raises ``argparse.ArgumentTypeError`` naming an unknown part."""
    parts = [p.strip() for p in text.split(",") if p.strip() and p.strip() != "none"]
    unknown = [p for p in parts if p not in BISECT_PARTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(BISECT_PARTS)}")
    return sorted(set(parts), key=BISECT_PARTS.index)


def pad_left(x: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, w]`` ids left-padded with 0 to ``[B, width]`` (``w <= width``; the original's inputs
    are always ``max_seq_length`` wide)."""
    if x.shape[1] > width:
        raise ValueError(f"{x.shape[1]} positions do not fit in {width}")
    return x if x.shape[1] == width else torch.nn.functional.pad(x, (width - x.shape[1], 0))


def unpadded_rows(full: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """The item lists of right-aligned ``[B, W]`` rows holding ``lengths[i]`` items each."""
    width = full.shape[1]
    return [full[i, width - int(n):].tolist() if int(n) else [] for i, n in enumerate(lengths.tolist())]


def original_views(maker, full: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Our Augmenter's ``views`` output (``[2B, width]``: every row's first view, then every
    row's second) drawn by the original's dataset code (:func:`original_view_maker`)."""
    pairs = [maker._one_pair_data_augmentation(row) for row in unpadded_rows(full, lengths)]
    views = torch.stack([p[0] for p in pairs] + [p[1] for p in pairs])
    return pad_left(views[:, -width:], width)


def python_negatives(histories: list[set[int]], rng):
    """A stand-in for :func:`mstein_fast.data.sample_negatives` drawing as the original's
    ``utils.neg_sample`` does: per target position ``rng.randint(1, n)`` until the item is not in
    the user's whole sequence (``histories[user]``); 0 at padding targets. The original's range
    also holds its mask id ``n + 1``, which our item tables lack: left out (1 item in ~2400)."""
    def sample(targets, users, user_item_keys, n_items, generator, max_rounds=100):
        """Negatives for ``targets`` (``[B, L]``) of ``users``; the other arguments are the sampler's and unused."""
        out = torch.zeros_like(targets)
        for r, u in enumerate(users.tolist()):
            seen = histories[u]
            for c in (targets[r] > 0).nonzero()[:, 0].tolist():
                item = rng.randint(1, n_items)
                while item in seen:
                    item = rng.randint(1, n_items)
                out[r, c] = item
        return out
    return sample


class OriginalModel(torch.nn.Module):
    """The original's ``DistSAModel`` and loss functions (an :class:`OriginalSide`) behind the
    interface our :class:`mstein_fast.train.Trainer` uses: ``score_items`` (its
    ``dist_predict_full`` on the last position, negated, item 0 included: compat's evaluation),
    and :meth:`step` (``bpr + pvn_weight * pvn + cf_weight * InfoNCE``, as its trainer sums them)."""

    compat = True  # our evaluator then ranks item 0 as the original does
    contrastive = True

    def __init__(self, side: OriginalSide, n_items: int, width: int):
        super().__init__()
        self.side, self.n_items, self.width = side, n_items, width
        self.inner = side.model

    def score_items(self, seqs: torch.Tensor, include_padding: bool = False) -> torch.Tensor:
        """Scores ``[B, n_items]`` (``[B, n_items + 1]`` with the padding item) of the last position of ``seqs``."""
        mean, cov = self.side.encode(pad_left(seqs, self.width))
        dist = self.side.cls.dist_predict_full(self.side.trainer, mean[:, -1, :], cov[:, -1, :])
        return -dist[:, :self.n_items + 1] if include_padding else -dist[:, 1:self.n_items + 1]


class OriginalStep(torch.nn.Module):
    """Our trainer's ``step`` (:class:`mstein_fast.train._TrainStep`'s contract) on :class:`OriginalModel`."""

    def __init__(self, model: OriginalModel, pvn_weight: float, cf_weight: float):
        super().__init__()
        self.model, self.pvn_weight, self.cf_weight = model, pvn_weight, cf_weight

    def forward(self, inputs, targets, negatives, views):
        """``(total, rec, cl)`` of one training batch, as our trainer's step returns them."""
        w, side = self.model.width, self.model.side
        bpr, pvn = side.rec_pieces(pad_left(inputs, w), pad_left(targets, w), pad_left(negatives, w))
        rec = bpr + self.pvn_weight * pvn
        cl = side.cl(pad_left(views, w))
        return rec + self.cf_weight * cl, rec, cl


class OriginalLossesStep(torch.nn.Module):
    """Our trainer's ``step`` with our model's encoder (``encode``, the full computation) and the
    original's loss functions (its trainer's ``bpr_optimization`` and
    ``_one_pair_contrastive_learning`` with its ``WassersteinNCELoss``) reading our item tables."""

    def __init__(self, original: types.SimpleNamespace, model, args: types.SimpleNamespace, pvn_weight: float,
                 cf_weight: float):
        super().__init__()
        self.model, self.width = model, args.max_seq_length
        self.pvn_weight, self.cf_weight = pvn_weight, cf_weight
        device = torch.device("cpu")
        stand_in = types.SimpleNamespace(item_mean_embeddings=model.item_mean, item_cov_embeddings=model.item_cov,
                                         args=args, finetune=lambda seqs: (*model.encode(seqs), None))
        self.trainer = types.SimpleNamespace(model=stand_in, args=args, device=device,
                                             cf_criterion=original.modules.WassersteinNCELoss(args.temperature, device))
        self.cls = original.trainers.CoDistSAModelTrainer

    def forward(self, inputs, targets, negatives, views):
        """``(total, rec, cl)`` of one training batch, as our trainer's step returns them."""
        w = self.width
        mean, cov = self.model.encode(pad_left(inputs, w))
        bpr, _auc, pvn = self.cls.bpr_optimization(self.trainer, mean, cov, pad_left(targets, w), pad_left(negatives, w))
        rec = bpr + self.pvn_weight * pvn
        views = pad_left(views, w)
        b = views.shape[0] // 2
        cl = self.cls._one_pair_contrastive_learning(self.trainer, [views[:b], views[b:]])
        return rec + self.cf_weight * cl, rec, cl


def bisect_command(args) -> int:
    """Our compat trainer with parts of the original swapped in, for K epochs; the curve beside
    the original's of a ``curves`` run (``--against``), for ``band``."""
    import random

    import mstein_fast.train as train_module
    from mstein_fast import backends
    from mstein_fast.config import build_config

    for part in ("losses", "init"):
        if {part, "model"} <= set(args.swap):
            raise ParityError(f"--swap: model already brings the original's {part}; give one of {part}, model")
    against = None
    if args.against is not None:
        against = load_curves(args.against)
        if against["settings"]["seed"] != args.seed:
            raise ParityError(f"{against['path']} is of seed {against['settings']['seed']}, not --seed {args.seed}")
        if len(against["original"]) < args.epochs:
            raise ParityError(f"{against['path']}: the original's curve has {len(against['original'])} epochs, fewer "
                              f"than --epochs {args.epochs}")
    run_dir = os.path.join(args.output, "ours")
    if os.path.exists(run_dir):
        raise ParityError(f"{run_dir} exists: give a new --output")
    original = import_original(args.original, args.original_deps)
    torch.set_num_threads(args.threads)
    values = {"data": args.data, "model": "mstein", "compat": "original", "seed": args.seed, "epochs": args.epochs,
              "patience": args.epochs + 1, "num_threads": args.threads, "device": "cpu", "progress": False}
    if args.no_cpp:  # every op by PyTorch: dropout, the Wasserstein ops, the ranking
        backends._cache["cpp"] = ImportError("turned off by benchmarks.parity bisect --no-cpp")
        values["backend"] = "torch"
    cfg, _ = build_config(None, values)
    os.makedirs(args.output, exist_ok=True)
    trainer = train_module.Trainer(cfg, run_dir)
    rng = random.Random(args.seed)
    swapped = []
    if "views" in args.swap:
        maker = original_view_maker(original, cfg, args.data)
        random.seed(args.seed)  # the original's augmentations draw from the random module itself
        trainer.augmenter.views = lambda full, lengths, g: original_views(maker, full, lengths, cfg.max_seq_length)
        swapped.append("views: the original's RecWithContrastiveLearningDataset")
    if "negatives" in args.swap:
        histories = [{int(t) for t in s} for s in trainer.data.items]
        train_module.sample_negatives = python_negatives(histories, rng)
        swapped.append("negatives: drawn as the original's neg_sample")
    if "losses" in args.swap:
        trainer.step = OriginalLossesStep(original, trainer.model, original_args(cfg, trainer.data.n_items,
                                                                                 trainer.data.n_users),
                                          cfg.pvn_weight, cfg.cf_weight)
        swapped.append("losses: the original's BPR/pvn and InfoNCE functions on our encoder's outputs")
    if "init" in args.swap:
        # the weights the original's DistSAModel gets from its own init code under the seed (as its
        # main.py: set_seed, then the model), copied into our model's parameters in place (the
        # optimizer already holds them)
        torch.manual_seed(args.seed)
        side = OriginalSide(original, original_args(cfg, trainer.data.n_items, trainer.data.n_users))
        pairs = parameter_pairs(trainer.model, side.model)
        load_original_weights(pairs, trainer.model, side.model.state_dict())
        swapped.append("init: the weights of the original's DistSAModel initialised by its own code")
    if "model" in args.swap:
        torch.manual_seed(args.seed)
        side = OriginalSide(original, original_args(cfg, trainer.data.n_items, trainer.data.n_users))
        trainer.model = OriginalModel(side, trainer.data.n_items, cfg.max_seq_length)
        trainer.step = OriginalStep(trainer.model, cfg.pvn_weight, cfg.cf_weight)
        trainer.optimizer = torch.optim.Adam(trainer.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                             betas=(cfg.adam_beta1, cfg.adam_beta2))
        swapped.append("model: the original's DistSAModel, its losses and an Adam on its parameters")
    print(f"bisect, seed {args.seed}, {args.epochs} epochs, our compat trainer with: "
          f"{'; '.join(swapped) or 'nothing swapped'}{'; C++ extension off' if args.no_cpp else ''}", file=sys.stderr)
    t = time.perf_counter()
    try:
        trainer.fit(test=False)
    finally:
        if args.no_cpp:
            backends._cache.pop("cpp", None)
    print(f"{time.perf_counter() - t:.0f} s", file=sys.stderr)
    settings = {**(against["settings"] if against else {"seed": args.seed, "data": os.path.abspath(args.data)}),
                "epochs": args.epochs, "threads": args.threads, "against": against["path"] if against else None,
                "bisect": {"swap": args.swap, "no_cpp": bool(args.no_cpp), "what": swapped}, "torch": torch.__version__}
    result = {"original": against["original"][:args.epochs] if against else [], "ours_compat": our_curve(run_dir)}
    with open(os.path.join(args.output, "parity_curves.json"), "w", encoding="utf-8") as fh:
        json.dump({"settings": settings, **result}, fh, indent=1)
        fh.write("\n")
    print(f"wrote {os.path.join(args.output, 'parity_curves.json')}"
          + (" (band reads it)" if against else " (without --against: no original curve, band cannot read it)"))
    return 0

