"""Side by side with a reference implementation: the same data, split and full ranking, both sides
trained to their own early stopping; quality (test Recall@10 / NDCG@10) and speed (epoch time, and
the wall time each side needs to reach the reference's best validation NDCG@10).

    python benchmarks/reference_runs.py run --model bprmf --data Office_Products.txt \
        --seeds 1,2,3 --output /tmp/ref_office [--reference-python /path/to/recbole-venv/bin/python]
    python benchmarks/reference_runs.py table /tmp/ref_office -o benchmarks/results/reference_office.csv

The reference (``--reference``) is RecBole 1.2.1 (``recbole``: ``bprmf`` -> BPR, ``caser`` -> Caser,
``sasrec`` -> SASRec, ``bert4rec`` -> BERT4Rec), run in its own virtual environment (never a
dependency of this package; docs/development.md says how to make one), or the authors' code of
DuoRec (``duorec``: github RuihongQiu/DuoRec, a fork of RecBole 0.2.1 holding ``cl4srec`` ->
CL4SRec and ``duorec`` -> DuoRec; ``--reference-repo`` names a checkout, which goes first on the
worker's path, in the same virtual environment). The DuoRec code predates numpy 1.24 and torch
2.6; the worker shims, at run time, what they removed: numpy's ``np.bool``/``np.float``/``np.int``
/``np.long``/``np.object`` aliases, a ragged ``np.array`` of index lists building an object array
(numpy < 1.24 did, with a warning; its supervised-positive table is one), and ``torch.load``
loading its own checkpoint with ``weights_only=False``. Its ``run_seq.py`` never seeds; the worker
seeds with RecBole's ``init_seed``. The data file (``user item item ...`` lines, in time
order) is converted to RecBole's atomic ``.inter`` file with the position as the time stamp, and
RecBole splits it leave-one-out in time order (``LS: valid_and_test``, ``order: TO``) with full
ranking (``mode: full``): the same split as this package's.

Hyperparameters: this package's defaults for the model (its ``config.json``) are handed to RecBole
wherever RecBole has the knob (hidden size, layers, heads, dropouts, learning rate, weight decay,
maximum length, Caser's L / n_v / n_h, BERT4Rec's mask ratio); the knobs only one side has keep that
side's default. The batch size is not shared: it counts different things (RecBole: interactions for
BPR, prefixes for the sequential models; this package: users' whole sequences), and each side early-stops by its own rule (RecBole: ``stopping_step`` evaluations without a
better ``NDCG@10``; this package: ``patience`` epochs on its ``early_stop_metric``). What an epoch is
differs: RecBole's sequential models train on every prefix of every training sequence, this
package's SASRec-style models put a target at every position of one sequence per user, so the epoch
times are reported as they are, and the time to the reference's best validation NDCG@10 is the
comparison of work done.

Rounds alternate the two sides seed by seed (reference, ours, reference, ours, ...) with the same
thread count. Each run is a subprocess writing ``run.json``; a finished run is kept, so a killed
``run`` continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

RECBOLE_MODELS = {"bprmf": "BPR", "caser": "Caser", "sasrec": "SASRec", "bert4rec": "BERT4Rec"}
DUOREC_MODELS = {"cl4srec": "CL4SRec", "duorec": "DuoRec"}
REFERENCES = {"recbole": RECBOLE_MODELS, "duorec": DUOREC_MODELS}
SEQUENTIAL = ("Caser", "SASRec", "BERT4Rec")
# this package's config key -> RecBole's, per RecBole model (only the knobs both sides have)
SHARED_KNOBS = {
    "BPR": {"hidden_size": "embedding_size", "lr": "learning_rate",
           },
    "Caser": {"hidden_size": "embedding_size", "lr": "learning_rate",
              "caser_window": "MAX_ITEM_LIST_LENGTH", "caser_nv": "nv", "caser_nh": "nh",
              "hidden_dropout_prob": "dropout_prob",},
    "SASRec": {"hidden_size": "hidden_size", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
               "hidden_dropout_prob": "hidden_dropout_prob", "attention_probs_dropout_prob": "attn_dropout_prob",
               "lr": "learning_rate", "max_seq_length": "MAX_ITEM_LIST_LENGTH",
               "initializer_range": "initializer_range"},
    "BERT4Rec": {"hidden_size": "hidden_size", "num_hidden_layers": "n_layers",
                 "num_attention_heads": "n_heads", "hidden_dropout_prob": "hidden_dropout_prob",
                 "attention_probs_dropout_prob": "attn_dropout_prob", "lr": "learning_rate",
                 "max_seq_length": "MAX_ITEM_LIST_LENGTH",
                 "mask_ratio": "mask_ratio", "initializer_range": "initializer_range"},
    # the DuoRec repository's two models; cf_weight is CL4SRec's lmd and DuoRec's lmd_sem (docs/models.md)
    "CL4SRec": {"hidden_size": "hidden_size", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
                "hidden_dropout_prob": "hidden_dropout_prob", "attention_probs_dropout_prob": "attn_dropout_prob",
                "lr": "learning_rate", "max_seq_length": "MAX_ITEM_LIST_LENGTH",
                "initializer_range": "initializer_range", "batch_size": "train_batch_size", "cf_weight": "lmd",
                "dot_temperature": "tau"},
    "DuoRec": {"hidden_size": "hidden_size", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
               "hidden_dropout_prob": "hidden_dropout_prob", "attention_probs_dropout_prob": "attn_dropout_prob",
               "lr": "learning_rate", "max_seq_length": "MAX_ITEM_LIST_LENGTH",
               "initializer_range": "initializer_range", "batch_size": "train_batch_size",
               "cf_weight": "lmd_sem", "dot_temperature": "tau"},
}
COLUMNS = ("model", "reference", "side", "seed", "threads", "epochs_run", "best_epoch", "best_valid_ndcg@10",
           "test_recall@10", "test_ndcg@10", "epoch_train_s", "epoch_s", "time_to_ref_best_s", "reached_ref_best",
           "settings")


def read_sequences(path: str) -> list[tuple[str, list[str]]]:
    """The ``user item item ...`` lines of ``path`` (items in time order)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise SystemExit(f"error: {path}:{n}: a user with no items")
            rows.append((parts[0], parts[1:]))
    return rows


