"""The parameter mapping between our MStein model and the original's ``DistSAModel``: every
parameter of ours with its counterpart(s) (the original's separate query/key/value against rows
of our fused ``qkv``; its item tables one row longer), checked both ways so that a rename on
either side fails by name, and the weight copies in both directions."""

from __future__ import annotations

import dataclasses
import re

import torch

from .common import MappingError, ParityError

# the original's parameters that MStein never uses (no counterpart in ours)
IGNORED_ORIGINAL = ("user_margins.weight",)


@dataclasses.dataclass(frozen=True)
class Pair:
    """One parameter of ours (or rows of it) and its counterpart in the original's model."""

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
            a, b = our_piece(mine[pair.ours], pair), theirs[pair.original]
            rows_ok = a.shape[0] <= b.shape[0] if pair.extra_rows else a.shape[0] == b.shape[0]
            if a.dim() != b.dim() or a.shape[1:] != b.shape[1:] or not rows_ok:
                problems.append(f"shape of {pair.ours}{rows_text(pair)} {tuple(a.shape)} vs {pair.original} "
                                f"{tuple(b.shape)}")
        for name, rows in _rows_covered(pairs).items():
            if rows != mine[name].shape[0]:
                problems.append(f"the pieces of {name} cover {rows} of its {mine[name].shape[0]} rows")
    if problems:
        raise MappingError("the parameter mapping ours -> original is broken (renamed parameters? update "
                           "parameter_pairs in benchmarks/parity/mapping.py):\n  " + "\n  ".join(problems))
    return pairs


def _rows_covered(pairs: list[Pair]) -> dict[str, int]:
    covered: dict[str, int] = {}
    for pair in pairs:
        if pair.rows is not None:
            covered[pair.ours] = covered.get(pair.ours, 0) + pair.rows[1] - pair.rows[0]
    return covered


def our_piece(t: torch.Tensor, pair: Pair) -> torch.Tensor:
    """The part of our tensor ``t`` that ``pair`` maps (its rows, for a piece of a fused qkv)."""
    return t if pair.rows is None else t[pair.rows[0]:pair.rows[1]]


def rows_text(pair: Pair) -> str:
    """``[lo:hi]`` for a pair that maps rows of our tensor, else an empty string."""
    return "" if pair.rows is None else f"[{pair.rows[0]}:{pair.rows[1]}]"


@torch.no_grad()
def copy_weights(pairs: list[Pair], ours: torch.nn.Module, original: torch.nn.Module) -> None:
    """Our weights into the original's (the original's extra item rows keep their values)."""
    mine, theirs = dict(ours.named_parameters()), dict(original.named_parameters())
    for pair in pairs:
        a = our_piece(mine[pair.ours], pair)
        theirs[pair.original][:a.shape[0]].copy_(a)



def load_original_weights(pairs: list[Pair], ours: torch.nn.Module, state: dict) -> None:
    """The original's saved ``state_dict`` into our model (the reverse of :func:`copy_weights`)."""
    mine = dict(ours.named_parameters())
    missing = sorted({p.original for p in pairs} - set(state))
    if missing:
        raise ParityError(f"the checkpoint has no {', '.join(missing[:3])}: not a CoDistSAModel state_dict")
    with torch.no_grad():
        for pair in pairs:
            piece = our_piece(mine[pair.ours], pair)
            piece.copy_(state[pair.original][:piece.shape[0]].to(piece.dtype))
