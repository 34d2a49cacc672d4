"""``band``: the original's seed-to-seed band against our compat curves, from ``curves`` runs of
several seeds (neither the original nor the data needed)."""

from __future__ import annotations

import json
import os

import numpy as np

from .common import PLOTTED, ParityError


def load_curves(path: str) -> dict:
    """One ``parity_curves.json`` written by ``curves`` (``path`` may be the file or its folder)."""
    if os.path.isdir(path):
        path = os.path.join(path, "parity_curves.json")
    if not os.path.isfile(path):
        raise ParityError(f"{path}: no such file (a parity_curves.json written by `python -m benchmarks.parity curves`)")
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError) as err:
        raise ParityError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise ParityError(f"{path}: no 'settings' (not written by `python -m benchmarks.parity curves`?)")
    for key in ("original", "ours_compat"):
        curve = record.get(key)
        if not isinstance(curve, list) or not curve:
            raise ParityError(f"{path}: no {key!r} curve")
        for row in curve:
            missing = [m for m in ("epoch", *PLOTTED) if not isinstance(row, dict) or m not in row]
            if missing:
                raise ParityError(f"{path}: a row of {key!r} lacks {', '.join(missing)}")
        if [row["epoch"] for row in curve] != list(range(1, len(curve) + 1)):
            raise ParityError(f"{path}: the {key!r} curve's epochs are not 1, 2, ..., {len(curve)}")
    if "seed" not in record["settings"]:
        raise ParityError(f"{path}: its settings name no seed")
    record["path"] = path
    return record


def seed_band(records: list[dict], from_epoch: int = 1) -> dict:
    """The original code's seed-to-seed band against our compat curves, over the same epochs.

    ``records``: the ``parity_curves.json`` of one ``curves`` run per seed (distinct seeds, same data;
    at least two). Per metric of :data:`PLOTTED` and epoch (the first K, K the shortest curve): the
    original's min / max / mean / sample std over its seeds, our compat mean and std over ours, and
    whether our mean and each of our seeds lie within the original's [min, max]. Summed up per metric
    over the epochs from ``from_epoch`` on: the fraction of epochs with our mean within the band, the
    fraction of (seed, epoch) points within it, and what that fraction would be if our seeds were
    draws from the original's own distribution ((n - 1) / (n + 1) for n original seeds: a new draw
    falls between the min and max of n draws of the same continuous distribution with that
    probability), the mean gap (ours - original, means over seeds) and the original's mean seed std.
    """
    if len(records) < 2:
        raise ParityError(f"a seed band needs the curves of at least two seeds; got {len(records)}")
    seeds = [r["settings"]["seed"] for r in records]
    if len(set(seeds)) != len(seeds):
        raise ParityError(f"the same seed twice: seeds {seeds}")
    data = {os.path.basename(str(r["settings"].get("data", ""))) for r in records}
    if len(data) > 1:
        raise ParityError(f"curves of different data files: {sorted(data)}")
    epochs = min(len(r[key]) for r in records for key in ("original", "ours_compat"))
    if not 1 <= from_epoch <= epochs:
        raise ParityError(f"--from-epoch {from_epoch}: the curves have epochs 1..{epochs}")
    n = len(records)
    per_epoch, summary = [], {}
    for m in PLOTTED:
        orig = np.array([[r["original"][e][m] for e in range(epochs)] for r in records], dtype=np.float64)
        ours = np.array([[r["ours_compat"][e][m] for e in range(epochs)] for r in records], dtype=np.float64)
        lo, hi = orig.min(0), orig.max(0)
        o_mean, c_mean = orig.mean(0), ours.mean(0)
        o_std, c_std = orig.std(0, ddof=1), ours.std(0, ddof=1)
        mean_in = (c_mean >= lo) & (c_mean <= hi)
        seeds_in = (ours >= lo) & (ours <= hi)
        for e in range(epochs):
            if len(per_epoch) <= e:
                per_epoch.append({"epoch": e + 1})
            per_epoch[e][m] = {"original_min": lo[e], "original_max": hi[e], "original_mean": o_mean[e],
                               "original_std": o_std[e], "ours_mean": c_mean[e], "ours_std": c_std[e],
                               "ours": ours[:, e].tolist(), "original": orig[:, e].tolist(),
                               "ours_mean_within": bool(mean_in[e])}
        w = slice(from_epoch - 1, epochs)
        summary[m] = {"mean_within": float(mean_in[w].mean()), "seeds_within": float(seeds_in[:, w].mean()),
                      "seeds_within_if_same": (n - 1) / (n + 1), "mean_gap": float((c_mean - o_mean)[w].mean()),
                      "original_std": float(o_std[w].mean()), "ours_std": float(c_std[w].mean()),
                      "last_original_mean": float(o_mean[-1]), "last_ours_mean": float(c_mean[-1])}
    return {"seeds": seeds, "epochs": epochs, "from_epoch": from_epoch, "per_epoch": per_epoch, "summary": summary}


def plot_band(band: dict, path: str, title: str) -> None:
    """The seed band per plotted metric (the original's min..max shaded, its mean, our seeds and their mean) as a figure at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in band["per_epoch"]]
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(5 * len(PLOTTED), 4))
    for ax, m in zip(axes, PLOTTED):
        rows = [row[m] for row in band["per_epoch"]]
        ax.fill_between(epochs, [r["original_min"] for r in rows], [r["original_max"] for r in rows], alpha=0.3,
                        color="tab:blue", label="original, min-max over seeds")
        ax.plot(epochs, [r["original_mean"] for r in rows], color="tab:blue", ls="--", label="original, mean")
        for i, seed in enumerate(band["seeds"]):
            ax.plot(epochs, [r["ours"][i] for r in rows], color="tab:orange", lw=0.6, alpha=0.6,
                    label="mstein-fast --compat original, each seed" if i == 0 else None)
        ax.plot(epochs, [r["ours_mean"] for r in rows], color="tab:orange", label="mstein-fast --compat original, mean")
        ax.set_title(f"validation {m}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def band_command(args) -> int:
    """``band``: writes ``seed_band.json`` and ``seed_band.png`` into ``--output`` and prints the summary table."""
    records = [load_curves(path) for path in args.curves]
    band = seed_band(records, args.from_epoch)
    os.makedirs(args.output, exist_ok=True)
    out_json = os.path.join(args.output, "seed_band.json")
    with open(out_json + ".tmp", "w", encoding="utf-8") as fh:
        json.dump({"inputs": [r["path"] for r in records], **band}, fh, indent=1, default=float)
        fh.write("\n")
    os.replace(out_json + ".tmp", out_json)
    data = os.path.basename(str(records[0]["settings"].get("data", "")))
    plot_band(band, os.path.join(args.output, "seed_band.png"),
              f"{data}: original MStein vs mstein-fast --compat original, validation, seeds "
              f"{', '.join(map(str, band['seeds']))}")
    n = len(records)
    print(f"seeds {band['seeds']}, epochs {band['from_epoch']}..{band['epochs']}; band = the original's min..max "
          f"over its {n} seeds at each epoch")
    print("| metric | our mean within the band | our seeds within the band | (if the same distribution) "
          "| mean gap, ours - original | original seed std | our seed std |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m, s in band["summary"].items():
        print(f"| {m} | {s['mean_within']:.0%} | {s['seeds_within']:.0%} | {s['seeds_within_if_same']:.0%} "
              f"| {s['mean_gap']:+.4f} | {s['original_std']:.4f} | {s['ours_std']:.4f} |")
    print(f"wrote {out_json} and seed_band.png")
    return 0

