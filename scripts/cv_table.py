"""One markdown row per cross-validation (``cv.json`` of ``train --cv K``): the figures every recipe is judged on.

    python scripts/cv_table.py ~/.cache/napari-leukemia/runs/cv5_r18_baseline ~/.cache/napari-leukemia/runs/cv5_r18_pbc

Columns: pooled ROC-AUC, sensitivity at 95% specificity, balanced accuracy, ECE, the hard pair (blast equivalents
against myelocytes and metamyelocytes), the per-patient blast-equivalent % error of the count and of the count
adjusted for the other folds' error rates (mean / largest / patients off by more than 10 points), and the share of
each ``--score-also`` set called blast equivalent. A ``rescored_*.json`` beside ``cv.json`` (scripts/cv_rescore.py)
gets a row of its own.

A run still going (no ``cv.json`` yet) is compared on its finished folds: ``--folds 0 1`` recomputes every run's
figures from its out-of-fold predictions of those folds only (``fold_<i>/predictions.csv``, or the pooled
``predictions.csv``), so that runs are judged on the same patients.

``--costs arch_costs.json`` (``scripts/arch_costs.py``) adds a table of what each run's model costs: its
architecture and parameters, inference crops per second on the machine that measured them, and per fold the
epochs, CPU minutes and wall minutes its training took (``fold_<i>/history.json``). A classical baseline's folder
(``scripts/classical_baselines.py``) gives its own: numbers kept, cells per second with the features, fit time.

A run trained with ``--feature-svm`` (its ``p_leukemic`` the mean of the network and the feature SVM) also gets a
row for each part alone, ``(network)`` and ``(features)``, from the ``p_network`` and ``p_features`` columns.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def row(name: str, r: dict) -> str:
    o, e, a = r["pooled"], r["patient_errors"], r.get("patient_errors_adjusted", {})
    others = "; ".join(f"{k} {100 * v['called_leukemic']:.1f}%" for k, v in r.get("other_data", {}).items()) or "-"
    hard = r.get("hard_pair", {}).get("roc_auc")
    adjusted = (f"{a['mean_abs_error']:.1f} / {a['max_abs_error']:.1f} / {a['over_10_points']}" if a else "-")
    return (f"| {name} | {o['roc_auc']:.4f} | {o['sensitivity_at_95_specificity']:.3f} | {o['balanced_accuracy']:.3f} "
            f"| {o['ece']:.3f} | {'-' if hard is None else f'{hard:.3f}'} | {e['mean_abs_error']:.1f} / "
            f"{e['max_abs_error']:.1f} / {e['over_10_points']} | {adjusted} | {others} |")


def predictions(folder: Path, folds: list[int]) -> list[dict] | None:
    """``folder``'s out-of-fold predictions of ``folds`` (None when one of them is not finished)."""
    import csv

    pooled = folder / "predictions.csv"
    if pooled.is_file():
        return [r for r in csv.DictReader(open(pooled)) if int(r["fold"]) in folds]
    if all((folder / f"fold_{i}" / "predictions.csv").is_file() for i in folds):
        return [r for i in folds for r in csv.DictReader(open(folder / f"fold_{i}" / "predictions.csv"))]
    return None


def part_reports(rows: list[dict]) -> list[tuple[str, dict]]:
    """Reports of the network and of the feature SVM alone, where the predictions hold both parts."""
    from napari_leukemia.core.cv_report import cv_report

    if not rows or not rows[0].get("p_network"):
        return []
    return [(part, cv_report([dict(r, p_leukemic=r[f"p_{part}"]) for r in rows])) for part in ("network", "features")]


