"""Parity between this project's MStein in ``compat = "original"`` mode and the original research
code (github zfan20/MStein, a checkout the user gives with ``--original DIR``). The checks:

``transplant`` (seconds): one process builds the original's model (``models.DistSAModel`` of DIR)
and ours (``build_model("mstein", ...)`` with ``compat="original"``), copies our weights into the
original's (:func:`parameter_pairs`), takes ONE training batch of the data (the first ``--users``
users: inputs ``s[:-3]`` left-padded to 50, targets ``s[1:-2]``, one fixed negative per position,
two fixed augmented views drawn with ``mstein_fast.augment.Augmenter``; both sides get the same
tensors) and compares, as ``max |ours - original| / max |original|`` per tensor:

- the encoder's outputs (mean and cov) on the batch and on the views;
- the loss pieces: BPR, pvn, the Wasserstein InfoNCE between the views, and the total
  ``bpr + pvn_weight * pvn + cf_weight * cl`` (the original's from its trainer's own functions,
  ``CoDistSAModelTrainer.bpr_optimization`` and ``._one_pair_contrastive_learning``, called unbound
  with a small stand-in for the trainer; ours from ``model.rec_loss`` and ``model.contrastive_loss``);
- the gradient of every parameter, for four objectives: ``bpr``, ``bpr+pvn`` (pvn weighted 1),
  ``cl`` and ``total`` (ours: ``rec_loss`` with the model's ``pvn_weight`` set to 0, then 1, for the
  first two). A parameter that one side never uses has gradient zero; the original's ``qkv`` pieces
  (``mean_query`` / ``mean_key`` / ``mean_value``, ...) are compared with the rows of our fused
  ``mean_qkv`` / ``cov_qkv``; the original's item tables hold one more row than ours (its mask
  id, ``max_item + 1``, never used by MStein): our gradient is compared with zero there.

Both models run in train mode with every dropout probability 0 (so that train-only code paths
run, deterministically), on the CPU. Tables: float64 with our ``torch`` backend (the math: the
C++ kernels are float32 only, so ``cpp`` is skipped there), then float32 with each backend of
``--backends`` (default ``torch,cpp``; what training runs). Exit status 1 when any error exceeds
``--rtol`` (default 1e-5) in float64 or ``--rtol-float32`` (default 1e-3) in float32, 2 when the
harness cannot run, 0 otherwise. Why two tolerances: in float32 the two codes round differently
(the original expands W2 as ``|m1|^2 + |m2|^2 - 2 m1.m2``, the InfoNCE at temperature 1e-6 has
logits of order 1e6 / (1 + W)); measured on Office's first 256 users: about 2e-5 on the BPR and
pvn gradients and 2e-4 on the InfoNCE's, against about 6e-8 at most in float64 (on the query/key
gradients of the InfoNCE: its logits are of order 1e6, and the masked scores of the padding
queries, -(2**32) + W, keep few digits of W). The original's own float32 result is no closer to its
float64 one (up to 1e-2 on those gradients: in float32 the masked scores lose W entirely), so
float32 alone cannot check the math. ``--checkpoint FILE`` (also for ``dropout``) starts both models
from trained weights, a ``last.pt``/``best.pt`` of a ``--compat original`` run, instead of the seed's
init: float64 still agrees to ~1e-13 there, while float32 drifts further (the InfoNCE of a trained
model under the original's padding semantics is mostly rounding noise in float32, on both codes:
its float32 gradients differ from their own float64 ones by about their size), so the float32
tolerance only holds at init.

``evaluate`` (seconds): the validation and test metrics of a checkpoint the original saved (its
best epoch so far; it writes one at each better validation epoch), computed by our evaluator on our
compat model holding its weights: the test numbers of a run of the original that has not stopped
yet (it tests only once it stops), and a check of the evaluation rules (the validation numbers must
equal its own log line for that epoch).

``curves`` (minutes): the original's ``main.py`` with the official MStein command
(``_original.OFFICIAL_ARGS``, ``--seed S``) for ``--epochs K``, then ``mstein-fast train --model
mstein --compat original`` with the same epochs, seed and threads (and with ``--also-default`` a
second run of ours without ``--compat``), one after the other; reads the validation metrics per
epoch (ours: ``metrics.jsonl`` of the run directory; the original: its ``{'Epoch': ...}`` log
lines, whose ``HIT@k`` is our ``recall@k`` and whose ``MRR`` is over its top-40 list, our
``mrr@40``) and writes ``OUTPUT/parity_curves.json`` (``{"settings": ..., "original": [...],
"ours_compat": [...], "ours_default": [...]}``, one dict per epoch) and ``OUTPUT/parity_curves.png``
(recall@10, ndcg@10 and mrr@40 per epoch). Run directories: ``OUTPUT/original`` (its log and
checkpoint), ``OUTPUT/ours``, ``OUTPUT/ours_default``. ``--original-log FILE`` takes the original's
curve from a saved stdout of its ``main.py`` (e.g. a full run to its early stopping in the
background, same command and seed) instead of running it again. ``--original-float64`` runs the
original with torch's default dtype float64 (its shims set it; a diagnostic of what its float32
rounding does, about 4x slower here).

    python benchmarks/parity.py --original /path/to/MStein transplant
    python benchmarks/parity.py --original /path/to/MStein transplant --dtypes float32 --backends cpp --json t.json
    python benchmarks/parity.py --original /path/to/MStein --seed 3 transplant --checkpoint run/last.pt --dtypes float64
    python benchmarks/parity.py --original /path/to/MStein curves --epochs 20 --output parity-out --also-default
    python benchmarks/parity.py band out-s1 out-s2 out-s3 --output band   # curves runs with --seed 1, 2, 3
    python benchmarks/parity.py --original /path/to/MStein views --draws 5
    python benchmarks/parity.py --original /path/to/MStein dropout --draws 30 --dtype float32 --backend cpp
    python benchmarks/parity.py --original /path/to/MStein --seed 1 bisect --swap model --epochs 30 \
        --against out-s1 --output bisect-model-s1    # then: band bisect-model-s1 bisect-model-s2 ...

``dropout`` (a minute or two): the transplant's batch and weights with the official dropout on,
``--draws`` training steps a side (``torch.manual_seed`` per draw, the weights never updated): the
loss pieces' means compared by a z-test, and each parameter's gradient of the total by
:func:`mean_shift` (about 1 when both sides draw from one distribution) and its noise by
:func:`spread_ratio` (about 1 likewise): what a dropout in another place, with another scale, or
with masks shared or correlated where the original draws them apart, would change, and what the
dropout-free transplant cannot see. Exit status 1 when a loss's z exceeds ``--z-max`` (4), a mean
shift ``--shift-max`` (2), or a spread ratio lies outside ``1/--spread-max .. --spread-max`` (1.5).

``views`` (a minute): the augmentations' distribution over a whole data set, which a one-batch
check cannot show: two views of every training input drawn ``--draws`` times by the original's
``datasets.RecWithContrastiveLearningDataset`` (its ``Random`` augmentation with the official
settings and its own ItemCF-IUF model: the warm-up) and by our ``Augmenter`` in compat mode; per
view, averaged over the data (:func:`view_stats`): non-padding items, zeros inside, items not in the
input, first and last item kept; a table with each side's mean and spread over the draws and
``z = |difference| / standard error``; exit status 1 when any z exceeds ``--z-max`` (default 4).

``bisect`` (minutes): our compat trainer (``mstein_fast.train.Trainer``: its epochs, batches,
seeds, optimizer loop and evaluator) for ``--epochs K`` with parts of the original swapped in,
``--swap`` a comma-separated list of: ``views`` (the augmented views drawn by the original's
dataset code, :func:`original_view_maker`, Python's ``random``), ``negatives`` (drawn as its
``neg_sample``, :func:`python_negatives`), ``losses`` (its BPR/pvn and InfoNCE functions on our
encoder's outputs: :class:`OriginalLossesStep`), ``init`` (our model, starting from the weights the
original's ``DistSAModel`` gets from its own init code under the seed), ``model`` (its ``DistSAModel`` initialised by its own
code, its BPR/pvn and InfoNCE functions, an Adam on its parameters: :class:`OriginalModel`); and
``--no-cpp``: our C++ extension off (PyTorch's dropout, Wasserstein ops and ranking). Where the
compat curves lag the original's, the part whose swap closes the gap is where the difference
lives, provided both sides start from the same init draws: ``model`` brings the original's draws
with it, every other part keeps ours, and over the first ~30 epochs the curves follow the init draw
closely (2026-12-04: the whole "lag" of seeds 1-3 was that; compare with and without ``init``). ``--against CURVES`` (optional): a ``curves`` run of the same seed, whose original curve is copied into
``OUTPUT/parity_curves.json`` beside the new run's (as ``ours_compat``), so that ``band`` reads
bisect outputs as it reads curves outputs. Run directory: ``OUTPUT/ours``.

``band`` (seconds; neither the original nor the data needed): the original's seed-to-seed band
against our compat curves, from ``curves`` runs with different ``--seed`` (:func:`seed_band`):
``OUTPUT/seed_band.json`` (per epoch and metric: the original's min / max / mean / std over its
seeds, ours per seed and their mean) and ``OUTPUT/seed_band.png`` (the band shaded, our curves over
it), and a table: the fraction of epochs with our mean within the band, the fraction of our (seed,
epoch) points within it next to the fraction expected if ours were draws from the original's own
distribution ((n - 1) / (n + 1) for n seeds: 50% for three), the mean gap and the seed stds.

Nothing of the original is copied here: its modules are imported at run time from DIR
(``transplant``, ``dropout``, ``views``, ``bisect``) or its ``main.py`` is run in a subprocess (``curves``, by
``_original.py``). It needs numpy, scipy, tqdm and torch; scipy (imported by its ``utils.py``) may come from a directory given
with ``--original-deps DIR`` (put on ``sys.path`` / the subprocess's ``PYTHONPATH``). The only run-time
patches: numpy's removed aliases (``np.float``, ``np.int``, ...) are restored, and an empty module
stands in for ``gensim`` (imported, never used by the MStein command).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import json
import math
import os
import re
import subprocess
import sys
import time
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "Office_Products.txt"))
ORIGINAL_MODULES = ("modules", "models", "utils", "data_augmentation", "datasets", "trainers")
NUMPY_ALIASES = (("float", float), ("int", int), ("bool", bool), ("object", object), ("str", str),
                 ("complex", complex), ("long", int))
# the original's parameters that MStein never uses (no counterpart in ours)
IGNORED_ORIGINAL = ("user_margins.weight",)
OBJECTIVES = ("bpr", "bpr+pvn", "cl", "total")
# validation metrics kept per epoch in parity_curves.json: ours -> the original's log key
CURVE_METRICS = {"recall@1": "HIT@1", "recall@5": "HIT@5", "recall@10": "HIT@10", "recall@20": "HIT@20",
                 "ndcg@1": "NDCG@1", "ndcg@5": "NDCG@5", "ndcg@10": "NDCG@10", "ndcg@20": "NDCG@20",
                 "mrr@40": "MRR"}
PLOTTED = ("recall@10", "ndcg@10", "mrr@40")


class ParityError(RuntimeError):
    """The harness cannot run (bad checkout, missing module, unmapped parameter, ...)."""


class MappingError(ParityError):
    """Our parameters and the original's do not correspond one to one (a rename on either side?)."""


