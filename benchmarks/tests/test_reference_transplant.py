"""benchmarks/reference_transplant.py: this package's side draws every weight (so that a tensor the
mapping forgets or swaps changes the reference's scores), the arguments are checked, and, where a
reference interpreter is named by RECBOLE_PYTHON (and the DuoRec checkout by DUOREC_REPO), the
whole transplant agrees to float64 rounding."""

from __future__ import annotations

import importlib
import os

import pytest
import torch


@pytest.fixture(scope="module")
def transplant():
    return importlib.import_module("benchmarks.reference_transplant")


@pytest.mark.parametrize("model", ["bprmf", "sasrec", "bert4rec", "cl4srec", "duorec"])
def test_our_side_draws_every_weight_and_scores_every_item(transplant, model):
    side = transplant.ours(model, seed=3)
    assert side["scores"].shape == (transplant.BATCH, transplant.N_ITEMS)
    assert side["scores"].dtype == torch.float64 and torch.isfinite(side["scores"]).all()
    assert side["seqs"].shape[1] == side["config"]["max_seq_length"]  # full windows: no padding
    assert side["seqs"].min() >= 1 and side["seqs"].max() <= transplant.N_ITEMS
    for name, value in side["state"].items():
        if value.is_floating_point():
            default = 1.0 if name.endswith("norm.weight") else 0.0
            assert (value != default).float().mean() > 0.9, name  # not left at an initial constant
    again = transplant.ours(model, seed=3)
    torch.testing.assert_close(again["scores"], side["scores"], rtol=0, atol=0)  # seeded


def test_arguments_are_checked(transplant):
    with pytest.raises(SystemExit, match="no reference transplant for .'caser'."):
        transplant.main(["--models", "caser"])
    with pytest.raises(SystemExit, match="--reference-repo"):
        transplant.main(["--models", "duorec"])


@pytest.mark.skipif(not os.environ.get("RECBOLE_PYTHON"), reason="needs RECBOLE_PYTHON, a venv with recbole==1.2.1")
def test_same_weights_same_scores_as_the_references(transplant):
    models = ["bprmf", "sasrec", "bert4rec"] + (["cl4srec", "duorec"] if os.environ.get("DUOREC_REPO") else [])
    args = ["--models", ",".join(models), "--reference-python", os.environ["RECBOLE_PYTHON"]]
    if os.environ.get("DUOREC_REPO"):
        args += ["--reference-repo", os.environ["DUOREC_REPO"]]
    assert transplant.main(args) == 0
