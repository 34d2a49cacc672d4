"""The original research code (github zfan20/MStein) in this process: its ``modules``, ``models``
and ``trainers`` imported from a checkout the user gives (numpy's removed aliases restored, an
empty ``gensim`` when none is installed), the argument namespace its code reads, and
:class:`OriginalSide`, its model with the trainer functions that compute the MStein losses."""

from __future__ import annotations

import importlib
import os
import sys
import types

import numpy as np
import torch

from .common import ParityError
from .original_process import check_checkout

ORIGINAL_MODULES = ("modules", "models", "utils", "data_augmentation", "datasets", "trainers")
NUMPY_ALIASES = (("float", float), ("int", int), ("bool", bool), ("object", object), ("str", str),
                 ("complex", complex), ("long", int))


def import_original(directory: str, deps: list[str]) -> types.SimpleNamespace:
    """The original's ``modules``, ``models`` and ``trainers`` imported from ``directory`` (with the
    numpy aliases restored and an empty ``gensim`` if none is installed)."""
    directory = check_checkout(directory)
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
        """The original's ``finetune`` outputs ``(mean, cov)``, each ``[B, L, H]``."""
        mean, cov, _ = self.model.finetune(seqs)
        return mean, cov

    def rec_pieces(self, seqs, targets, negatives):
        """The original trainer's ``(bpr, pvn)`` losses of one batch."""
        mean, cov = self.encode(seqs)
        bpr, _auc, pvn = self.cls.bpr_optimization(self.trainer, mean, cov, targets, negatives)
        return bpr, pvn

    def cl(self, views):
        """The original trainer's InfoNCE between the two halves of ``views`` (``[2B, L]``)."""
        b = views.shape[0] // 2
        return self.cls._one_pair_contrastive_learning(self.trainer, [views[:b], views[b:]])