def load_original_helper():
    """``benchmarks/_original.py`` (runs the original's main.py), imported from beside this script."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    return importlib.import_module("_original")


# -- the original's modules, in this process ------------------------------------------------------
def import_original(directory: str, deps: list[str]) -> types.SimpleNamespace:
    """The original's ``modules``, ``models`` and ``trainers`` imported from ``directory`` (with the
    numpy aliases restored and an empty ``gensim`` if none is installed)."""
    directory = load_original_helper().check_checkout(directory)
    for name, value in NUMPY_ALIASES:
        if name not in np.__dict__:
            setattr(np, name, value)
    if "asfarray" not in np.__dict__:
        np.asfarray = lambda a, dtype=float: np.asarray(a, dtype=dtype)
    try:
        importlib.import_module("gensim")
    except ImportError:
        sys.modules["gensim"] = types.ModuleType("gensim", "empty stand-in: the MStein command never uses gensim")
    for name in ORIGINAL_MODULES:  # a module of the same name imported from elsewhere would be taken instead
        module = sys.modules.get(name)
        if module is not None and os.path.dirname(os.path.abspath(getattr(module, "__file__", "") or "")) != directory:
            raise ParityError(f"a module called {name!r} is already imported from {getattr(module, '__file__', '?')}; "
                              f"the original's {name}.py cannot be imported in this process")
    for path in [directory, *reversed([os.path.abspath(d) for d in deps])]:
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        modules = importlib.import_module("modules")
        models = importlib.import_module("models")
        trainers = importlib.import_module("trainers")
    except ImportError as err:
        raise ParityError(f"cannot import the original code from {directory}: {err}; it needs numpy, scipy, tqdm "
                          f"and torch (give a directory holding a missing package with --original-deps DIR)") from err
    for needed, owner in (("DistSAModel", models), ("WassersteinNCELoss", modules), ("CoDistSAModelTrainer", trainers)):
        if not hasattr(owner, needed):
            raise ParityError(f"{owner.__file__} has no {needed}: not the MStein code this harness knows")
    return types.SimpleNamespace(modules=modules, models=models, trainers=trainers, directory=directory)


def original_args(cfg, n_items: int, n_users: int) -> types.SimpleNamespace:
    """The argument namespace the original's model and trainer functions read."""
    return types.SimpleNamespace(
        item_size=n_items + 2,  # main.py: max_item + 2 (ids 0..max_item and its mask id max_item + 1)
        mask_id=n_items + 1, num_users=n_users, hidden_size=cfg.hidden_size, max_seq_length=cfg.max_seq_length,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        hidden_act="gelu", hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob, initializer_range=cfg.initializer_range,
        distance_metric="wasserstein", kernel_param=1.0, pvn_weight=cfg.pvn_weight, cf_weight=cfg.cf_weight,
        temperature=cfg.temperature, cuda_condition=False, no_cuda=True,
    )


class OriginalSide:
    """The original's model and the bits of its trainer that compute the MStein losses."""

    def __init__(self, original: types.SimpleNamespace, args: types.SimpleNamespace):
        self.args = args
        self.model = original.models.DistSAModel(args)
        device = torch.device("cpu")
        # what CoDistSAModelTrainer's bpr_optimization / _one_pair_contrastive_learning read from self
        self.trainer = types.SimpleNamespace(model=self.model, args=args, device=device,
                                             cf_criterion=original.modules.WassersteinNCELoss(args.temperature, device))
        self.cls = original.trainers.CoDistSAModelTrainer

    def encode(self, seqs):
        mean, cov, _ = self.model.finetune(seqs)
        return mean, cov

    def rec_pieces(self, seqs, targets, negatives):
        mean, cov = self.encode(seqs)
        bpr, _auc, pvn = self.cls.bpr_optimization(self.trainer, mean, cov, targets, negatives)
        return bpr, pvn

    def cl(self, views):
        b = views.shape[0] // 2
        return self.cls._one_pair_contrastive_learning(self.trainer, [views[:b], views[b:]])


class OursSide:
    """Our model through its public methods."""

    def __init__(self, model):
        self.model = model

    def encode(self, seqs):
        return self.model.encode(seqs)

    def rec_pieces(self, seqs, targets, negatives):
        """(bpr, pvn) values, detached (``rec_loss`` reports them so)."""
        _, parts = self.model.rec_loss(seqs, targets, negatives)
        return parts["bpr"], parts["pvn"]

    @contextlib.contextmanager
    def pvn_weight(self, weight: float):
        saved = self.model.pvn_weight
        self.model.pvn_weight = weight
        try:
            yield
        finally:
            self.model.pvn_weight = saved

    def cl(self, views):
        return self.model.contrastive_loss(views)


# -- parameter mapping ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Pair:
    ours: str
    original: str
    rows: tuple[int, int] | None = None  # rows [lo, hi) of our tensor (a piece of a fused qkv)
    extra_rows: bool = False  # the original's tensor may have more rows than ours (its item tables)


def _pairs_by_name(h_of: dict[str, int], layers: int) -> list[Pair]:
    pairs = [Pair("item_mean.weight", "item_mean_embeddings.weight", extra_rows=True),
             Pair("item_cov.weight", "item_cov_embeddings.weight", extra_rows=True),
             Pair("position_mean.weight", "position_mean_embeddings.weight"),
             Pair("position_cov.weight", "position_cov_embeddings.weight")]
    pairs += [Pair(f"embed_norm.{p}", f"LayerNorm.{p}") for p in ("weight", "bias")]
    for i in range(layers):
        ours, theirs = f"attention.{i}", f"item_encoder.layer.{i}"
        for stream in ("mean", "cov"):
            for p in ("weight", "bias"):
                name = f"{ours}.{stream}_qkv.{p}"
                h = h_of.get(name, 0)
                pairs += [Pair(name, f"{theirs}.attention.{stream}_{part}.{p}", (j * h, (j + 1) * h))
                          for j, part in enumerate(("query", "key", "value"))]
                pairs.append(Pair(f"{ours}.{stream}_dense.{p}", f"{theirs}.attention.{stream}_dense.{p}"))
                for mine, orig in (("dense_1", "dense_1"), ("dense_2", "dense_2"), ("norm", "LayerNorm")):
                    pairs.append(Pair(f"{stream}_ffn.{i}.{mine}.{p}", f"{theirs}.{stream}_intermediate.{orig}.{p}"))
        pairs += [Pair(f"{ours}.norm.{p}", f"{theirs}.attention.LayerNorm.{p}") for p in ("weight", "bias")]
    return pairs