def write_atomic_inter(data: str, directory: str, name: str) -> None:
    """``directory/name/name.inter``: one row per interaction, the position as the time stamp."""
    target = os.path.join(directory, name)
    os.makedirs(target, exist_ok=True)
    path = os.path.join(target, f"{name}.inter")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, items in read_sequences(data):
            for t, item in enumerate(items):
                f.write(f"{user}\t{item}\t{t}\n")
    os.replace(tmp, path)


# --- the RecBole side: runs under the reference's interpreter, imports only the standard library and
# RecBole (and torch through it)

def _load_checkpoints_as_before_torch_2_6() -> None:
    """The references load their own checkpoints (configs included), written before torch's
    ``weights_only`` default."""
    import torch

    original_load = torch.load

    def load(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return original_load(*args, **kwargs)

    torch.load = load


def _fit_and_test(trainer, train_data, valid_data, test_data, output: str) -> None:
    """Train with the reference's own early stopping, test its best model, write ``output``."""
    curve: list[dict] = []
    start = time.perf_counter()
    epoch_train: list[float] = []
    original_train_epoch = trainer._train_epoch

    def timed_train_epoch(*args, **kwargs):
        t0 = time.perf_counter()
        out = original_train_epoch(*args, **kwargs)
        epoch_train.append(time.perf_counter() - t0)
        return out

    trainer._train_epoch = timed_train_epoch

    def callback(epoch_idx, valid_score):
        curve.append({"epoch": epoch_idx + 1, "valid_ndcg@10": float(valid_score),
                      "elapsed_s": time.perf_counter() - start})

    best_score, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=callback)
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    best = max(curve, key=lambda r: r["valid_ndcg@10"])
    result = {"curve": curve, "epoch_train_s": epoch_train, "best_epoch": best["epoch"],
              "best_valid_ndcg@10": float(best_score),
              "test": {"recall@10": float(test["recall@10"]), "ndcg@10": float(test["ndcg@10"]),
                       "mrr@10": float(test["mrr@10"])}}
    with open(output + ".tmp", "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(output + ".tmp", output)


def recbole_worker(spec: dict) -> None:
    """Train and test one RecBole 1.2.1 model described by ``spec``; write its ``output``."""
    import torch

    _load_checkpoints_as_before_torch_2_6()
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    torch.set_num_threads(spec["threads"])
    config = Config(model=spec["reference_model"], dataset=spec["dataset"], config_dict=spec["config"])
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    _fit_and_test(trainer, train_data, valid_data, test_data, spec["output"])


def restore_numpy_aliases() -> None:
    """numpy's aliases of the builtin types removed in numpy 1.24 (``np.bool``, ``np.float``, ...),
    which the DuoRec code still uses."""
    import numpy as np

    for alias, kind in (("bool", bool), ("float", float), ("int", int), ("long", int), ("object", object)):
        if alias not in np.__dict__:
            setattr(np, alias, kind)


class _RaggedArrayNumpy:
    """numpy, except that ``array`` of ragged nested sequences builds a 1-D object array (numpy <
    1.24's behaviour, which the DuoRec code's supervised-positive table relies on)."""

    @staticmethod
    def array(obj, *args, **kwargs):
        import numpy as np

        try:
            return np.array(obj, *args, **kwargs)
        except ValueError:
            if args or kwargs or not isinstance(obj, list):
                raise
            out = np.empty(len(obj), dtype=object)
            for i, row in enumerate(obj):
                out[i] = row
            return out

    def __getattr__(self, name):
        import numpy as np

        return getattr(np, name)


def duorec_worker(spec: dict) -> None:
    """Train and test CL4SRec or DuoRec of the DuoRec repository (``spec["repo"]``, RecBole 0.2.1)."""
    import torch

    restore_numpy_aliases()
    _load_checkpoints_as_before_torch_2_6()
    sys.path.insert(0, spec["repo"])
    import recbole
    import recbole.data.dataset.sequential_dataset as sequential_dataset

    if not os.path.abspath(recbole.__file__).startswith(os.path.abspath(spec["repo"])):
        raise SystemExit(f"error: recbole was imported from {recbole.__file__}, not from {spec['repo']}")
    sequential_dataset.np = _RaggedArrayNumpy()
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    torch.set_num_threads(spec["threads"])
    config = Config(model=spec["reference_model"], dataset=spec["dataset"], config_dict=spec["config"])
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    _fit_and_test(trainer, train_data, valid_data, test_data, spec["output"])


# --- the driver (this package's interpreter)

def our_config(model: str, data: str) -> dict:
    """This package's settings for ``model`` on ``data``, as ``mstein-fast train`` would use them."""
    from mstein_fast.config import build_config

    return build_config(None, {"model": model, "data": data})[0].__dict__


def reference_config(reference: str, model: str, ours: dict, seed: int, epochs: int, stopping_step: int,
                     data_dir: str, checkpoint_dir: str) -> dict:
    """The reference's configuration: the shared protocol, then this package's values for the shared knobs."""
    name = REFERENCES[reference][model]
    config = {
        "data_path": data_dir, "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "metrics": ["Recall", "NDCG", "MRR"], "topk": [10], "valid_metric": "NDCG@10",
        "seed": seed, "reproducibility": True, "use_gpu": False, "device": "cpu", "show_progress": False,
        "checkpoint_dir": checkpoint_dir, "epochs": epochs, "stopping_step": stopping_step, "eval_step": 1,
        "eval_batch_size": 4096, "state": "WARNING",
    }
    if reference == "recbole":
        config.update({"eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full",
                                     "group_by": "user"}, "worker": 0})
        if name in SEQUENTIAL:
            config.update({"train_neg_sample_args": None, "loss_type": "CE"})
    else:  # RecBole 0.2.1's keys: leave-one-out in time order, full ranking; the file is already filtered
        config.update({"eval_setting": "TO_LS,full", "training_neg_sample_num": 0, "loss_type": "CE",
                       "min_user_inter_num": 0, "min_item_inter_num": 0, "log_dir": checkpoint_dir,
                       # the published command's (duorec.sh, seq.yaml): us_x, dot similarity
                       "contrast": "us_x", "sim": "dot", "lmd": 0.1, "lmd_sem": 0.1, "tau": 1})
    for ours_key, theirs in SHARED_KNOBS[name].items():
        if ours_key in ours:
            config[theirs] = ours[ours_key]
    config["weight_decay"] = ours.get("weight_decay", 0.0)  # Adam's, on both sides
    return config


