"""The typed contracts between the run's TrainConfig and what it builds (mstein_fast/contracts.py):
a model reads a ModelConfig, the augmenter an AugmentConfig, each exactly the keys it reads, with
the TrainConfig's types and defaults; a TrainConfig passed instead is a TypeError."""

from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest

import mstein_fast
from mstein_fast.augment import Augmenter
from mstein_fast.config import FIELDS, TrainConfig
from mstein_fast.contracts import MODEL_NAMES, AugmentConfig, ModelConfig, keys_of
from mstein_fast.models import MODELS, SASRec, STOSA, build_model

PACKAGE = pathlib.Path(mstein_fast.__file__).parent


def keys_read(paths: list[pathlib.Path]) -> set[str]:
    """Every ``cfg.<key>`` / ``model_cfg.<key>`` read in ``paths``; fails on ``getattr(cfg, ...)``."""
    keys = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("cfg", "model_cfg"):
                keys.add(node.attr)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and node.args \
                    and getattr(node.args[0], "id", None) in ("cfg", "model_cfg"):
                raise AssertionError(f"{path.name}:{node.lineno}: getattr on the config; read the typed field")
    return keys


@pytest.mark.parametrize("contract", [ModelConfig, AugmentConfig])
def test_every_field_is_the_train_config_key_with_its_type_and_default(contract):
    for f in dataclasses.fields(contract):
        assert f.name in FIELDS, f.name
        assert f.type == FIELDS[f.name].type, f.name
        assert f.default == FIELDS[f.name].default, f.name


@pytest.mark.parametrize("contract, paths", [
    (ModelConfig, sorted((PACKAGE / "models").glob("*.py"))),
    (AugmentConfig, [PACKAGE / "augment.py"]),
], ids=["models", "augment"])
def test_the_contract_holds_exactly_the_keys_its_readers_read(contract, paths):
    # compat is read through compat.original_compat(cfg)
    assert keys_read(paths) | {"compat"} == set(keys_of(contract))


def test_the_builders_copy_the_keys():
    cfg = TrainConfig(model="coserec", hidden_size=32, init_mean=0.5, compat="original", tao=0.4, backend="torch")
    model_cfg, augment_cfg = cfg.model_config(), cfg.augment_config()
    assert all(getattr(model_cfg, k) == getattr(cfg, k) for k in keys_of(ModelConfig))
    assert all(getattr(augment_cfg, k) == getattr(cfg, k) for k in keys_of(AugmentConfig))
    assert TrainConfig().model_config() == ModelConfig() and TrainConfig().augment_config() == AugmentConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        model_cfg.hidden_size = 8


def test_the_model_names_live_in_one_place():
    assert tuple(MODELS) == MODEL_NAMES
    assert FIELDS["model"].metadata["choices"] == sorted(MODEL_NAMES)


@pytest.mark.parametrize("build", [
    lambda cfg: build_model("mstein", 10, cfg),
    lambda cfg: STOSA(10, cfg),
    lambda cfg: SASRec(10, cfg),
    lambda cfg: Augmenter(cfg),
], ids=["build_model", "STOSA", "SASRec", "Augmenter"])
def test_a_train_config_is_a_type_error(build):
    with pytest.raises(TypeError, match=r"got TrainConfig: pass cfg\.(model|augment)_config\(\)"):
        build(TrainConfig())
    with pytest.raises(TypeError, match="got dict"):
        build({"hidden_size": 8})


def test_the_component_applies_what_compat_original_implies():
    model = build_model("mstein", 10, ModelConfig(hidden_size=8, compat="original", backend="torch"))
    assert model.compat and model.mean_stream_typo  # (the padding and the InfoNCE read model.compat itself)
    augmenter = Augmenter(AugmentConfig(beta=0.2, gamma=0.5, compat="original"))
    assert augmenter.original_windows and augmenter.beta == 0.5


@pytest.mark.parametrize("name, mean", [("mstein", 0.01), ("stosa", 0.01), ("sasrec", 0.0), ("coserec", 0.0),
                                        ("coserec-wdm", 0.0)])
def test_init_mean_none_is_the_model_s_own_default(name, mean):
    assert build_model(name, 10, ModelConfig(hidden_size=8, backend="torch")).init_mean == mean
    assert build_model(name, 10, ModelConfig(hidden_size=8, backend="torch", init_mean=0.3)).init_mean == 0.3