def parameter_pairs(ours: torch.nn.Module, original: torch.nn.Module) -> list[Pair]:
    """Every parameter of our STOSA/MStein model with its counterpart(s) in the original's
    ``DistSAModel``; raises :class:`MappingError` naming the parameters that are missing on either
    side, left unmapped, or of another shape (so that a rename on either side is caught)."""
    mine = dict(ours.named_parameters())
    theirs = dict(original.named_parameters())
    layer_re_ours, layer_re_theirs = re.compile(r"attention\.(\d+)\."), re.compile(r"item_encoder\.layer\.(\d+)\.")
    layers_ours = {int(m.group(1)) for n in mine if (m := layer_re_ours.match(n))}
    layers_theirs = {int(m.group(1)) for n in theirs if (m := layer_re_theirs.match(n))}
    if layers_ours != layers_theirs:
        raise MappingError(f"layer count differs: ours has attention layers {sorted(layers_ours)}, the original "
                           f"item_encoder.layer {sorted(layers_theirs)}")
    h_of = {n: p.shape[0] // 3 for n, p in mine.items() if n.endswith(("_qkv.weight", "_qkv.bias"))}
    pairs = _pairs_by_name(h_of, len(layers_ours))
    problems = []
    missing_ours = sorted({p.ours for p in pairs} - set(mine))
    missing_theirs = sorted({p.original for p in pairs} - set(theirs))
    if missing_ours:
        problems.append(f"not in our model: {', '.join(missing_ours)}")
    if missing_theirs:
        problems.append(f"not in the original's model: {', '.join(missing_theirs)}")
    unmapped_ours = sorted(set(mine) - {p.ours for p in pairs})
    unmapped_theirs = sorted(set(theirs) - {p.original for p in pairs} - set(IGNORED_ORIGINAL))
    if unmapped_ours:
        problems.append(f"our parameters without a counterpart: {', '.join(unmapped_ours)}")
    if unmapped_theirs:
        problems.append(f"the original's parameters without a counterpart: {', '.join(unmapped_theirs)}")
    if not problems:
        for pair in pairs:
            a, b = _our_piece(mine[pair.ours], pair), theirs[pair.original]
            rows_ok = a.shape[0] <= b.shape[0] if pair.extra_rows else a.shape[0] == b.shape[0]
            if a.dim() != b.dim() or a.shape[1:] != b.shape[1:] or not rows_ok:
                problems.append(f"shape of {pair.ours}{_rows_text(pair)} {tuple(a.shape)} vs {pair.original} "
                                f"{tuple(b.shape)}")
        for name, rows in _rows_covered(pairs).items():
            if rows != mine[name].shape[0]:
                problems.append(f"the pieces of {name} cover {rows} of its {mine[name].shape[0]} rows")
    if problems:
        raise MappingError("the parameter mapping ours -> original is broken (renamed parameters? update "
                           "parameter_pairs in benchmarks/parity.py):\n  " + "\n  ".join(problems))
    return pairs


def _rows_covered(pairs: list[Pair]) -> dict[str, int]:
    covered: dict[str, int] = {}
    for pair in pairs:
        if pair.rows is not None:
            covered[pair.ours] = covered.get(pair.ours, 0) + pair.rows[1] - pair.rows[0]
    return covered


def _our_piece(t: torch.Tensor, pair: Pair) -> torch.Tensor:
    return t if pair.rows is None else t[pair.rows[0]:pair.rows[1]]


def _rows_text(pair: Pair) -> str:
    return "" if pair.rows is None else f"[{pair.rows[0]}:{pair.rows[1]}]"


@torch.no_grad()
def copy_weights(pairs: list[Pair], ours: torch.nn.Module, original: torch.nn.Module) -> None:
    """Our weights into the original's (the original's extra item rows keep their values)."""
    mine, theirs = dict(ours.named_parameters()), dict(original.named_parameters())
    for pair in pairs:
        a = _our_piece(mine[pair.ours], pair)
        theirs[pair.original][:a.shape[0]].copy_(a)


# -- one batch ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Batch:
    seqs: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, L]
    negatives: torch.Tensor  # [B, L]
    views: torch.Tensor  # [2B, L]: view A of every row, then view B
    n_items: int
    n_users: int


def make_batch(data_file: str, cfg, users: int, seed: int) -> Batch:
    """The first ``users`` users' training rows, one negative per position and two augmented views
    (ItemCF-IUF similarity of the training sequences), all fixed by ``seed``."""
    from mstein_fast.augment import Augmenter, itemcf_iuf_topk
    from mstein_fast.data import leave_one_out, load_sequences, sample_negatives

    data = load_sequences(data_file)
    split = leave_one_out(data, cfg.max_seq_length)
    rows = torch.arange(min(users, split.n_users))
    g = torch.Generator().manual_seed(seed)
    targets = split.train_targets[rows]
    negatives = sample_negatives(targets, rows, split.user_item_keys, data.n_items, g)
    augmenter = Augmenter(cfg.augment_config())
    augmenter.set_similarity(itemcf_iuf_topk([s[:-3] for s in data.items], data.n_items, augmenter.similar_k, g))
    views = augmenter.views(split.train_full[rows], split.train_lengths[rows], g)
    return Batch(split.train_inputs[rows].clone(), targets, negatives, views, data.n_items, data.n_users)


