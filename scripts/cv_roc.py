"""One ROC plot over cross-validated models: the pooled out-of-fold predictions of each run (``train --cv`` or
``scripts/classical_baselines.py``), every cell scored by the fold model that never saw its patient.

    python scripts/cv_roc.py ~/.cache/napari-leukemia/runs/cv5_r18_baseline \
        ~/.cache/napari-leukemia/runs/cv5_classical/{svm,logistic_regression,random_forest,knn} \
        --mean ~/.cache/napari-leukemia/runs/cv5_r18_baseline ~/.cache/napari-leukemia/runs/cv5_classical/svm \
        --out docs/figures/cv_roc.png

``--mean A B`` adds the mean of two runs' probabilities (cells matched by path). A run trained with
``--feature-svm`` also gets its network and its feature SVM alone. Runs are compared on the cells they all scored.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def read(folder: Path) -> dict[str, dict]:
    with open(folder / "predictions.csv", newline="") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--mean", nargs=2, type=Path, action="append", default=[], metavar=("A", "B"))
    ap.add_argument("--names", nargs="+", help="a label for each run (default: its folder's name)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    names = args.names or [r.name for r in args.runs]
    tables = {name: read(run) for name, run in zip(names, args.runs)}
    curves = {}
    for name, rows in tables.items():
        curves[name] = {p: float(r["p_leukemic"]) for p, r in rows.items()}
        first = next(iter(rows.values()))
        if first.get("p_network"):
            for part in ("network", "features"):
                curves[f"{name} ({part})"] = {p: float(r[f"p_{part}"]) for p, r in rows.items()}
    for a, b in args.mean:
        ra, rb = read(a), read(b)
        label = dict(zip(args.runs, names))
        curves[f"mean of {label.get(a, a.name)} and {label.get(b, b.name)}"] = {
            p: (float(ra[p]["p_leukemic"]) + float(rb[p]["p_leukemic"])) / 2 for p in ra.keys() & rb.keys()}
    common = sorted(set.intersection(*(set(c) for c in curves.values())))
    truth = {p: int(r["truth"]) for rows in tables.values() for p, r in rows.items()}
    y = np.array([truth[p] for p in common])
    fig, ax = plt.subplots(figsize=(6, 6), dpi=110)
    for name, scores in curves.items():
        s = np.array([scores[p] for p in common])
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.4, label=f"{name}: ROC-AUC {roc_auc_score(y, s):.3f}")
    ax.axvline(0.05, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="false-positive rate (normal cells called blast equivalent)", ylabel="sensitivity",
           title=f"{len(common):,} cells, each scored by a model that never saw its patient",
           xlim=(0, 0.3), ylim=(0.6, 1.0))
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}: {len(curves)} curves on {len(common)} cells")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