def _curve_of_ours(run_dir: str) -> tuple[list[dict], list[float]]:
    curve, train = [], []
    elapsed = 0.0
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if "valid" not in row:
                continue
            elapsed += sum(row["time_s"].values())
            train.append(row["time_s"].get("train", 0.0))
            curve.append({"epoch": row["epoch"], "valid_ndcg@10": row["valid"]["ndcg@10"], "elapsed_s": elapsed})
    return curve, train


def run_ours(model: str, data: str, seed: int, threads: int, out: str, extra: list[str]) -> dict:
    """Train this package's ``model`` and return its curve, epoch times and test metrics."""
    run_dir = os.path.join(out, "run")
    cmd = [sys.executable, "-m", "mstein_fast", "train", "--model", model, "--data", data, "--seed", str(seed),
           "--num-threads", str(threads), "--output", run_dir, *extra]
    if os.path.exists(os.path.join(run_dir, "last.pt")):
        cmd.append("--resume")
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return result_of_ours(run_dir)


def result_of_ours(run_dir: str) -> dict:
    """The curve, epoch times and test metrics of this package's finished run ``run_dir``."""
    curve, train = _curve_of_ours(run_dir)
    with open(os.path.join(run_dir, "test_metrics.json"), encoding="utf-8") as f:
        test = json.load(f)
    test = test.get("test", test)
    best = max(curve, key=lambda r: r["valid_ndcg@10"])
    return {"curve": curve, "epoch_train_s": train, "best_epoch": best["epoch"],
            "best_valid_ndcg@10": best["valid_ndcg@10"],
            "test": {"recall@10": test["recall@10"], "ndcg@10": test["ndcg@10"]}}


