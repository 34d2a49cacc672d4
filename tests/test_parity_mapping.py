"""benchmarks/parity.py's parameter mapping (ours -> the original's names) covers every parameter
of our MStein model, copies the fused qkv pieces row by row and fails with a clear message on a
rename. No original code: a stand-in module carries the original's parameter names and shapes."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mstein_fast.config import TrainConfig
from mstein_fast.models import build_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "parity.py"


@pytest.fixture(scope="module")
def parity():
    spec = importlib.util.spec_from_file_location("parity_harness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _model(layers: int = 2):
    cfg = TrainConfig(model="mstein", compat="original", hidden_size=8, num_attention_heads=2, max_seq_length=6,
                      num_hidden_layers=layers, backend="torch").validate()
    torch.manual_seed(0)
    return build_model("mstein", 10, cfg)


def _stand_in(parity, ours, extra_item_rows: int = 1) -> nn.Module:
    """A module with the original's parameter names (from the harness's own list) and shapes."""
    mine = dict(ours.named_parameters())
    layers = len({n.split(".")[1] for n in mine if n.startswith("attention.")})
    h_of = {n: p.shape[0] // 3 for n, p in mine.items() if "_qkv." in n}
    root = nn.Module()
    for pair in parity._pairs_by_name(h_of, layers):
        shape = list(parity._our_piece(mine[pair.ours], pair).shape)
        if pair.extra_rows:
            shape[0] += extra_item_rows
        *path, leaf = pair.original.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, nn.Parameter(torch.zeros(shape)))
    root.user_margins = nn.Embedding(3, 1)  # ignored by the mapping
    return root


def test_every_parameter_is_mapped_and_copied(parity):
    ours = _model()
    theirs = _stand_in(parity, ours)
    pairs = parity.parameter_pairs(ours, theirs)
    assert {p.ours for p in pairs} == set(dict(ours.named_parameters()))
    parity.copy_weights(pairs, ours, theirs)
    t = dict(theirs.named_parameters())
    h = ours.hidden
    assert torch.equal(t["item_encoder.layer.1.attention.cov_key.weight"], ours.attention[1].cov_qkv.weight[h:2 * h])
    assert torch.equal(t["item_encoder.layer.0.mean_intermediate.LayerNorm.bias"], ours.mean_ffn[0].norm.bias)
    assert torch.equal(t["item_mean_embeddings.weight"][:11], ours.item_mean.weight)
    assert torch.equal(t["item_mean_embeddings.weight"][11:], torch.zeros(1, h))  # the original's extra row kept


def test_a_rename_on_either_side_is_named(parity):
    ours = _model(layers=1)
    theirs = _stand_in(parity, ours)
    ours.embed_ln = ours.embed_norm
    del ours.embed_norm
    with pytest.raises(parity.MappingError, match=r"not in our model: embed_norm\.bias.*\n.*without a counterpart: "
                                                   r"embed_ln\.bias"):
        parity.parameter_pairs(ours, theirs)
    ours = _model(layers=1)
    attention = getattr(theirs.item_encoder.layer, "0").attention
    attention.mean_value_renamed = attention.mean_value
    del attention.mean_value
    with pytest.raises(parity.MappingError, match=r"not in the original's model: .*mean_value\.bias"):
        parity.parameter_pairs(ours, theirs)


def test_layer_count_and_relative_error(parity):
    with pytest.raises(parity.MappingError, match="layer count differs"):
        parity.parameter_pairs(_model(layers=2), _stand_in(parity, _model(layers=1)))
    b = torch.tensor([1.0, -4.0])
    assert parity.rel_error(torch.tensor([1.0, -3.0]), b) == 0.25
    assert parity.rel_error(torch.zeros(2), torch.zeros(2)) == 0.0
    assert math.isnan(parity.rel_error(torch.tensor([float("nan"), 0.0]), b))  # NaN: never within rtol


def test_original_log_lines_lose_their_time_stamps(parity, tmp_path):
    # a saved stdout of the original, piped through a logger: seconds or a date and time before each line
    log = tmp_path / "log.txt"
    log.write_text("1733230000 Train CoDistSAModel\n"
                   "2026-12-03 11:38:30 {'Epoch': 0, 'HIT@10': '0.01', 'MRR': '0.002'}\n"
                   "{'Epoch': 1, 'HIT@10': '0.02', 'MRR': '0.004'}\n"
                   "12.5 {'epoch': 2, 'total_avg_loss': '1.9'}\n"
                   "EarlyStopping counter: 1 out of 100\n")
    assert parity.read_original_log(str(log)) == [
        "Train CoDistSAModel", "{'Epoch': 0, 'HIT@10': '0.01', 'MRR': '0.002'}",
        "{'Epoch': 1, 'HIT@10': '0.02', 'MRR': '0.004'}", "{'epoch': 2, 'total_avg_loss': '1.9'}",
        "EarlyStopping counter: 1 out of 100"]
