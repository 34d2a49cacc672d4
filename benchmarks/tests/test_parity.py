"""The parity harness (benchmarks/parity/): its parameter mapping (ours -> the original's names)
covers every parameter of our MStein model, copies the fused qkv pieces row by row and fails with a
clear message on a rename; the pieces of its commands that need no original code (log and curve
reading, the seed band, the view statistics, the two-sample statistics, bisect's stand-ins, the
option checks). No original code: a stand-in module carries the original's parameter names and
shapes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.parity.band import load_curves, seed_band
from benchmarks.parity.bisection import original_views, pad_left, parse_parts, python_negatives, unpadded_rows
from benchmarks.parity.cli import main
from benchmarks.parity.common import MappingError, ParityError
from benchmarks.parity.curves import original_curve, read_original_log
from benchmarks.parity.mapping import (
    _pairs_by_name,
    _rows_covered,
    copy_weights,
    load_original_weights,
    our_piece,
    parameter_pairs,
)
from benchmarks.parity.stats import mean_shift, spread_ratio
from benchmarks.parity.transplant import load_trained_weights, rel_error
from benchmarks.parity.views import VIEW_STATS, _compare_stats, view_stats
from mstein_fast.config import TrainConfig
from mstein_fast.models import build_model

REPO = Path(__file__).resolve().parents[2]


def _cfg(layers: int = 2):
    return TrainConfig(model="mstein", compat="original", hidden_size=8, num_attention_heads=2, max_seq_length=6,
                       num_hidden_layers=layers, backend="torch").validate()


def _model(layers: int = 2):
    torch.manual_seed(0)
    return build_model("mstein", 10, _cfg(layers).model_config())


def _stand_in(ours, extra_item_rows: int = 1) -> nn.Module:
    """A module with the original's parameter names (from the harness's own list) and shapes."""
    mine = dict(ours.named_parameters())
    layers = len({n.split(".")[1] for n in mine if n.startswith("attention.")})
    h_of = {n: p.shape[0] // 3 for n, p in mine.items() if "_qkv." in n}
    root = nn.Module()
    for pair in _pairs_by_name(h_of, layers):
        shape = list(our_piece(mine[pair.ours], pair).shape)
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


def test_every_parameter_is_mapped_and_copied():
    ours = _model()
    theirs = _stand_in(ours)
    pairs = parameter_pairs(ours, theirs)
    assert {p.ours for p in pairs} == set(dict(ours.named_parameters()))
    copy_weights(pairs, ours, theirs)
    t = dict(theirs.named_parameters())
    h = ours.hidden
    assert torch.equal(t["item_encoder.layer.1.attention.cov_key.weight"], ours.attention[1].cov_qkv.weight[h:2 * h])
    assert torch.equal(t["item_encoder.layer.0.mean_intermediate.LayerNorm.bias"], ours.mean_ffn[0].norm.bias)
    assert torch.equal(t["item_mean_embeddings.weight"][:11], ours.item_mean.weight)
    assert torch.equal(t["item_mean_embeddings.weight"][11:], torch.zeros(1, h))  # the original's extra row kept


def test_a_rename_on_either_side_is_named():
    ours = _model(layers=1)
    theirs = _stand_in(ours)
    ours.embed_ln = ours.embed_norm
    del ours.embed_norm
    with pytest.raises(MappingError, match=r"not in our model: embed_norm\.bias.*\n.*without a counterpart: "
                                                   r"embed_ln\.bias"):
        parameter_pairs(ours, theirs)
    ours = _model(layers=1)
    attention = getattr(theirs.item_encoder.layer, "0").attention
    attention.mean_value_renamed = attention.mean_value
    del attention.mean_value
    with pytest.raises(MappingError, match=r"not in the original's model: .*mean_value\.bias"):
        parameter_pairs(ours, theirs)


def test_layer_count_and_relative_error():
    with pytest.raises(MappingError, match="layer count differs"):
        parameter_pairs(_model(layers=2), _stand_in(_model(layers=1)))
    b = torch.tensor([1.0, -4.0])
    assert rel_error(torch.tensor([1.0, -3.0]), b) == 0.25
    assert rel_error(torch.zeros(2), torch.zeros(2)) == 0.0
    assert math.isnan(rel_error(torch.tensor([float("nan"), 0.0]), b))  # NaN: never within rtol


def test_original_log_lines_lose_their_time_stamps(tmp_path):
    # a saved stdout of the original, piped through a logger: seconds or a date and time before each line
    log = tmp_path / "log.txt"
    log.write_text("1733230000 Train CoDistSAModel\n"
                   "2026-12-03 11:38:30 {'Epoch': 0, 'HIT@10': '0.01', 'MRR': '0.002'}\n"
                   "{'Epoch': 1, 'HIT@10': '0.02', 'MRR': '0.004'}\n"
                   "12.5 {'epoch': 2, 'total_avg_loss': '1.9'}\n"
                   "19:45:28 {'Epoch': 2, 'HIT@10': '0.03', 'MRR': '0.005'}\n"
                   "EarlyStopping counter: 1 out of 100\n"
                   "12:00 not a stamp\n")
    assert read_original_log(str(log)) == [
        "Train CoDistSAModel", "{'Epoch': 0, 'HIT@10': '0.01', 'MRR': '0.002'}",
        "{'Epoch': 1, 'HIT@10': '0.02', 'MRR': '0.004'}", "{'epoch': 2, 'total_avg_loss': '1.9'}",
        "{'Epoch': 2, 'HIT@10': '0.03', 'MRR': '0.005'}", "EarlyStopping counter: 1 out of 100",
        "12:00 not a stamp"]


def test_original_curve_skips_the_best_checkpoint_lines():
    # a finished run ends with the best checkpoint's validation and test lines, 'Epoch': 'best'
    lines = ["{'Epoch': 0, 'HIT@10': '0.01', 'NDCG@10': '0.005', 'MRR': '0.002'}",
             "{'epoch': 0, 'total_avg_loss': '1.9'}",
             "{'Epoch': 1, 'HIT@10': '0.02', 'NDCG@10': '0.01', 'MRR': '0.004'}",
             "{'Epoch': 'best', 'HIT@10': '0.03', 'NDCG@10': '0.02', 'MRR': '0.006'}",
             "{'Epoch': 'best', 'HIT@10': '0.04', 'NDCG@10': '0.03', 'MRR': '0.008'}"]
    assert original_curve(lines) == [{"epoch": 1, "recall@10": 0.01, "ndcg@10": 0.005, "mrr@40": 0.002},
                                            {"epoch": 2, "recall@10": 0.02, "ndcg@10": 0.01, "mrr@40": 0.004}]
    with pytest.raises(ParityError, match="cannot read"):
        original_curve(["{'Epoch': 2, 'HIT@10': "])


def _curves_file(path, seed, original, ours, data="/d/Office_Products.txt"):
    """A parity_curves.json as `curves` writes it; original / ours: per epoch one value, used for every
    plotted metric (scaled by 1, 2, 3 so that the metrics differ)."""
    def curve(values):
        return [{"epoch": e + 1, **{m: v * (k + 1) for k, m in enumerate(("recall@10", "ndcg@10", "mrr@40"))}}
                for e, v in enumerate(values)]
    path.mkdir(parents=True, exist_ok=True)
    record = {"settings": {"seed": seed, "data": data, "epochs": len(original)},
              "original": curve(original), "ours_compat": curve(ours)}
    (path / "parity_curves.json").write_text(json.dumps(record))
    return path


def test_seed_band_against_hand_computed_values(tmp_path):
    rng = np.random.default_rng()
    orig = rng.uniform(0.01, 0.1, size=(3, 5))
    ours = rng.uniform(0.01, 0.1, size=(3, 5))
    ours[:, 1] = orig[:, 1].max() + 0.01  # every seed of ours above the band at epoch 2
    ours[:, 3] = orig[:, 3].mean()  # all at the original's mean at epoch 4: within
    records = [load_curves(str(_curves_file(tmp_path / f"s{s}", s, list(orig[i]), list(ours[i]))))
               for i, s in enumerate((1, 2, 3))]
    band = seed_band(records)
    assert band["seeds"] == [1, 2, 3] and band["epochs"] == 5 and len(band["per_epoch"]) == 5
    for k, m in enumerate(("recall@10", "ndcg@10", "mrr@40")):
        scale = k + 1
        for e in range(5):
            row = band["per_epoch"][e][m]
            o, c = orig[:, e] * scale, ours[:, e] * scale
            assert row["original_min"] == pytest.approx(min(o)) and row["original_max"] == pytest.approx(max(o))
            assert row["original_mean"] == pytest.approx(sum(o) / 3)
            assert row["original_std"] == pytest.approx(math.sqrt(sum((x - sum(o) / 3) ** 2 for x in o) / 2))
            assert row["ours_mean"] == pytest.approx(sum(c) / 3)
            assert row["ours_mean_within"] == (min(o) <= sum(c) / 3 <= max(o))
        inside = [min(orig[:, e]) <= sum(ours[:, e]) / 3 <= max(orig[:, e]) for e in range(5)]
        assert not inside[1] and inside[3]
        points = [min(orig[:, e]) <= ours[i, e] <= max(orig[:, e]) for i in range(3) for e in range(5)]
        s = band["summary"][m]
        assert s["mean_within"] == pytest.approx(sum(inside) / 5)
        assert s["seeds_within"] == pytest.approx(sum(points) / 15)
        assert s["seeds_within_if_same"] == pytest.approx(0.5)
        assert s["mean_gap"] == pytest.approx(scale * (ours.mean(0) - orig.mean(0)).mean())
    late = seed_band(records, from_epoch=3)["summary"]["recall@10"]
    assert late["mean_within"] == pytest.approx(sum(inside[2:]) / 3)
    late_points = [min(orig[:, e]) <= ours[i, e] <= max(orig[:, e]) for i in range(3) for e in range(2, 5)]
    assert late["seeds_within"] == pytest.approx(sum(late_points) / 9)
    two = seed_band(records[:2])["summary"]["recall@10"]
    assert two["seeds_within_if_same"] == pytest.approx(1 / 3)  # a third draw lies between two with p = 1/3


def test_seed_band_refuses_what_is_no_band(tmp_path):
    a = load_curves(str(_curves_file(tmp_path / "a", 1, [0.1, 0.2], [0.1, 0.2])))
    b = load_curves(str(_curves_file(tmp_path / "b", 1, [0.1, 0.2], [0.1, 0.2])))
    c = load_curves(str(_curves_file(tmp_path / "c", 2, [0.1, 0.2], [0.1, 0.2], data="/d/Beauty.txt")))
    d = load_curves(str(_curves_file(tmp_path / "d", 3, [0.1], [0.1, 0.2])))
    with pytest.raises(ParityError, match="at least two"):
        seed_band([a])
    with pytest.raises(ParityError, match="same seed twice"):
        seed_band([a, b])
    with pytest.raises(ParityError, match="different data files"):
        seed_band([a, c])
    assert seed_band([a, d])["epochs"] == 1  # the shortest curve sets the epochs
    with pytest.raises(ParityError, match="epochs 1..1"):
        seed_band([a, d], from_epoch=2)


def test_load_curves_names_what_is_wrong(tmp_path):
    with pytest.raises(ParityError, match="no such file"):
        load_curves(str(tmp_path / "missing"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ParityError, match="not a readable JSON"):
        load_curves(str(bad))
    good = json.loads((_curves_file(tmp_path / "g", 1, [0.1, 0.2], [0.1, 0.2]) / "parity_curves.json").read_text())
    for broken, message in [({**good, "ours_compat": []}, "no 'ours_compat' curve"),
                            ({**good, "original": [{"epoch": 1, "recall@10": 0.1}]}, "lacks ndcg@10, mrr@40"),
                            ({**good, "original": good["original"][::-1]}, "epochs are not 1, 2"),
                            ({**good, "settings": {"data": "x"}}, "no seed"),
                            ({"original": good["original"]}, "no 'settings'")]:
        bad.write_text(json.dumps(broken))
        with pytest.raises(ParityError, match=message):
            load_curves(str(bad))


def test_band_command_writes_its_json_and_figure(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    dirs = [str(_curves_file(tmp_path / f"s{s}", s, [0.1 + 0.01 * s, 0.18 + 0.01 * s], [0.1, 0.2 + 0.001 * s]))
            for s in (1, 2, 3)]
    out = tmp_path / "band"
    assert main(["band", *dirs, "--output", str(out)]) == 0
    written = json.loads((out / "seed_band.json").read_text())
    assert written["seeds"] == [1, 2, 3] and written["epochs"] == 2
    assert (out / "seed_band.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "| recall@10 | 50% |" in table  # epoch 1: our 0.1 below the band 0.11..0.13; epoch 2: 0.202 in 0.19..0.21
    assert main(["band", dirs[0], "--output", str(out)]) == 2


def test_view_stats_by_hand():
    inputs = [[5, 6, 7], [8, 9]]
    views = [[0, 0, 5, 0, 7],  # masked middle: 2 items, 1 zero inside, ends kept
             [0, 4, 8, 3, 9]]  # two inserted new items (4, 3), ends: first 4 != 8, last kept
    s = view_stats(views, inputs, 5)
    assert s == {"items": 3.0, "zeros_inside": 0.5, "new_items": 1.0, "last_kept": 1.0, "first_kept": 0.5}
    long_input = [list(range(1, 9))]  # 8 items, max_len 5: the first kept is the 4th item (within max_len)
    assert view_stats([[4, 5, 6, 7, 8]], long_input, 5)["first_kept"] == 1.0
    assert view_stats([[0, 0, 0, 0, 0]], [[1]], 5) == dict.fromkeys(VIEW_STATS, 0.0)
    with pytest.raises(ParityError, match="not max_len"):
        view_stats([[1, 2]], [[1, 2]], 5)
    with pytest.raises(ParityError, match="views for"):
        view_stats([], [[1]], 5)


def test_compare_stats_flags_a_shift_beyond_the_draws_spread():
    rng = np.random.default_rng()
    base = {k: 1.0 for k in VIEW_STATS}
    theirs = [{k: v + rng.normal(0, 0.01) for k, v in base.items()} for _ in range(8)]
    ours = [{k: v + rng.normal(0, 0.01) + (0.1 if k == "new_items" else 0.0) for k, v in base.items()} for _ in range(8)]
    rows = {r[0]: r for r in _compare_stats(theirs, ours, 4.0)}
    assert rows["new_items"][-1] and rows["new_items"][5] > 4  # 0.1 apart, standard error 0.005
    a = np.array([d["items"] for d in theirs])
    b = np.array([d["items"] for d in ours])
    se = math.sqrt(a.var(ddof=1) / 8 + b.var(ddof=1) / 8)
    assert rows["items"][5] == pytest.approx(abs(a.mean() - b.mean()) / se)
    assert rows["items"][1] == pytest.approx(a.mean()) and rows["items"][4] == pytest.approx(b.std(ddof=1))
    same = [dict(base) for _ in range(3)]
    assert not any(r[-1] for r in _compare_stats(same, same, 4.0))  # no spread, no difference: z 0


def test_mean_shift_is_about_one_for_one_distribution_and_large_for_a_shift():
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 31)))
    a = torch.randn(200, 2000, generator=g, dtype=torch.float64)
    b = torch.randn(200, 2000, generator=g, dtype=torch.float64)
    assert 0.85 < mean_shift(a, b) < 1.15  # chi-square of 2000 degrees over its mean: 1 +- 0.03
    # a shift of 0.2 per element: |d|^2 = 2000 * 0.04 against 2000 * 2 / 200
    assert mean_shift(a, b + 0.2) == pytest.approx(1 + 0.04 / (2 / 200), rel=0.1)
    c = torch.ones(3, 4, dtype=torch.float64)
    assert mean_shift(c, c.clone()) == 0.0
    assert mean_shift(c, c + 1) == math.inf
    # against a direct float64 computation on small odd shapes
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64) * 2
    want = float(((x.mean(0) - y.mean(0)) ** 2).sum()) / (float((x.var(0, unbiased=True) + y.var(0, unbiased=True)).sum()) / 5)
    assert mean_shift(x, y) == pytest.approx(want)


def test_spread_ratio_is_about_one_for_one_distribution_and_tracks_a_scale():
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 31)))
    a = torch.randn(200, 2000, generator=g, dtype=torch.float64)
    b = torch.randn(200, 2000, generator=g, dtype=torch.float64)
    # each sum of 2000 variances of 199 degrees: relative sd sqrt(2 / 199 / 2000) ~ 0.002
    assert spread_ratio(a, b) == pytest.approx(1.0, abs=0.02)
    # noise 1.3 times as wide on our side (b): variances 1.69 times; a constant shift changes nothing
    assert spread_ratio(a, 1.3 * b + 5.0) == pytest.approx(1.69, rel=0.02)
    assert spread_ratio(1.3 * a, b) == pytest.approx(1 / 1.69, rel=0.02)
    c = torch.ones(3, 4, dtype=torch.float64)
    assert spread_ratio(c, c + 1) == 1.0
    assert spread_ratio(c, a[:3, :4]) == math.inf
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64) * 2
    want = float(y.var(0, unbiased=True).sum()) / float(x.var(0, unbiased=True).sum())
    assert spread_ratio(x, y) == pytest.approx(want)


def test_curves_refuses_float64_for_a_saved_log(tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_text("1 1 2 3 4\n")
    argv = ["--original", str(tmp_path), "--data", str(data), "curves", "--epochs", "1", "--output",
            str(tmp_path / "out"), "--original-log", str(tmp_path / "log.txt"), "--original-float64"]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and "with --original-log it does not run" in capsys.readouterr().err


@pytest.mark.slow
def test_the_package_runs_as_a_module_with_every_command(capsys):
    # `python -m benchmarks.parity` from the repository root (the invocation the docs give), then each
    # command's --help in this process
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}  # -m needs the root on the path
    run = subprocess.run([sys.executable, "-m", "benchmarks.parity", "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("usage: python -m benchmarks.parity ")
    assert "python -m benchmarks.parity --original /path/to/MStein transplant" in run.stdout
    for command in ("transplant", "curves", "evaluate", "dropout", "views", "bisect", "band"):
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        assert stop.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: python -m benchmarks.parity {command} ")


@pytest.mark.parametrize("command", ["views", "dropout"])
def test_distribution_checks_need_five_draws(tmp_path, capsys, command):
    data = tmp_path / "d.txt"
    data.write_text("1 1 2 3 4\n")
    with pytest.raises(SystemExit) as stop:
        main(["--original", str(tmp_path), "--data", str(data), command, "--draws", "4"])
    assert stop.value.code == 2 and "--draws must be >= 5" in capsys.readouterr().err


# -- bisect (its pieces that need no original code) --------------------------------------------------
def test_bisect_parts_are_checked():
    assert parse_parts("model,views,views") == ["views", "model"]  # canonical order, duplicates dropped
    assert parse_parts("none") == [] and parse_parts("") == []
    with pytest.raises(Exception, match="unknown part.*optimizer"):
        parse_parts("views,optimizer")


def test_pad_left_and_unpadded_rows():
    x = torch.tensor([[1, 2], [0, 3]])
    assert pad_left(x, 4).tolist() == [[0, 0, 1, 2], [0, 0, 0, 3]]
    assert pad_left(x, 2) is x
    with pytest.raises(ValueError, match="do not fit"):
        pad_left(x, 1)
    full = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 4], [0, 0, 0, 0]])
    assert unpadded_rows(full, torch.tensor([2, 4, 0])) == [[5, 6], [7, 8, 9, 4], []]


def test_original_views_lays_out_first_views_then_second_views():
    class Maker:  # the original dataset's contract: two tensors of max_len ids per input
        def _one_pair_data_augmentation(self, items):
            first = [0] * (5 - len(items)) + items
            return [torch.tensor(first), torch.tensor([0] * 4 + [len(items)])]

    full = torch.tensor([[0, 1, 2], [3, 4, 5]])
    views = original_views(Maker(), full, torch.tensor([2, 3]), 5)
    assert views.tolist() == [[0, 0, 0, 1, 2], [0, 0, 3, 4, 5], [0, 0, 0, 0, 2], [0, 0, 0, 0, 3]]


def test_python_negatives_are_uniform_over_the_items_never_had():
    import random

    rng = random.Random(int(np.random.default_rng().integers(1 << 31)))
    n_items = 6
    histories = [{1, 2, 3}, {6}]
    sample = python_negatives(histories, rng)
    targets = torch.tensor([[0, 1, 2], [0, 0, 6]])
    counts = torch.zeros(2, n_items + 1)
    for _ in range(600):
        neg = sample(targets, torch.tensor([0, 1]), None, n_items, None)
        assert neg[0, 0] == 0 and neg[1, 0] == 0 and neg[1, 1] == 0  # padding targets
        for u, cols in ((0, (1, 2)), (1, (2,))):
            for c in cols:
                counts[u, int(neg[u, c])] += 1
    assert counts[0, :4].sum() == 0 and counts[1, 0] == 0 and counts[1, 6] == 0  # never an item the user had
    # user 0: 1200 draws over items 4-6 (400 expected each, sd ~16); user 1: 600 over 1-5 (120, sd ~10)
    assert ((counts[0, 4:] - 400).abs() < 80).all()
    assert ((counts[1, 1:6] - 120).abs() < 50).all()


def test_bisect_refuses_a_curves_run_of_another_seed(tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_text("1 1 2 3 4\n")
    against = _curves_file(tmp_path / "c", 2, [0.1, 0.2], [0.1, 0.2])
    code = main(["--original", str(tmp_path), "--data", str(data), "--seed", "1", "bisect", "--epochs", "2",
                        "--against", str(against), "--output", str(tmp_path / "out")])
    assert code == 2 and "of seed 2, not --seed 1" in capsys.readouterr().err
    code = main(["--original", str(tmp_path), "--data", str(data), "--seed", "2", "bisect", "--epochs", "3",
                        "--against", str(against), "--output", str(tmp_path / "out")])
    assert code == 2 and "fewer than --epochs 3" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def test_bisect_refuses_losses_with_model(tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_text("1 1 2 3 4\n")
    against = _curves_file(tmp_path / "c", 1, [0.1, 0.2], [0.1, 0.2])
    code = main(["--original", str(tmp_path), "--data", str(data), "bisect", "--swap", "model,losses",
                        "--epochs", "2", "--against", str(against), "--output", str(tmp_path / "out")])
    assert code == 2 and "give one of losses, model" in capsys.readouterr().err


def test_bisect_refuses_init_with_model(tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_text("1 1 2 3 4\n")
    assert parse_parts("model,init,views") == ["views", "init", "model"]
    code = main(["--original", str(tmp_path), "--data", str(data), "bisect", "--swap", "init,model",
                        "--epochs", "2", "--output", str(tmp_path / "out")])
    assert code == 2 and "give one of init, model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_original_weights_come_back_into_ours_row_by_row():
    # the reverse of copy_weights (bisect --swap init, evaluate): every parameter of ours takes the
    # stand-in's values, the fused qkv pieces included; the original's extra item row is left out
    ours = _model()
    original = _stand_in(ours)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in original.parameters():
            p.normal_()
    pairs = parameter_pairs(ours, original)
    load_original_weights(pairs, ours, original.state_dict())
    mine, theirs = dict(ours.named_parameters()), dict(original.named_parameters())
    for pair in pairs:
        piece = our_piece(mine[pair.ours], pair)
        assert torch.equal(piece, theirs[pair.original][:piece.shape[0]]), pair
    assert {pair.ours for pair in pairs} == set(mine)  # nothing of ours left at its own init...
    covered = _rows_covered(pairs)
    for name, p in mine.items():  # ... not even some rows of a fused parameter
        assert covered.get(name, p.shape[0]) == p.shape[0], name
    with pytest.raises(ParityError, match="not a CoDistSAModel state_dict"):
        load_original_weights(pairs, ours, {"item_mean_embeddings.weight": torch.zeros(1)})


def test_trained_weights_load_from_our_checkpoint_and_are_checked(tmp_path):
    from mstein_fast.checkpoint import make_checkpoint
    from mstein_fast.data import load_sequences

    data_file = tmp_path / "d.txt"
    data_file.write_text("".join(f"{u} " + " ".join(str(1 + (u * 3 + k) % 10) for k in range(5)) + "\n"
                                 for u in range(1, 5)))
    data = load_sequences(str(data_file))
    assert data.n_items == 10
    trained = _model()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "last.pt"
    torch.save(make_checkpoint(_cfg(), data, trained, epoch=7,
                               best_score=0.1, best_epoch=7, bad_epochs=0), path)
    fresh = _model().double()
    assert load_trained_weights(fresh, str(path), 10) == 7
    for (name, a), (_, b) in zip(trained.named_parameters(), fresh.named_parameters()):
        assert b.dtype == torch.float64 and torch.equal(a.double(), b), name
    with pytest.raises(ParityError, match="11 items"):
        load_trained_weights(_model(), str(path), 11)
    default = TrainConfig(model="mstein", hidden_size=8, num_attention_heads=2, max_seq_length=6,
                          num_hidden_layers=2, backend="torch").validate()
    torch.save(make_checkpoint(default, data, trained, epoch=7, best_score=0.1, best_epoch=7, bad_epochs=0), path)
    with pytest.raises(ParityError, match="compat 'none'"):
        load_trained_weights(_model(), str(path), 10)