# -- the comparison ------------------------------------------------------------------------------
def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` (b: the original's); 0 when both are all zero, inf when only b is,
    NaN when either holds a non-finite value."""
    a, b = a.detach().double().reshape(b.shape), b.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.nan
    if a.numel() == 0:
        return 0.0
    num, den = float((a - b).abs().max()), float(b.abs().max())
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}


def _zero(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def _forward_outputs(side, batch: Batch) -> dict:
    """The encoder's mean and cov on the batch and on the views (no gradient)."""
    out = {}
    with torch.no_grad():
        for what, ids in (("seqs", batch.seqs), ("views", batch.views)):
            out[f"encode({what}).mean"], out[f"encode({what}).cov"] = side.encode(ids)
    return out


def original_results(side: OriginalSide, batch: Batch) -> dict:
    """Forward outputs, loss values and the gradients of the four objectives, original side."""
    model, args = side.model, side.args
    out: dict = {"forward": _forward_outputs(side, batch), "loss": {}, "grad": {}}
    for objective in OBJECTIVES:
        _zero(model)
        bpr, pvn = side.rec_pieces(batch.seqs, batch.targets, batch.negatives)
        cl = side.cl(batch.views) if objective in ("cl", "total") else None
        if objective == "bpr":
            loss = bpr
        elif objective == "bpr+pvn":
            loss = bpr + pvn
        elif objective == "cl":
            loss = cl
        else:
            loss = bpr + args.pvn_weight * pvn + args.cf_weight * cl
            out["loss"] = {"bpr": bpr.detach(), "pvn": pvn.detach(), "cl": cl.detach(), "total": loss.detach()}
        loss.backward()
        out["grad"][objective] = _grads(model)
    _zero(model)
    return out


def our_results(side: OursSide, batch: Batch, cfg) -> dict:
    """The same as :func:`original_results`, our side."""
    model = side.model
    out: dict = {"forward": _forward_outputs(side, batch), "loss": {}, "grad": {}}
    for objective in OBJECTIVES:
        _zero(model)
        if objective == "bpr":
            with side.pvn_weight(0.0):
                loss, _ = model.rec_loss(batch.seqs, batch.targets, batch.negatives)
        elif objective == "bpr+pvn":
            with side.pvn_weight(1.0):
                loss, _ = model.rec_loss(batch.seqs, batch.targets, batch.negatives)
        elif objective == "cl":
            loss = side.cl(batch.views)
        else:
            rec, parts = model.rec_loss(batch.seqs, batch.targets, batch.negatives)
            cl = side.cl(batch.views)
            loss = rec + cfg.cf_weight * cl
            out["loss"] = {"bpr": parts["bpr"], "pvn": parts["pvn"], "cl": cl.detach(), "total": loss.detach()}
        loss.backward()
        out["grad"][objective] = _grads(model)
    _zero(model)
    return out


def compare(pairs: list[Pair], ours: dict, theirs: dict) -> list[tuple[str, list[float], str]]:
    """Rows ``(label, [errors], original's name)``: forward and loss rows have one error, gradient
    rows one per objective."""
    rows: list[tuple[str, list[float], str]] = []
    for name, b in theirs["forward"].items():
        rows.append((f"forward {name}", [rel_error(ours["forward"][name], b)], ""))
    for name, b in theirs["loss"].items():
        rows.append((f"loss {name}", [rel_error(ours["loss"][name], b)], ""))
    for pair in pairs:
        errors = []
        for objective in OBJECTIVES:
            a = _our_piece(ours["grad"][objective][pair.ours], pair)
            b = theirs["grad"][objective][pair.original]
            if a.shape[0] < b.shape[0]:  # the original's extra item rows: ours is zero there
                a = torch.cat([a, a.new_zeros((b.shape[0] - a.shape[0], *a.shape[1:]))])
            errors.append(rel_error(a, b))
        rows.append((f"grad {pair.ours}{_rows_text(pair)}", errors, pair.original))
    return rows


def print_table(title: str, rows: list[tuple[str, list[float], str]], rtol: float) -> int:
    """Print the table; returns the number of errors above ``rtol`` (NaN counts as above)."""
    width = max(len(label) for label, _, _ in rows) + 2
    print(f"\n{title}")
    bad = 0
    header = None
    for label, errors, original_name in rows:
        kind = "grad" if original_name else "value"
        if kind != header:
            header = kind
            columns = OBJECTIVES if kind == "grad" else ("rel.error",)
            print(f"{'gradient of ... (ours)' if kind == 'grad' else 'value':{width}}"
                  + "".join(f"{c:>10}" for c in columns) + ("  original" if kind == "grad" else ""))
        over = [not (e <= rtol) for e in errors]
        bad += sum(over)
        print(f"{label:{width}}" + "".join(f"{e:10.1e}" for e in errors) + (f"  {original_name}" if original_name else "")
              + ("  <-- over rtol" if any(over) else ""))
    return bad


def twin_models(original: types.SimpleNamespace, cfg, batch: Batch, dtype: torch.dtype, seed: int,
                checkpoint: str | None = None):
    """Our MStein model (``cfg``, initialised by ``seed``, or holding the weights of ``checkpoint``,
    a ``--compat original`` run's ``last.pt``/``best.pt``) and the original's ``DistSAModel`` holding
    the same weights, both in ``dtype`` and train mode: ``(ours, OriginalSide, pairs)``."""
    from mstein_fast.models import build_model

    torch.manual_seed(seed)
    model = build_model("mstein", batch.n_items, cfg.model_config()).to(dtype).train()
    if checkpoint is not None:
        load_trained_weights(model, checkpoint, batch.n_items)
    side = OriginalSide(original, original_args(cfg, batch.n_items, batch.n_users))
    side.model.to(dtype).train()
    pairs = parameter_pairs(model, side.model)
    copy_weights(pairs, model, side.model)
    return model, side, pairs


def load_trained_weights(model: torch.nn.Module, path: str, n_items: int) -> int:
    """The model state of our checkpoint ``path`` into ``model`` (its dtype kept); the checkpoint must
    be of a ``--compat original`` MStein run on data with ``n_items`` items. Returns its epoch."""
    from mstein_fast.checkpoint import load_checkpoint, load_model_state

    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    if cfg.model != "mstein" or cfg.compat != "original" or ckpt["n_items"] != n_items:
        raise ParityError(f"{path}: a checkpoint of model {cfg.model!r}, compat {cfg.compat!r}, {ckpt['n_items']} "
                          f"items; the parity checks need an MStein --compat original run on these data "
                          f"({n_items} items)")
    dtype = next(model.parameters()).dtype
    load_model_state(model, {k: v.to(dtype) if v.is_floating_point() else v for k, v in ckpt["model"].items()},
                     ckpt["path"])
    print(f"weights: {ckpt['path']} (epoch {ckpt['epoch']})")
    return ckpt["epoch"]


def transplant(args) -> int:
    from mstein_fast.config import TrainConfig

    torch.set_num_threads(args.threads)
    original = import_original(args.original, args.original_deps)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        print("this CPU cannot flush denormals", file=sys.stderr)
    base = {"model": "mstein", "compat": "original", "data": args.data, "seed": args.seed,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "device": "cpu"}
    cfg = TrainConfig(**base, backend="torch").validate()
    batch = make_batch(args.data, cfg, args.users, args.seed)
    print(f"batch: the first {batch.seqs.shape[0]} users of {os.path.basename(args.data)} ({batch.n_items} items), "
          f"{int((batch.targets > 0).sum())} target positions, views {tuple(batch.views.shape)}; train mode, every "
          f"dropout 0; original code {original.directory}")
    print("errors: max |ours - original| / max |original| per tensor; gradients of the objectives bpr, bpr+pvn "
          "(pvn weighted 1), cl (the InfoNCE) and total (bpr + pvn_weight pvn + cf_weight cl)")
    bad = 0
    for dtype_name in args.dtypes:
        dtype = {"float32": torch.float32, "float64": torch.float64}[dtype_name]
        rtol = args.rtol if dtype == torch.float64 else args.rtol_float32
        theirs = None
        for backend in args.backends:
            if backend == "cpp" and dtype == torch.float64 and "torch" in args.backends:
                print("\n(float64, backend cpp: skipped, the C++ kernels are float32 only and fall back to torch's ops)")
                continue
            cfg = TrainConfig(**base, backend=backend).validate()
            model, side, pairs = twin_models(original, cfg, batch, dtype, args.seed, args.checkpoint)
            if theirs is None:  # the same weights for every backend: the original runs once per dtype
                t = time.perf_counter()
                theirs = original_results(side, batch)
                print(f"original ({dtype_name}): {time.perf_counter() - t:.1f} s", file=sys.stderr)
            t = time.perf_counter()
            ours = our_results(OursSide(model), batch, cfg)
            print(f"ours ({backend}, {dtype_name}): {time.perf_counter() - t:.1f} s", file=sys.stderr)
            rows = compare(pairs, ours, theirs)
            title = f"== {dtype_name}: ours (compat=original, backend={backend}) vs the original, rtol {rtol:g} =="
            bad += print_table(title, rows, rtol)
            losses = ", ".join(f"{k} {float(v):.7g} / {float(ours['loss'][k]):.7g}" for k, v in theirs["loss"].items())
            print(f"loss values, original / ours: {losses}")
            if args.json:
                _append_json(args.json, {
                    "backend": backend, "dtype": dtype_name, "users": int(batch.seqs.shape[0]), "seed": args.seed,
                    "rtol": rtol, "objectives": list(OBJECTIVES),
                    "rows": [{"tensor": label, "original": name, "errors": errs} for label, errs, name in rows]})
    print(f"\n{'FAIL' if bad else 'OK'}: {bad} error(s) above the tolerance (rtol {args.rtol:g} in float64, "
          f"{args.rtol_float32:g} in float32)")
    return 1 if bad else 0


def load_original_weights(pairs: list[Pair], ours: torch.nn.Module, state: dict) -> None:
    """The original's saved ``state_dict`` into our model (the reverse of :func:`copy_weights`)."""
    mine = dict(ours.named_parameters())
    missing = sorted({p.original for p in pairs} - set(state))
    if missing:
        raise ParityError(f"the checkpoint has no {', '.join(missing[:3])}: not a CoDistSAModel state_dict")
    with torch.no_grad():
        for pair in pairs:
            piece = _our_piece(mine[pair.ours], pair)
            piece.copy_(state[pair.original][:piece.shape[0]].to(piece.dtype))


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


def _append_json(path: str, record: dict) -> None:
    records = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            records = json.load(fh)
    records.append(record)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(records, fh, indent=1, default=float)
        fh.write("\n")


# -- curves ----------------------------------------------------------------------------------------
def original_curve(lines: list[str]) -> list[dict]:
    """Per epoch (1-based) the validation metrics of the original's ``{'Epoch': e, ...}`` lines (a
    finished run's last two, ``{'Epoch': 'best', ...}``, the best checkpoint's validation and test
    lines, are no epochs: skipped)."""
    helper = load_original_helper()
    curve = []
    for line in lines:
        if not line.startswith(helper.VALID_MARK):
            continue
        try:
            record = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError):
            raise ParityError(f"cannot read the original's validation line {line[:100]!r}") from None
        if record.get("Epoch") == "best":
            continue
        curve.append({"epoch": int(record["Epoch"]) + 1,
                      **{ours: float(record[key]) for ours, key in CURVE_METRICS.items() if key in record}})
    return curve


# a time stamp a logging pipe may have put before each line: "<seconds> ", "HH:MM:SS " or
# "YYYY-MM-DD HH:MM:SS "
_STAMP = re.compile(r"^(?:\d+(?:\.\d+)?|(?:\d{4}-\d{2}-\d{2}[ T])?\d{2}:\d{2}:\d{2}(?:\.\d+)?) ")


def read_original_log(path: str) -> list[str]:
    """The lines of a saved stdout of the original's ``main.py`` (the official command, the same
    seed), each optionally prefixed by a time stamp ``<seconds> ``, ``HH:MM:SS `` or
    ``YYYY-MM-DD HH:MM:SS `` (as written by a logging pipe)."""
    if not os.path.isfile(path):
        raise ParityError(f"{path}: no such file")
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [_STAMP.sub("", line.rstrip("\n"), count=1) for line in fh]


def our_curve(run_dir: str) -> list[dict]:
    """Per epoch the validation metrics of one of our runs (``metrics.jsonl``)."""
    curve = []
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                curve.append({"epoch": record["epoch"],
                              **{k: float(record["valid"][k]) for k in CURVE_METRICS if k in record["valid"]}})
    return curve


def our_command(args, run_dir: str, compat: bool) -> list[str]:
    cmd = [sys.executable, "-m", "mstein_fast", "train", "--data", args.data, "--model", "mstein",
           "--epochs", str(args.epochs), "--patience", str(args.epochs + 1), "--seed", str(args.seed),
           "--num-threads", str(args.threads), "--device", "cpu", "--no-progress", "--output", run_dir]
    if compat:
        cmd[cmd.index("--epochs"):cmd.index("--epochs")] = ["--compat", "original"]
    return cmd


def run_ours(args, run_dir: str, compat: bool, env: dict) -> list[dict]:
    cmd = our_command(args, run_dir, compat)
    print(f"[ours] {' '.join(cmd)}", file=sys.stderr)
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, check=False)
    if done.returncode:
        raise ParityError(f"our trainer failed (exit status {done.returncode}): {' '.join(cmd)}")
    print(f"[ours] {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return our_curve(run_dir)


def plot_curves(curves: dict[str, list[dict]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(5 * len(PLOTTED), 4))
    for ax, metric in zip(axes, PLOTTED):
        for label, curve in curves.items():
            ax.plot([r["epoch"] for r in curve], [r[metric] for r in curve], marker="." if len(curve) < 30 else None,
                    label=label)
        ax.set_title(f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves(args) -> int:
    helper = load_original_helper()
    directory = helper.check_checkout(args.original)
    out = os.path.abspath(args.output)
    runs = {"ours_compat": os.path.join(out, "ours")}
    if args.also_default:
        runs["ours_default"] = os.path.join(out, "ours_default")
    for run_dir in [os.path.join(out, "original"), *runs.values()]:
        if os.path.isdir(run_dir) and os.listdir(run_dir):
            raise ParityError(f"{run_dir} is not empty: choose another --output")
    os.makedirs(os.path.join(out, "original"), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))  # the original's child
    if args.original_deps:
        os.environ["PYTHONPATH"] = os.pathsep.join([os.path.abspath(d) for d in args.original_deps]
                                                   + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    work = os.path.join(out, "original")
    if args.original_log:  # a finished (or running) run of the original: its first K validation lines
        lines = read_original_log(args.original_log)
        print(f"[original] {len(original_curve(lines))} validation lines in {args.original_log}", file=sys.stderr)
    else:
        shims, data_dir, name = helper.prepare(work, args.data, True, args.threads)
        if args.original_float64:  # a diagnostic: its float32 rounding out of the picture
            with open(os.path.join(shims, "sitecustomize.py"), "a", encoding="utf-8") as fh:
                fh.write("\n_torch.set_default_dtype(_torch.float64)  # parity.py curves --original-float64\n")
        python = args.original_python or sys.executable
        helper.check_python(python, shims)
        print(f"[original] {directory}, {args.epochs} epoch(s), seed {args.seed}, {args.threads} thread(s)",
              file=sys.stderr)
        t = time.perf_counter()
        run = helper.run(directory, work, shims, data_dir, name, args.epochs, python=python, extra=[f"--seed={args.seed}"],
                         echo=lambda line: print(f"[original] {line[:100]}", file=sys.stderr))
        print(f"[original] {time.perf_counter() - t:.0f} s", file=sys.stderr)
        lines = run.lines
    result = {"original": original_curve(lines)[:args.epochs]}
    if len(result["original"]) < args.epochs:
        raise ParityError(f"the original's log has {len(result['original'])} validation lines, fewer than --epochs "
                          f"{args.epochs}")
    with open(os.path.join(work, "stdout.txt"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    for key, run_dir in runs.items():
        if key == "ours_compat" and args.ours_run:  # a finished run of ours (same settings): its first K epochs
            result[key] = our_curve(args.ours_run)[:args.epochs]
            if len(result[key]) < args.epochs:
                raise ParityError(f"{args.ours_run} has {len(result[key])} epochs, fewer than --epochs {args.epochs}")
            continue
        result[key] = run_ours(args, run_dir, key == "ours_compat", env)
    settings = {"data": os.path.abspath(args.data), "epochs": args.epochs, "seed": args.seed, "threads": args.threads,
                "original": directory, "original_args": list(helper.OFFICIAL_ARGS) + [f"--seed={args.seed}"],
                "ours_commands": {key: our_command(args, run_dir, key == "ours_compat") for key, run_dir in runs.items()},
                "metrics": {k: f"original's {v}" for k, v in CURVE_METRICS.items()}, "torch": torch.__version__,
                "original_log": args.original_log, "ours_run": args.ours_run,
                "original_float64": bool(args.original_float64)}
    with open(os.path.join(out, "parity_curves.json"), "w", encoding="utf-8") as fh:
        json.dump({"settings": settings, **result}, fh, indent=1)
        fh.write("\n")
    plot_curves(result, os.path.join(out, "parity_curves.png"),
                f"{os.path.basename(args.data)}: original MStein vs mstein-fast (validation, seed {args.seed})")
    for key, curve in result.items():
        last = curve[-1] if curve else {}
        print(f"{key:13} epochs {len(curve):3}  last: " + "  ".join(f"{m} {last.get(m, math.nan):.4f}" for m in PLOTTED))
    print(f"wrote {os.path.join(out, 'parity_curves.json')} and parity_curves.png")
    return 0


# -- dropout ---------------------------------------------------------------------------------------
def _total_and_grads(side, batch: Batch, pvn_weight: float, cf_weight: float, pairs: list[Pair] | None,
                     ours: bool) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One training step's loss pieces and the gradient of its total (the original's names)."""
    model = side.model
    _zero(model)
    if ours:
        rec, parts = model.rec_loss(batch.seqs, batch.targets, batch.negatives)
        cl = side.cl(batch.views)
        loss = rec + cf_weight * cl
        values = {"bpr": float(parts["bpr"]), "pvn": float(parts["pvn"])}
    else:
        bpr, pvn = side.rec_pieces(batch.seqs, batch.targets, batch.negatives)
        cl = side.cl(batch.views)
        loss = bpr + pvn_weight * pvn + cf_weight * cl
        values = {"bpr": float(bpr.detach()), "pvn": float(pvn.detach())}
    loss.backward()
    values.update(cl=float(cl.detach()), total=float(loss.detach()))
    grads = _grads(model)
    _zero(model)
    if not ours:
        return values, grads
    return values, {pair.original: _our_piece(grads[pair.ours], pair) for pair in pairs}


def z_score(a: np.ndarray, b: np.ndarray) -> float:
    """``|mean(a) - mean(b)|`` over its standard error (two independent samples of draws); 0 when
    both are constant and equal, inf when constant and different."""
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    diff = abs(float(a.mean()) - float(b.mean()))
    return diff / se if se > 0 else (0.0 if diff == 0 else math.inf)


def mean_shift(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|mean(a) - mean(b)|^2 / (sum(var(a) + var(b)) / n)`` over the draws (dim 0, n each): about 1
    when both sides draw from one distribution (the squared distance of the two means against what
    the draws' spread alone gives), much larger for a systematic difference; 0 when both sides
    are constant and equal, inf when constant and different."""
    n = a.shape[0]
    diff = float(((a.mean(0) - b.mean(0)) ** 2).sum())
    noise = float((a.var(0) + b.var(0)).sum()) / n
    if noise == 0:
        return 0.0 if diff == 0 else math.inf
    return diff / noise


def spread_ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    """``sum(var(b)) / sum(var(a))`` over the draws (dim 0): the spread of ``b``'s draws against
    ``a``'s, about 1 when both sides draw from one distribution (a check of the noise, where
    :func:`mean_shift` checks the means); 1 when both are constant, inf when only ``a`` is."""
    va, vb = float(a.var(0).sum()), float(b.var(0).sum())
    if va == 0:
        return 1.0 if vb == 0 else math.inf
    return vb / va


def dropout_command(args) -> int:
    """The transplant with the official dropout on: loss and gradient distributions over draws."""
    from mstein_fast.config import build_config

    torch.set_num_threads(args.threads)
    original = import_original(args.original, args.original_deps)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    values = {"data": args.data, "model": "mstein", "compat": "original", "seed": args.seed, "device": "cpu",
              "backend": args.backend}
    cfg, _ = build_config(None, values)
    batch = make_batch(args.data, cfg, args.users, args.seed)
    model, side, pairs = twin_models(original, cfg, batch, dtype, args.seed, args.checkpoint)
    print(f"batch: the first {batch.seqs.shape[0]} users of {os.path.basename(args.data)}, the same weights on both "
          f"sides, train mode with the official dropout (hidden {cfg.hidden_dropout_prob}, attention "
          f"{cfg.attention_probs_dropout_prob}), {args.dtype}, our backend {args.backend}; {args.draws} dropout draws "
          f"a side (torch.manual_seed per draw)")
    losses = {"original": [], "ours": []}
    grads: dict[str, dict[str, list[torch.Tensor]]] = {"original": {}, "ours": {}}
    mine = dict(model.named_parameters())
    rows = {pair.original: _our_piece(mine[pair.ours], pair).shape[0] for pair in pairs}
    t = time.perf_counter()
    for draw in range(args.draws):
        for who, s, is_ours in (("original", side, False), ("ours", OursSide(model), True)):
            torch.manual_seed(args.seed * 100003 + draw)
            v, g = _total_and_grads(s, batch, cfg.pvn_weight, cfg.cf_weight, pairs, is_ours)
            losses[who].append(v)
            for pair in pairs:  # the original's item tables' extra row (its mask id) is left out
                grads[who].setdefault(pair.original, []).append(g[pair.original][:rows[pair.original]])
    print(f"{time.perf_counter() - t:.0f} s", file=sys.stderr)
    bad = []
    print("| loss piece | original (mean +- std over draws) | ours | z |")
    print("| --- | ---: | ---: | ---: |")
    for key in ("bpr", "pvn", "cl", "total"):
        a = np.array([d[key] for d in losses["original"]])
        b = np.array([d[key] for d in losses["ours"]])
        z = z_score(a, b)
        if z > args.z_max:
            bad.append(f"loss {key}")
        print(f"| {key} | {a.mean():.6g} +- {a.std(ddof=1):.2g} | {b.mean():.6g} +- {b.std(ddof=1):.2g} | {z:.1f} |")
    print(f"\ngradient of the total, per parameter (the original's name): mean shift = |mean_original - mean_ours|^2 "
          f"/ (sum of both variances / draws), about 1 for one distribution; flagged above {args.shift_max:g}; spread "
          f"ratio = sum of our variances / sum of the original's, about 1 for one distribution; flagged outside "
          f"1/{args.spread_max:g}..{args.spread_max:g}")
    print("| parameter | elements | mean shift | spread ratio | |")
    print("| --- | ---: | ---: | ---: | --- |")
    for pair in pairs:
        a = torch.stack(grads["original"][pair.original]).double().flatten(1)
        b = torch.stack(grads["ours"][pair.original]).double().flatten(1)
        shift, spread = mean_shift(a, b), spread_ratio(a, b)
        flag = shift > args.shift_max or not 1 / args.spread_max <= spread <= args.spread_max
        if flag:
            bad.append(pair.original + _rows_text(pair))
        print(f"| {pair.original}{_rows_text(pair)} | {a.shape[1]} | {shift:.2f} | {spread:.2f} | "
              f"{'DIFFERS' if flag else 'ok'} |")
    print(f"\n{'FAIL' if bad else 'OK'}: {len(bad)} of {4 + len(pairs)} differ" + (f": {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


# -- views -----------------------------------------------------------------------------------------
VIEW_STATS = {"items": "non-padding items", "zeros_inside": "zeros after the first item (masked)",
              "new_items": "items not in the input", "last_kept": "last item = the input's last",
              "first_kept": "first item = the input's first (within max_len)"}


def view_stats(views: list[list[int]], inputs: list[list[int]], max_len: int) -> dict[str, float]:
    """Per-view averages over ``views`` (each left-padded to ``max_len``, the augmentation of
    ``inputs[i]``; :data:`VIEW_STATS` names them): what an augmentation's distribution shows over a
    whole data set (insert and crop move ``items``, mask ``zeros_inside``, substitute and insert
    ``new_items``, crop and reorder the kept ends)."""
    if len(views) != len(inputs) or not views:
        raise ParityError(f"{len(views)} views for {len(inputs)} inputs")
    totals = dict.fromkeys(VIEW_STATS, 0.0)
    for view, seq in zip(views, inputs):
        if len(view) != max_len:
            raise ParityError(f"a view of length {len(view)}, not max_len {max_len}")
        start = next((i for i, t in enumerate(view) if t != 0), max_len)
        body = view[start:]
        tail = seq[-max_len:]
        seen = set(seq)
        totals["items"] += sum(1 for t in body if t != 0)
        totals["zeros_inside"] += sum(1 for t in body if t == 0)
        totals["new_items"] += sum(1 for t in body if t != 0 and t not in seen)
        totals["last_kept"] += float(bool(body) and bool(tail) and body[-1] == tail[-1])
        totals["first_kept"] += float(bool(body) and bool(tail) and body[0] == tail[0])
    return {k: v / len(views) for k, v in totals.items()}


def _compare_stats(theirs: list[dict], ours: list[dict], z_max: float) -> list[tuple[str, float, float, float, float, float, bool]]:
    """Per statistic: mean and std over the draws of each side, z = |difference| / its standard
    error, and whether z exceeds ``z_max``."""
    rows = []
    for key in VIEW_STATS:
        a = np.array([d[key] for d in theirs], dtype=np.float64)
        b = np.array([d[key] for d in ours], dtype=np.float64)
        z = z_score(a, b)
        rows.append((key, float(a.mean()), float(a.std(ddof=1)), float(b.mean()), float(b.std(ddof=1)), z, z > z_max))
    return rows


def original_view_maker(original: types.SimpleNamespace, cfg, data_file: str, similarity_path: str | None = None):
    """The original's training dataset (``datasets.RecWithContrastiveLearningDataset``, its
    ``Random`` augmentation with ``cfg``'s settings and its own ItemCF-IUF model: the warm-up's
    views); its ``_one_pair_data_augmentation(items)`` draws two views of one input with Python's
    ``random``. The ItemCF-IUF pickle goes to ``similarity_path`` (default: a temporary folder)."""
    import io
    import tempfile

    try:
        datasets = importlib.import_module("datasets")
    except ImportError as err:
        raise ParityError(f"cannot import the original's datasets.py: {err}") from err
    if not hasattr(datasets, "RecWithContrastiveLearningDataset"):
        raise ParityError(f"{datasets.__file__} has no RecWithContrastiveLearningDataset")
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        similarity = original.models.OfflineItemSimilarity(
            data_file=data_file, similarity_path=similarity_path or os.path.join(tmp, "similarity.pkl"),
            model_name="ItemCF_IUF")
        ns = types.SimpleNamespace(
            max_seq_length=cfg.max_seq_length, offline_similarity_model=similarity, online_similarity_model=None,
            tao=cfg.tao, gamma=cfg.gamma, beta=cfg.beta, substitute_rate=cfg.substitute_rate,
            insert_rate=cfg.insert_rate, max_insert_num_per_pos=cfg.max_insert_num_per_pos,
            augment_threshold=cfg.augment_threshold, augment_type_for_short="SIM", base_augment_type="random",
            n_views=2)
        # (the user list is not read by _one_pair_data_augmentation)
        return datasets.RecWithContrastiveLearningDataset(ns, [[1, 2, 3, 4]], data_type="train")


def views_command(args) -> int:
    """The distribution of the augmented views, the original's dataset code against our Augmenter."""
    import random

    from mstein_fast.augment import Augmenter, itemcf_iuf_topk
    from mstein_fast.config import build_config
    from mstein_fast.data import load_sequences

    original = import_original(args.original, args.original_deps)
    cfg, _ = build_config(None, {"data": args.data, "model": "mstein", "compat": "original", "seed": args.seed})
    data = load_sequences(args.data)
    inputs = [[int(t) for t in s[:-3]] for s in data.items]  # the training inputs of both codes
    dataset = original_view_maker(original, cfg, args.data, args.similarity)
    augmenter = Augmenter(cfg.augment_config())
    g = torch.Generator().manual_seed(args.seed)
    augmenter.set_similarity(itemcf_iuf_topk([s[:-3] for s in data.items], data.n_items, augmenter.similar_k, g))
    width = max(1, max(len(s) for s in inputs))
    full = torch.zeros(len(inputs), width, dtype=torch.int64)
    for i, s in enumerate(inputs):
        if s:
            full[i, width - len(s):] = torch.tensor(s)
    lengths = torch.tensor([len(s) for s in inputs])
    theirs, ours = [], []
    for draw in range(args.draws):
        random.seed(args.seed * 1000 + draw)
        views = [v.tolist() for s in inputs for v in dataset._one_pair_data_augmentation(s)]
        theirs.append(view_stats(views, [s for s in inputs for _ in range(2)], cfg.max_seq_length))
        both = augmenter.views(full, lengths, torch.Generator().manual_seed(args.seed * 1000 + draw)).tolist()
        ours.append(view_stats(both, inputs + inputs, cfg.max_seq_length))
    rows = _compare_stats(theirs, ours, args.z_max)
    print(f"{os.path.basename(args.data)}: two views of each of {len(inputs)} training inputs, {args.draws} draws a side; "
          f"the original's RecWithContrastiveLearningDataset (its ItemCF-IUF model, the warm-up) against our "
          f"Augmenter, compat original; settings: tao {cfg.tao}, gamma {cfg.gamma}, insert {cfg.insert_rate}, "
          f"substitute {cfg.substitute_rate}, threshold {cfg.augment_threshold}, max_len {cfg.max_seq_length}")
    print("| per view | original (mean +- std over draws) | ours | z | |")
    print("| --- | ---: | ---: | ---: | --- |")
    for key, a, sa, b, sb, z, bad in rows:
        print(f"| {VIEW_STATS[key]} | {a:.4f} +- {sa:.4f} | {b:.4f} +- {sb:.4f} | {z:.1f} | {'DIFFERS' if bad else 'ok'} |")
    differ = [r[0] for r in rows if r[-1]]
    print(f"{len(differ)} of {len(rows)} statistics differ by more than {args.z_max} standard errors"
          + (f": {', '.join(differ)}" if differ else ""))
    return 1 if differ else 0


# -- bisect ----------------------------------------------------------------------------------------
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
        mean, cov = self.side.encode(pad_left(seqs, self.width))
        dist = self.side.cls.dist_predict_full(self.side.trainer, mean[:, -1, :], cov[:, -1, :])
        return -dist[:, :self.n_items + 1] if include_padding else -dist[:, 1:self.n_items + 1]


class OriginalStep(torch.nn.Module):
    """Our trainer's ``step`` (:class:`mstein_fast.train._TrainStep`'s contract) on :class:`OriginalModel`."""

    def __init__(self, model: OriginalModel, pvn_weight: float, cf_weight: float):
        super().__init__()
        self.model, self.pvn_weight, self.cf_weight = model, pvn_weight, cf_weight

    def forward(self, inputs, targets, negatives, views):
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
        backends._cache["cpp"] = ImportError("turned off by parity.py bisect --no-cpp")
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


# -- band ------------------------------------------------------------------------------------------
def load_curves(path: str) -> dict:
    """One ``parity_curves.json`` written by ``curves`` (``path`` may be the file or its folder)."""
    if os.path.isdir(path):
        path = os.path.join(path, "parity_curves.json")
    if not os.path.isfile(path):
        raise ParityError(f"{path}: no such file (a parity_curves.json written by `parity.py curves`)")
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError) as err:
        raise ParityError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise ParityError(f"{path}: no 'settings' (not written by `parity.py curves`?)")
    for key in ("original", "ours_compat"):
        curve = record.get(key)
        if not isinstance(curve, list) or not curve:
            raise ParityError(f"{path}: no {key!r} curve")
        for row in curve:
            missing = [m for m in ("epoch", *PLOTTED) if not isinstance(row, dict) or m not in row]
            if missing:
                raise ParityError(f"{path}: a row of {key!r} lacks {', '.join(missing)}")
        if [row["epoch"] for row in curve] != list(range(1, len(curve) + 1)):
            raise ParityError(f"{path}: the {key!r} curve's epochs are not 1, 2, ..., {len(curve)}")
    if "seed" not in record["settings"]:
        raise ParityError(f"{path}: its settings name no seed")
    record["path"] = path
    return record


def seed_band(records: list[dict], from_epoch: int = 1) -> dict:
    """The original code's seed-to-seed band against our compat curves, over the same epochs.

    ``records``: the ``parity_curves.json`` of one ``curves`` run per seed (distinct seeds, same data;
    at least two). Per metric of :data:`PLOTTED` and epoch (the first K, K the shortest curve): the
    original's min / max / mean / sample std over its seeds, our compat mean and std over ours, and
    whether our mean and each of our seeds lie within the original's [min, max]. Summed up per metric
    over the epochs from ``from_epoch`` on: the fraction of epochs with our mean within the band, the
    fraction of (seed, epoch) points within it, and what that fraction would be if our seeds were
    draws from the original's own distribution ((n - 1) / (n + 1) for n original seeds: a new draw
    falls between the min and max of n draws of the same continuous distribution with that
    probability), the mean gap (ours - original, means over seeds) and the original's mean seed std.
    """
    if len(records) < 2:
        raise ParityError(f"a seed band needs the curves of at least two seeds; got {len(records)}")
    seeds = [r["settings"]["seed"] for r in records]
    if len(set(seeds)) != len(seeds):
        raise ParityError(f"the same seed twice: seeds {seeds}")
    data = {os.path.basename(str(r["settings"].get("data", ""))) for r in records}
    if len(data) > 1:
        raise ParityError(f"curves of different data files: {sorted(data)}")
    epochs = min(len(r[key]) for r in records for key in ("original", "ours_compat"))
    if not 1 <= from_epoch <= epochs:
        raise ParityError(f"--from-epoch {from_epoch}: the curves have epochs 1..{epochs}")
    n = len(records)
    per_epoch, summary = [], {}
    for m in PLOTTED:
        orig = np.array([[r["original"][e][m] for e in range(epochs)] for r in records], dtype=np.float64)
        ours = np.array([[r["ours_compat"][e][m] for e in range(epochs)] for r in records], dtype=np.float64)
        lo, hi = orig.min(0), orig.max(0)
        o_mean, c_mean = orig.mean(0), ours.mean(0)
        o_std, c_std = orig.std(0, ddof=1), ours.std(0, ddof=1)
        mean_in = (c_mean >= lo) & (c_mean <= hi)
        seeds_in = (ours >= lo) & (ours <= hi)
        for e in range(epochs):
            if len(per_epoch) <= e:
                per_epoch.append({"epoch": e + 1})
            per_epoch[e][m] = {"original_min": lo[e], "original_max": hi[e], "original_mean": o_mean[e],
                               "original_std": o_std[e], "ours_mean": c_mean[e], "ours_std": c_std[e],
                               "ours": ours[:, e].tolist(), "original": orig[:, e].tolist(),
                               "ours_mean_within": bool(mean_in[e])}
        w = slice(from_epoch - 1, epochs)
        summary[m] = {"mean_within": float(mean_in[w].mean()), "seeds_within": float(seeds_in[:, w].mean()),
                      "seeds_within_if_same": (n - 1) / (n + 1), "mean_gap": float((c_mean - o_mean)[w].mean()),
                      "original_std": float(o_std[w].mean()), "ours_std": float(c_std[w].mean()),
                      "last_original_mean": float(o_mean[-1]), "last_ours_mean": float(c_mean[-1])}
    return {"seeds": seeds, "epochs": epochs, "from_epoch": from_epoch, "per_epoch": per_epoch, "summary": summary}


def plot_band(band: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in band["per_epoch"]]
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(5 * len(PLOTTED), 4))
    for ax, m in zip(axes, PLOTTED):
        rows = [row[m] for row in band["per_epoch"]]
        ax.fill_between(epochs, [r["original_min"] for r in rows], [r["original_max"] for r in rows], alpha=0.3,
                        color="tab:blue", label="original, min-max over seeds")
        ax.plot(epochs, [r["original_mean"] for r in rows], color="tab:blue", ls="--", label="original, mean")
        for i, seed in enumerate(band["seeds"]):
            ax.plot(epochs, [r["ours"][i] for r in rows], color="tab:orange", lw=0.6, alpha=0.6,
                    label="mstein-fast --compat original, each seed" if i == 0 else None)
        ax.plot(epochs, [r["ours_mean"] for r in rows], color="tab:orange", label="mstein-fast --compat original, mean")
        ax.set_title(f"validation {m}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def band_command(args) -> int:
    records = [load_curves(path) for path in args.curves]
    band = seed_band(records, args.from_epoch)
    os.makedirs(args.output, exist_ok=True)
    out_json = os.path.join(args.output, "seed_band.json")
    with open(out_json + ".tmp", "w", encoding="utf-8") as fh:
        json.dump({"inputs": [r["path"] for r in records], **band}, fh, indent=1, default=float)
        fh.write("\n")
    os.replace(out_json + ".tmp", out_json)
    data = os.path.basename(str(records[0]["settings"].get("data", "")))
    plot_band(band, os.path.join(args.output, "seed_band.png"),
              f"{data}: original MStein vs mstein-fast --compat original, validation, seeds "
              f"{', '.join(map(str, band['seeds']))}")
    n = len(records)
    print(f"seeds {band['seeds']}, epochs {band['from_epoch']}..{band['epochs']}; band = the original's min..max "
          f"over its {n} seeds at each epoch")
    print("| metric | our mean within the band | our seeds within the band | (if the same distribution) "
          "| mean gap, ours - original | original seed std | our seed std |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m, s in band["summary"].items():
        print(f"| {m} | {s['mean_within']:.0%} | {s['seeds_within']:.0%} | {s['seeds_within_if_same']:.0%} "
              f"| {s['mean_gap']:+.4f} | {s['original_std']:.4f} | {s['ours_std']:.4f} |")
    print(f"wrote {out_json} and seed_band.png")
    return 0


# -- command line -------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    def default(value):
        return value if top else argparse.SUPPRESS

    parser.add_argument("--original", metavar="DIR", default=default(None),
                        help="checkout of the original code (github zfan20/MStein); required")
    parser.add_argument("--data", metavar="FILE", default=default(DEFAULT_DATA),
                        help=f"sequence file (default: {DEFAULT_DATA})")
    parser.add_argument("--original-deps", metavar="DIR", action="append", default=default([]),
                        help="a directory holding packages the original needs and this venv lacks (scipy); repeatable")
    parser.add_argument("--seed", type=int, default=default(1), help="seed (default: 1, the original main.py's)")
    parser.add_argument("--threads", type=int, default=default(1), help="torch threads of each side (default: 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser, True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("transplant", help="our weights in the original's model: outputs, losses, gradients on one batch")
    _common(p, False)
    p.add_argument("--users", type=int, default=256, help="users in the batch (the first ones; default: 256)")
    p.add_argument("--backends", default="torch,cpp",
                   help="our backends to check (CPU), comma-separated (default: torch,cpp)")
    p.add_argument("--dtypes", default="float64,float32",
                   help="dtypes of both models, comma-separated (default: float64,float32)")
    p.add_argument("--rtol", type=float, default=1e-5,
                   help="largest accepted max|a-b|/max|b| in float64 (default: 1e-5)")
    p.add_argument("--rtol-float32", type=float, default=1e-3,
                   help="the same in float32, where the two codes' rounding differs (default: 1e-3)")
    p.add_argument("--flush-denormal", action="store_true", help="flush denormals to zero (both sides; default: off)")
    p.add_argument("--json", metavar="FILE", help="append the tables to this JSON file")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="start from the weights of this checkpoint (last.pt or best.pt of a `mstein-fast train "
                        "--compat original` run on the same data) instead of the seed's initialisation")
    q = sub.add_parser("curves", help="train both for K epochs, validation curves side by side")
    _common(q, False)
    q.add_argument("--epochs", type=int, required=True, metavar="K", help="epochs of each run")
    q.add_argument("--output", required=True, metavar="DIR", help="output folder (its run directories must be new)")
    q.add_argument("--also-default", action="store_true", help="also a run of ours without --compat")
    q.add_argument("--original-log", metavar="FILE",
                   help="take the original's curve from this saved stdout of its main.py (the official command and "
                        "the same --seed; lines may start with a time stamp) instead of running it")
    q.add_argument("--ours-run", metavar="DIR",
                   help="take our compat curve from this finished run directory (mstein-fast train --compat "
                        "original, same seed) instead of training it")
    q.add_argument("--original-python", metavar="PY", help="python for the original (default: this one)")
    q.add_argument("--original-float64", action="store_true",
                   help="run the original with torch's default dtype float64 (a diagnostic; about 4x slower)")
    e = sub.add_parser("evaluate", help="validation and test metrics of a checkpoint the original saved")
    _common(e, False)
    e.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="the .pt the original's main.py saves at each better validation epoch (its output_dir)")
    e.add_argument("--backend", default="auto", choices=["auto", "cpp", "torch"], help="our ops' backend")
    d = sub.add_parser("dropout", help="the transplant with dropout on: loss and gradient distributions over draws")
    _common(d, False)
    d.add_argument("--users", type=int, default=256, help="users in the batch (the first ones; default: 256)")
    d.add_argument("--draws", type=int, default=30, help="dropout draws per side (default: 30)")
    d.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="both models' dtype")
    d.add_argument("--backend", default="torch", choices=["torch", "cpp"], help="our ops' backend (cpp: float32)")
    d.add_argument("--z-max", type=float, default=4.0, help="a loss mean differs beyond this many standard errors")
    d.add_argument("--shift-max", type=float, default=2.0, help="a gradient's mean shift flagged above this")
    d.add_argument("--checkpoint", metavar="FILE",
                   help="start from the weights of this checkpoint (last.pt or best.pt of a `mstein-fast train "
                        "--compat original` run on the same data) instead of the seed's initialisation")
    d.add_argument("--spread-max", type=float, default=1.5,
                   help="a gradient's spread ratio flagged above this or below its inverse")
    v = sub.add_parser("views", help="the augmented views' distribution over the data, the original's code against ours")
    _common(v, False)
    v.add_argument("--draws", type=int, default=5, help="draws of both views of every input, per side (default: 5)")
    v.add_argument("--z-max", type=float, default=4.0,
                   help="a statistic differs when |difference| exceeds this many standard errors (default: 4)")
    v.add_argument("--similarity", metavar="FILE",
                   help="the original's ItemCF-IUF pickle to use or write (default: built in a temporary folder)")
    x = sub.add_parser("bisect", help="our compat trainer with parts of the original swapped in (views, negatives, "
                                      "model), K epochs, against a curves run's original curve")
    _common(x, False)
    x.add_argument("--swap", type=parse_parts, default=[], metavar="PARTS",
                   help=f"comma-separated parts of the original to use: {', '.join(BISECT_PARTS)} (default: none)")
    x.add_argument("--no-cpp", action="store_true", help="our C++ extension off (PyTorch ops everywhere)")
    x.add_argument("--epochs", type=int, required=True, metavar="K", help="epochs to train")
    x.add_argument("--against", metavar="CURVES",
                   help="a curves run of the same --seed (its parity_curves.json or folder): the original's curve, "
                        "copied beside ours for band (default: none, our curve only)")
    x.add_argument("--output", required=True, metavar="DIR", help="output folder (its ours/ must be new)")
    b = sub.add_parser("band", help="the original's seed band against our compat curves (several curves runs)")
    b.add_argument("curves", nargs="+", metavar="CURVES",
                   help="parity_curves.json of `curves` runs with different --seed (or their --output folders)")
    b.add_argument("--output", required=True, metavar="DIR", help="folder for seed_band.json and seed_band.png")
    b.add_argument("--from-epoch", type=int, default=1, metavar="E",
                   help="sum up the epochs from E on (default: 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "band":  # reads curves runs only: neither the original nor the data
        try:
            return band_command(args)
        except ParityError as err:
            print(f"parity: {err}", file=sys.stderr)
            return 2
    if not args.original:
        build_parser().error("--original DIR is required (a checkout of github zfan20/MStein)")
    if not os.path.isfile(args.data):
        build_parser().error(f"--data {args.data}: no such file")
    args.data = os.path.abspath(args.data)
    if args.threads < 1 or args.seed < 0:
        build_parser().error("--threads must be >= 1 and --seed >= 0")
    try:
        if args.command == "transplant":
            args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
            args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
            if not args.backends or not set(args.backends) <= {"torch", "cpp"}:
                build_parser().error("--backends: a comma-separated list of torch, cpp")
            if not args.dtypes or not set(args.dtypes) <= {"float32", "float64"}:
                build_parser().error("--dtypes: a comma-separated list of float64, float32")
            if args.users < 1:
                build_parser().error("--users must be >= 1")
            return transplant(args)
        if args.command == "dropout":
            if args.draws < 5 or args.users < 1:  # fewer: the spread's estimate is too rough for the tests
                build_parser().error("--draws must be >= 5 and --users >= 1")
            return dropout_command(args)
        if args.command == "views":
            if args.draws < 5 or args.z_max <= 0:  # fewer: the spread's estimate is too rough for a z-test
                build_parser().error("--draws must be >= 5 and --z-max > 0")
            return views_command(args)
        if args.command == "evaluate":
            if not os.path.isfile(args.checkpoint):
                build_parser().error(f"--checkpoint {args.checkpoint}: no such file")
            return evaluate_checkpoint(args)
        if args.epochs < 1:
            build_parser().error("--epochs must be >= 1")
        if args.command == "bisect":
            return bisect_command(args)
        if args.original_float64 and args.original_log:
            build_parser().error("--original-float64 runs the original; with --original-log it does not run")
        return curves(args)
    except (ParityError, load_original_helper().OriginalError) as err:
        print(f"parity: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