def grid_run(grid: str, model: str, seed: int, ours: dict) -> str | None:
    """``grid/runs/<model>/seed<seed>`` of a ``mstein-fast compare`` output when that run is finished
    with the settings ``ours`` (and ``seed``); None when it is not finished; SystemExit when it holds
    other settings."""
    run_dir = os.path.join(grid, "runs", model, f"seed{seed}")
    if not os.path.isfile(os.path.join(run_dir, "test_metrics.json")):
        return None
    from mstein_fast.analysis import config_differences

    differ = config_differences(run_dir, {**ours, "seed": seed}, ignore=("data",))  # runtime keys ignored too
    if differ:
        raise SystemExit(f"error: {run_dir} was trained with other settings ({', '.join(differ[:5])})")
    return run_dir


def run_reference(reference: str, model: str, data: str, seed: int, threads: int, out: str, python: str,
                  epochs: int, stopping_step: int, ours: dict, repo: str | None = None) -> dict:
    """Train the reference's ``model`` in its own interpreter (``python``) and return what it wrote."""
    os.makedirs(out, exist_ok=True)
    data_dir = os.path.join(out, "data")
    write_atomic_inter(data, data_dir, "dataset")
    stale = os.path.join(data_dir, "dataset", "semantic_augmentation.npy")  # DuoRec's cache of positives
    if os.path.exists(stale):
        os.remove(stale)
    spec = {"reference": reference, "reference_model": REFERENCES[reference][model], "dataset": "dataset",
            "threads": threads, "output": os.path.join(out, "run.json"), "repo": repo,
            "config": reference_config(reference, model, ours, seed, epochs, stopping_step, data_dir,
                                       os.path.join(out, "saved"))}
    spec_path = os.path.join(out, "spec.json")
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=1)
    subprocess.run([python, os.path.abspath(__file__), "_reference_worker", spec_path], check=True, cwd=out,
                   env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    with open(spec["output"], encoding="utf-8") as f:
        return json.load(f)


def _done(path: str) -> dict | None:
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return None


def _save(obj: dict, path: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def run(args) -> int:
    models = REFERENCES[args.reference]
    if args.model not in models:
        raise SystemExit(f"error: --model must be one of {sorted(models)} for --reference {args.reference}")
    repo = None
    if args.reference == "duorec":
        if not args.reference_repo or not os.path.isfile(os.path.join(args.reference_repo, "recbole",
                                                                          "model", "sequential_recommender",
                                                                          "duorec.py")):
            raise SystemExit("error: --reference duorec needs --reference-repo, a checkout of github "
                             "RuihongQiu/DuoRec (holding recbole/model/sequential_recommender/duorec.py)")
        repo = os.path.abspath(args.reference_repo)
    data = os.path.abspath(args.data)
    ours_cfg = our_config(args.model, data)
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        for side in ("reference", "ours"):  # alternating rounds
            out = os.path.join(args.output, args.model, f"seed{seed}", side)
            os.makedirs(out, exist_ok=True)
            result_path = os.path.join(out, "result.json")
            if _done(result_path) is not None:
                continue
            print(f"[{args.model} seed {seed}] {side} ...", flush=True)
            t0 = time.perf_counter()
            threads = args.threads
            if side == "reference":
                result = run_reference(args.reference, args.model, data, seed, args.threads, out,
                                       args.reference_python, args.reference_epochs, args.stopping_step, ours_cfg,
                                       repo)
                with open(os.path.join(out, "spec.json"), encoding="utf-8") as f:
                    result["settings"] = json.load(f)["config"]
            else:
                reused = grid_run(args.ours_from, args.model, seed, ours_cfg) if args.ours_from else None
                if args.ours_from and not reused:
                    print(f"[{args.model} seed {seed}] ours: not finished in {args.ours_from} yet (run again "
                          "when it is)", flush=True)
                    continue
                if reused:
                    print(f"[{args.model} seed {seed}] ours: the finished run {reused}", flush=True)
                    result = result_of_ours(reused)
                    with open(os.path.join(reused, "config.json"), encoding="utf-8") as f:
                        threads = json.load(f)["num_threads"]
                else:
                    result = run_ours(args.model, data, seed, args.threads, out, args.extra)
                result["settings"] = {k: v for k, v in ours_cfg.items() if k in SHARED_KNOBS[models[args.model]]
                                      or k in ("epochs", "patience", "early_stop_metric")}
            result.update({"model": args.model, "reference": args.reference, "side": side, "seed": seed,
                           "threads": threads, "wall_s": time.perf_counter() - t0})
            _save(result, result_path)
    return 0


def rows_of(directory: str) -> list[dict]:
    """One CSV row per finished run under ``directory``."""
    results = []
    for root, _dirs, files in sorted(os.walk(directory)):
        if "result.json" in files:
            results.append(_done(os.path.join(root, "result.json")))
    ref_best = {(r["model"], r["seed"]): r["best_valid_ndcg@10"] for r in results if r["side"] == "reference"}
    rows = []
    for r in results:
        target = ref_best.get((r["model"], r["seed"]))
        reached = [c["elapsed_s"] for c in r["curve"] if target is not None and c["valid_ndcg@10"] >= target - 1e-12]
        epoch_s = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip([{"elapsed_s": 0.0}, *r["curve"]], r["curve"])]
        rows.append({
            "model": r["model"], "reference": r["reference"], "side": r["side"], "seed": r["seed"],
            "threads": r["threads"], "epochs_run": len(r["curve"]), "best_epoch": r["best_epoch"],
            "best_valid_ndcg@10": round(r["best_valid_ndcg@10"], 5),
            "test_recall@10": round(r["test"]["recall@10"], 5), "test_ndcg@10": round(r["test"]["ndcg@10"], 5),
            "epoch_train_s": round(statistics.median(r["epoch_train_s"]), 3) if r["epoch_train_s"] else "",
            "epoch_s": round(statistics.median(epoch_s), 3) if epoch_s else "",
            "time_to_ref_best_s": round(reached[0], 2) if reached else "",
            "reached_ref_best": bool(reached),
            "settings": json.dumps(r.get("settings", {}), sort_keys=True),
        })
    return rows


def table(args) -> int:
    rows = rows_of(args.directory)
    if not rows:
        raise SystemExit(f"error: no finished run under {args.directory}")
    out = sys.stdout if args.output in (None, "-") else open(args.output, "w", newline="", encoding="utf-8")
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    if out is not sys.stdout:
        out.close()
    # a summary on stderr: means over seeds per side
    by = {}
    for r in rows:
        by.setdefault((r["model"], r["side"]), []).append(r)
    for (model, side), rs in sorted(by.items()):
        rec = [r["test_recall@10"] for r in rs]
        ndcg = [r["test_ndcg@10"] for r in rs]
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        t = [r["time_to_ref_best_s"] for r in rs if r["time_to_ref_best_s"] != ""]
        print(f"{model:9s} {side:9s} seeds {len(rs)}  R@10 {statistics.mean(rec):.4f}+-{sd(rec):.4f}  "
              f"N@10 {statistics.mean(ndcg):.4f}+-{sd(ndcg):.4f}  epoch {statistics.median([r['epoch_s'] for r in rs]):.2f} s  "
              f"to ref best {statistics.median(t) if t else float('nan'):.1f} s ({len(t)}/{len(rs)} reached)",
              file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_reference_worker"]:
        with open(argv[1], encoding="utf-8") as f:
            spec = json.load(f)
        (duorec_worker if spec["reference"] == "duorec" else recbole_worker)(spec)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train both sides, seed by seed, alternating")
    p.add_argument("--model", required=True,
                   help="; ".join(f"{ref}: {', '.join(sorted(m))}" for ref, m in REFERENCES.items()))
    p.add_argument("--reference", default="recbole", choices=sorted(REFERENCES))
    p.add_argument("--reference-python", default=os.environ.get("RECBOLE_PYTHON", "python3"),
                   help="the interpreter of the virtual environment where recbole==1.2.1 is installed (also "
                        "the one for --reference duorec: its checkout goes first on the path)")
    p.add_argument("--reference-repo", help="--reference duorec: a checkout of github RuihongQiu/DuoRec")
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reference-epochs", type=int, default=300, help="RecBole's epoch cap (its default 300)")
    p.add_argument("--stopping-step", type=int, default=10, help="RecBole's early stopping (its default 10)")
    p.add_argument("--output", required=True)
    p.add_argument("--ours-from", metavar="GRID",
                   help="the output of a `mstein-fast compare` on the same data: its finished run of the model "
                        "and seed (same settings) is this package's side instead of a new training (a run "
                        "not finished there yet is left for a later call)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: options for mstein-fast train")
    p.set_defaults(func=run)
    t = sub.add_parser("table", help="one CSV row per finished run, and a summary on stderr")
    t.add_argument("directory")
    t.add_argument("-o", "--output")
    t.set_defaults(func=table)
    args = parser.parse_args(argv)
    if getattr(args, "extra", None) and args.extra[:1] == ["--"]:
        args.extra = args.extra[1:]
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