def training_costs(folder: Path) -> dict:
    """Architecture and, averaged over ``folder``'s folds, epochs, CPU and wall minutes of training."""
    from safetensors import safe_open

    folds = sorted(p for p in folder.glob("fold_*") if (p / "history.json").is_file())
    if not folds:
        return {}
    histories = [json.loads((p / "history.json").read_text()) for p in folds]
    checkpoint = next((p / n for p in folds for n in ("classifier.safetensors", "last.safetensors")
                       if (p / n).is_file()), None)
    arch = None
    if checkpoint is not None:
        with safe_open(checkpoint, "pt") as fh:
            arch = fh.metadata().get("architecture")
    def mean_minutes(key, missing=None):  # per fold, the sum over its epochs; NaN where an epoch lacks ``key``
        return statistics.mean(sum(h.get(key, missing) for h in hist) / 60 for hist in histories)

    return {"architecture": arch, "folds": len(folds), "epochs": statistics.mean(map(len, histories)),
            "cpu_minutes": mean_minutes("cpu_seconds", float("nan")), "wall_minutes": mean_minutes("seconds")}


def cost_rows(folders: list[Path], costs_file: Path) -> list[str]:
    """A markdown table of each run's model costs (see the module's docstring)."""
    measured = json.loads(costs_file.read_text())
    lines = [f"\nCosts ({measured['machine']}, {measured['size_px']} px; training per fold, mean over folds):\n",
             "| run | architecture | parameters | inference crops/s | folds | epochs | CPU min | wall min |",
             "|---|---|---|---|---|---|---|---|"]
    for folder in folders:
        c = training_costs(folder)
        report = json.loads((folder / "cv.json").read_text()) if not c and (folder / "cv.json").is_file() else {}
        classical = report.get("cost")
        if classical:  # scripts/classical_baselines.py: features and model timed on this machine, fitted in seconds
            folds = len(report["per_fold"])
            lines.append(f"| {folder.name} | {folder.name} on hand-made features | {classical['parameters']:,} numbers "
                         f"| {classical['cells_per_second']:.0f} (features included) | {folds} | - "
                         f"| {classical['fit_seconds_per_fold']:.1f} s (fit) | - |")
            continue
        if not c:
            lines.append(f"| {folder.name} | no finished epoch | | | | | | |")
            continue
        a = measured["architectures"].get(c["architecture"], {})
        params = f"{a['parameters'] / 1e6:.1f} M" if a else "-"
        speed = f"{a['infer_crops_per_s']:.0f}" if a else "-"
        cpu = "-" if math.isnan(c["cpu_minutes"]) else f"{c['cpu_minutes']:.1f}"  # runs from before --cpu-minutes
        lines.append(f"| {folder.name} | {c['architecture']} | {params} | {speed} | {c['folds']} | {c['epochs']:.1f} "
                     f"| {cpu} | {c['wall_minutes']:.1f} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cv_dirs", nargs="+", type=Path)
    parser.add_argument("--folds", nargs="+", type=int, help="judge every run on these folds only")
    parser.add_argument("--costs", type=Path, metavar="JSON",
                        help="scripts/arch_costs.py's figures: add a table of each run's costs")
    args = parser.parse_args(argv)
    if args.folds:
        print(f"folds {' '.join(map(str, args.folds))} only")
    print("| run | ROC-AUC | sens@95 | bal. acc. | ECE | hard pair | patient % error: count (mean / max / >10) "
          "| adjusted (mean / max / >10) | other labs called |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in args.cv_dirs:
        if args.folds:
            rows = predictions(folder, args.folds)
            if rows is None:
                print(f"| {folder.name} | folds not finished | | | | | | | |")
                continue
            from napari_leukemia.core.cv_report import cv_report

            print(row(folder.name, cv_report(rows)))
        else:
            reports = [("", folder / "cv.json")] + [(p.stem, p) for p in sorted(folder.glob("rescored_*.json"))]
            for suffix, path in reports:
                if path.is_file():
                    print(row(folder.name + (f" ({suffix})" if suffix else ""), json.loads(path.read_text())))
                else:
                    print(f"| {folder.name} | not finished | | | | | | | |")
            rows = predictions(folder, list(range(100))) if (folder / "predictions.csv").is_file() else []
        for part, report in part_reports(rows):
            print(row(f"{folder.name} ({part})", report))
    if args.costs:
        print("\n".join(cost_rows(args.cv_dirs, args.costs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
