"""Which class builds each model: the names are :data:`mstein_fast.contracts.MODEL_NAMES` (the
``model`` key's choices), and :data:`MODELS` must cover exactly those (checked on import)."""

from __future__ import annotations

from mstein_fast.contracts import MODEL_NAMES, ModelConfig, require
from mstein_fast.models.base import _Recommender
from mstein_fast.models.bert4rec import BERT4Rec
from mstein_fast.models.bprmf import BPRMF
from mstein_fast.models.caser import Caser
from mstein_fast.models.cl4srec import CL4SRec
from mstein_fast.models.duorec import DuoRec
from mstein_fast.models.sasrec import SASRec
from mstein_fast.models.stosa import STOSA

# model name -> (backbone, contrastive objective)
MODELS: dict[str, tuple[str, str | None]] = {
    "mstein": ("stosa", "wasserstein"),
    "stosa": ("stosa", None),
    "sasrec": ("sasrec", None),
    "coserec": ("sasrec", "dot"),
    "coserec-wdm": ("sasrec", "wasserstein-split"),
    "bprmf": ("bprmf", None),
    "caser": ("caser", None),
    "bert4rec": ("bert4rec", None),
    "cl4srec": ("cl4srec", "dot-last"),
    "duorec": ("duorec", "dot-last"),
}
BACKBONES: dict[str, type[_Recommender]] = {"stosa": STOSA, "sasrec": SASRec, "bprmf": BPRMF, "caser": Caser,
                                            "bert4rec": BERT4Rec, "cl4srec": CL4SRec, "duorec": DuoRec}

if tuple(MODELS) != MODEL_NAMES:
    raise ImportError(f"mstein_fast.models.registry builds {tuple(MODELS)}, but the configuration offers "
                      f"{MODEL_NAMES} (mstein_fast.contracts.MODEL_NAMES): add the model to both")


def needs_users(name: str) -> bool:
    """Whether model ``name`` has a user embedding (its scores need the users' rows, and
    :func:`build_model` the number of users)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return BACKBONES[MODELS[name][0]].needs_users


def build_model(name: str, n_items: int, model_cfg: ModelConfig, n_users: int | None = None) -> _Recommender:
    """The model called ``name`` (one of :data:`MODEL_NAMES`) for items ``1..n_items``, configured
    by ``model_cfg`` (``TrainConfig.model_config()``; a TrainConfig itself is a TypeError).

    ``n_users``: the number of users of the training data, required by the models with a user
    embedding (``needs_users``: bprmf, caser), whose user rows are ``0..n_users - 1``; the others
    ignore it."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    require(model_cfg, ModelConfig, "build_model")
    backbone, contrastive = MODELS[name]
    cls = BACKBONES[backbone]
    if cls.needs_users:
        if n_users is None:
            raise ValueError(f"model {name!r} has a user embedding: build_model needs n_users (the training data's)")
        return cls(n_items, model_cfg, contrastive, n_users=n_users)
    return cls(n_items, model_cfg, contrastive)
