"""``transplant``: our weights in the original's model and one training batch on both sides; the
encoder's outputs, the loss pieces and every parameter's gradient compared tensor by tensor."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import types

import torch

from .common import ParityError
from .mapping import Pair, copy_weights, our_piece, parameter_pairs, rows_text
from .original import OriginalSide, import_original, original_args

OBJECTIVES = ("bpr", "bpr+pvn", "cl", "total")


class OursSide:
    """Our model through its public methods."""

    def __init__(self, model):
        self.model = model

    def encode(self, seqs):
        """Our encoder's ``(mean, cov)``, each ``[B, L, H]``."""
        return self.model.encode(seqs)

    def rec_pieces(self, seqs, targets, negatives):
        """(bpr, pvn) values, detached (``rec_loss`` reports them so)."""
        _, parts = self.model.rec_loss(seqs, targets, negatives)
        return parts["bpr"], parts["pvn"]

    @contextlib.contextmanager
    def pvn_weight(self, weight: float):
        """Our model's ``pvn_weight`` set to ``weight`` within the block."""
        saved = self.model.pvn_weight
        self.model.pvn_weight = weight
        try:
            yield
        finally:
            self.model.pvn_weight = saved

    def cl(self, views):
        """Our InfoNCE between the two halves of ``views`` (``[2B, L]``)."""
        return self.model.contrastive_loss(views)



@dataclasses.dataclass
class Batch:
    """One training batch, the same tensors for both sides."""

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


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient by name, cloned (zeros for a parameter without one)."""
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}


def clear_grads(model: torch.nn.Module) -> None:
    """Drop every parameter's gradient."""
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
        clear_grads(model)
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
        out["grad"][objective] = grads_of(model)
    clear_grads(model)
    return out


def our_results(side: OursSide, batch: Batch, cfg) -> dict:
    """The same as :func:`original_results`, our side."""
    model = side.model
    out: dict = {"forward": _forward_outputs(side, batch), "loss": {}, "grad": {}}
    for objective in OBJECTIVES:
        clear_grads(model)
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
        out["grad"][objective] = grads_of(model)
    clear_grads(model)
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
            a = our_piece(ours["grad"][objective][pair.ours], pair)
            b = theirs["grad"][objective][pair.original]
            if a.shape[0] < b.shape[0]:  # the original's extra item rows: ours is zero there
                a = torch.cat([a, a.new_zeros((b.shape[0] - a.shape[0], *a.shape[1:]))])
            errors.append(rel_error(a, b))
        rows.append((f"grad {pair.ours}{rows_text(pair)}", errors, pair.original))
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
    """``transplant``: prints the tables of relative errors; exit status 1 when one exceeds its tolerance."""
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


def _append_json(path: str, record: dict) -> None:
    records = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            records = json.load(fh)
    records.append(record)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(records, fh, indent=1, default=float)
        fh.write("\n")

