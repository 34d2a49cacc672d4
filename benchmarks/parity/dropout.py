"""``dropout``: the transplant's batch and weights with the official dropout on; the loss pieces'
and the gradients' distributions over draws compared side by side."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from .mapping import Pair, our_piece, rows_text
from .original import import_original
from .stats import mean_shift, spread_ratio, z_score
from .transplant import Batch, OursSide, clear_grads, grads_of, make_batch, twin_models


def _total_and_grads(side, batch: Batch, pvn_weight: float, cf_weight: float, pairs: list[Pair] | None,
                     ours: bool) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One training step's loss pieces and the gradient of its total (the original's names)."""
    model = side.model
    clear_grads(model)
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
    grads = grads_of(model)
    clear_grads(model)
    if not ours:
        return values, grads
    return values, {pair.original: our_piece(grads[pair.ours], pair) for pair in pairs}



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
    rows = {pair.original: our_piece(mine[pair.ours], pair).shape[0] for pair in pairs}
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
            bad.append(pair.original + rows_text(pair))
        print(f"| {pair.original}{rows_text(pair)} | {a.shape[1]} | {shift:.2f} | {spread:.2f} | "
              f"{'DIFFERS' if flag else 'ok'} |")
    print(f"\n{'FAIL' if bad else 'OK'}: {len(bad)} of {4 + len(pairs)} differ" + (f": {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


