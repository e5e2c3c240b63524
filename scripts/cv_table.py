"""One markdown row per cross-validation (``cv.json`` of ``train --cv K``): the figures every recipe is judged on.

    python scripts/cv_table.py ~/.cache/napari-leukemia/runs/cv5_r18_baseline ~/.cache/napari-leukemia/runs/cv5_r18_pbc

Columns: pooled ROC-AUC, sensitivity at 95% specificity, balanced accuracy, ECE, the hard pair (blast equivalents
against myelocytes and metamyelocytes), the per-patient blast-equivalent % error of the count and of the count
adjusted for the other folds' error rates (mean / largest / patients off by more than 10 points), and the share of
each ``--score-also`` set called blast equivalent. A ``rescored_*.json`` beside ``cv.json`` (scripts/cv_rescore.py)
gets a row of its own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def row(name: str, r: dict) -> str:
    o, e, a = r["pooled"], r["patient_errors"], r.get("patient_errors_adjusted", {})
    others = "; ".join(f"{k} {100 * v['called_leukemic']:.1f}%" for k, v in r.get("other_data", {}).items()) or "-"
    hard = r.get("hard_pair", {}).get("roc_auc")
    adjusted = (f"{a['mean_abs_error']:.1f} / {a['max_abs_error']:.1f} / {a['over_10_points']}" if a else "-")
    return (f"| {name} | {o['roc_auc']:.4f} | {o['sensitivity_at_95_specificity']:.3f} | {o['balanced_accuracy']:.3f} "
            f"| {o['ece']:.3f} | {'-' if hard is None else f'{hard:.3f}'} | {e['mean_abs_error']:.1f} / "
            f"{e['max_abs_error']:.1f} / {e['over_10_points']} | {adjusted} | {others} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cv_dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print("| run | ROC-AUC | sens@95 | bal. acc. | ECE | hard pair | patient % error: count (mean / max / >10) "
          "| adjusted (mean / max / >10) | other labs called |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in args.cv_dirs:
        reports = [("", folder / "cv.json")] + [(p.stem, p) for p in sorted(folder.glob("rescored_*.json"))]
        for suffix, path in reports:
            if path.is_file():
                print(row(folder.name + (f" ({suffix})" if suffix else ""), json.loads(path.read_text())))
            else:
                print(f"| {folder.name} | not finished | | | | | | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
