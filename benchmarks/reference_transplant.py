"""Same weights, same scores: this package's baseline models against their reference implementations.

    python benchmarks/reference_transplant.py --reference-python /path/to/recbole-venv/bin/python \
        [--reference-repo /path/to/DuoRec] [--models sasrec,bert4rec,bprmf,cl4srec,duorec]

For each model, this package's network is built with its default settings in float64, every
parameter drawn at random (LayerNorm scales and all biases too, so that a swapped or dropped tensor
shows), and its full-ranking scores of every item are computed in evaluation mode for histories of
``max_seq_length`` items (no padding: the two sides place a history's positions differently, left-
against right-aligned, and agree only on full windows). The same weights are then loaded into the
reference's model (RecBole 1.2.1: BPR, SASRec, BERT4Rec; the DuoRec repository, a RecBole 0.2.1
fork: CL4SRec, DuoRec), in the reference's own interpreter, which scores the same histories with
its ``full_sort_predict`` path. The largest relative difference over all scores is printed per
model; float64 leaves room only for rounding (the limit is 1e-9).

Caser is left out: RecBole 1.2.1's Caser is not the paper's network (docs/models.md says how), so
its weights have no place in RecBole's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REFERENCE_OF = {"bprmf": ("recbole", "BPR"), "sasrec": ("recbole", "SASRec"), "bert4rec": ("recbole", "BERT4Rec"),
                "cl4srec": ("duorec", "CL4SRec"), "duorec": ("duorec", "DuoRec")}
LIMIT = 1e-9
N_ITEMS, N_USERS, BATCH = 57, 9, 6


# --- this package's side

def ours(model: str, seed: int = 0) -> dict:
    """This package's ``model`` with random weights, histories and its scores (float64)."""
    import torch

    from mstein_fast.config import build_config
    from mstein_fast.models import build_model

    cfg = build_config(None, {"model": model})[0]
    gen = torch.Generator().manual_seed(seed)
    net = build_model(model, N_ITEMS, cfg.model_config(), n_users=N_USERS).double().eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            base = 1.0 if name.endswith("norm.weight") else 0.0
            p.copy_(base + 0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    L = cfg.max_seq_length
    seqs = torch.randint(1, N_ITEMS + 1, (BATCH, L), generator=gen)
    users = torch.randint(0, N_USERS, (BATCH,), generator=gen)
    with torch.no_grad():
        scores = net.score_items(seqs, users=users if net.needs_users else None)
    return {"state": {k: v.clone() for k, v in net.state_dict().items()}, "seqs": seqs, "users": users,
            "scores": scores, "config": {"hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
                                         "num_attention_heads": cfg.num_attention_heads,
                                         "max_seq_length": L, "mask_ratio": getattr(cfg, "mask_ratio", 0.2)}}


# --- the reference's side (its interpreter: imports only the standard library, torch and the reference)

class _Dataset:
    """What the references' model constructors read of a data set: the number of ids of a field
    (RecBole counts the padding id 0)."""

    def __init__(self, n_items: int, n_users: int):
        self.counts = {"item_id": n_items + 1, "user_id": n_users + 1}

    def num(self, field):
        return self.counts[field]


def _load_encoder(ref, state: dict, layers: int) -> None:
    """Map this package's transformer weights onto RecBole's ``trm_encoder`` (q, k, v from one qkv)."""
    import torch

    with torch.no_grad():
        ref.position_embedding.weight.copy_(state["position_emb.weight"])
        ref.LayerNorm.weight.copy_(state["embed_norm.weight"])
        ref.LayerNorm.bias.copy_(state["embed_norm.bias"])
        for i in range(layers):
            block = ref.trm_encoder.layer[i]
            att, ffn = block.multi_head_attention, block.feed_forward
            w, b = state[f"attention.{i}.qkv.weight"], state[f"attention.{i}.qkv.bias"]
            for j, lin in enumerate((att.query, att.key, att.value)):
                lin.weight.copy_(w.chunk(3, 0)[j])
                lin.bias.copy_(b.chunk(3, 0)[j])
            for theirs, mine in ((att.dense, f"attention.{i}.dense"), (att.LayerNorm, f"attention.{i}.norm"),
                                 (ffn.dense_1, f"ffn.{i}.dense_1"), (ffn.dense_2, f"ffn.{i}.dense_2"),
                                 (ffn.LayerNorm, f"ffn.{i}.norm")):
                theirs.weight.copy_(state[mine + ".weight"])
                theirs.bias.copy_(state[mine + ".bias"])


def reference_side(spec_path: str) -> None:
    """Build the reference's model, load the saved weights, score the saved histories, save the scores."""
    import torch

    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    saved = torch.load(spec["input"], weights_only=True)
    if spec["reference"] == "duorec":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # PYTHONSAFEPATH may leave it out
        from reference_runs import restore_numpy_aliases

        restore_numpy_aliases()
        sys.path.insert(0, spec["repo"])
    from recbole.config import Config
    from recbole.utils import get_model

    ours_cfg, name = saved["config"], spec["reference_model"]
    config_dict = {"hidden_size": ours_cfg["hidden_size"], "embedding_size": ours_cfg["hidden_size"],
                   "n_layers": ours_cfg["num_hidden_layers"], "n_heads": ours_cfg["num_attention_heads"],
                   "inner_size": 4 * ours_cfg["hidden_size"], "MAX_ITEM_LIST_LENGTH": ours_cfg["max_seq_length"],
                   "mask_ratio": ours_cfg["mask_ratio"], "use_gpu": False, "device": "cpu", "loss_type": "CE",
                   "train_batch_size": BATCH, "state": "WARNING", "contrast": "us_x", "sim": "dot", "tau": 1,
                   "lmd": 0.1, "lmd_sem": 0.1}
    if spec["reference"] == "recbole" and name != "BPR":
        config_dict["train_neg_sample_args"] = None  # RecBole 1.2.1 refuses negatives with CE
    else:
        config_dict["training_neg_sample_num"] = 0
    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line too
    config = Config(model=name, dataset="transplant", config_dict=config_dict)
    config["device"] = torch.device("cpu")
    ref = get_model(name)(config, _Dataset(N_ITEMS, N_USERS)).double().eval()
    state, seqs = saved["state"], saved["seqs"]
    with torch.no_grad():
        rows = state["item_emb.weight"].shape[0]  # BERT4Rec's and CL4SRec's extra mask row is left as drawn
        ref.item_embedding.weight[:rows].copy_(state["item_emb.weight"])
        if name == "BPR":
            ref.user_embedding.weight[1:].copy_(state["user_emb.weight"])
            interaction = {"user_id": saved["users"] + 1}
        else:
            _load_encoder(ref, state, ours_cfg["num_hidden_layers"])
            interaction = {"item_id_list": seqs, "item_length": torch.full((seqs.shape[0],), seqs.shape[1])}
        if name == "BERT4Rec":
            ref.output_ffn.weight.copy_(state["out_dense.weight"])
            ref.output_ffn.bias.copy_(state["out_dense.bias"])
            ref.output_ln.weight.copy_(state["out_norm.weight"])
            ref.output_ln.bias.copy_(state["out_norm.bias"])
            ref.output_bias.copy_(state["out_bias"])
        scores = ref.full_sort_predict(interaction).reshape(seqs.shape[0], -1)  # BPR's comes flat
    torch.save({"scores": scores[:, 1:N_ITEMS + 1].contiguous()}, spec["output"])  # column 0: the padding item


# --- the driver

def compare(model: str, python: str, repo: str | None, workdir: str) -> float:
    """The largest relative difference between the two sides' scores of ``model``."""
    import torch

    reference, name = REFERENCE_OF[model]
    mine = ours(model)
    data = os.path.join(workdir, f"{model}.pt")
    torch.save(mine, data)
    spec = {"reference": reference, "reference_model": name, "input": data, "repo": repo,
            "output": os.path.join(workdir, f"{model}.reference.pt")}
    spec_path = os.path.join(workdir, f"{model}.json")
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    subprocess.run([python, os.path.abspath(__file__), "_reference_side", spec_path], check=True, cwd=workdir)
    theirs = torch.load(spec["output"], weights_only=True)["scores"]
    if theirs.shape != mine["scores"].shape:
        raise SystemExit(f"error: {model}: scores of shape {tuple(theirs.shape)} against ours "
                         f"{tuple(mine['scores'].shape)}")
    scale = mine["scores"].abs().max().clamp_min(1e-300)
    return float((theirs - mine["scores"]).abs().max() / scale)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_reference_side"]:
        reference_side(argv[1])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(REFERENCE_OF), help=f"comma-separated, of {list(REFERENCE_OF)}")
    parser.add_argument("--reference-python", default=os.environ.get("RECBOLE_PYTHON", "python3"),
                        help="the interpreter of the virtual environment where recbole==1.2.1 is installed")
    parser.add_argument("--reference-repo", help="a checkout of github RuihongQiu/DuoRec (for cl4srec, duorec)")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in REFERENCE_OF]
    if unknown:
        raise SystemExit(f"error: no reference transplant for {unknown}; choose among {list(REFERENCE_OF)}")
    if any(REFERENCE_OF[m][0] == "duorec" for m in models) and not args.reference_repo:
        raise SystemExit("error: cl4srec and duorec need --reference-repo (a checkout of github RuihongQiu/DuoRec)")
    repo = os.path.abspath(args.reference_repo) if args.reference_repo else None
    worst = 0.0
    with tempfile.TemporaryDirectory() as workdir:
        for model in models:
            error = compare(model, args.reference_python, repo, workdir)
            worst = max(worst, error)
            reference, name = REFERENCE_OF[model]
            print(f"{model:9s} vs {reference} {name:9s} max relative difference of the scores {error:.2e} "
                  f"({'ok' if error <= LIMIT else 'ABOVE ' + format(LIMIT, '.0e')})")
    return 0 if worst <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
