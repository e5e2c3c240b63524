"""A contact sheet of one patient's cells with their labels and out-of-fold calls (the mean p_leukemic of one or
more cross-validation runs), to look at the patients every model gets wrong.

    python scripts/patient_sheet.py Patient_15 ~/.cache/napari-leukemia/runs/cv5_r18_baseline \
        ~/.cache/napari-leukemia/runs/cv5_classical/svm --out docs/figures/patient_15.jpg

Each tile: the dataset's image (thumbnail), its cell class, the truth (1: blast equivalent) and the mean
p_leukemic; cells sorted by class, at most ``--max`` of them.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

TILE, TEXT = 120, 15


def main(argv=None) -> int:
    from PIL import Image, ImageDraw

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patient")
    parser.add_argument("cv_dirs", nargs="+", type=Path, help="folders holding a cross-validation's predictions.csv")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max", type=int, default=48)
    parser.add_argument("--columns", type=int, default=8)
    args = parser.parse_args(argv)
    runs = [{r["path"]: r for r in csv.DictReader(open(d / "predictions.csv")) if r["group"] == args.patient}
            for d in args.cv_dirs]
    paths = sorted(runs[0], key=lambda p: (runs[0][p]["detail"], p))[: args.max]
    if not paths:
        raise SystemExit(f"{args.patient}: no cells in {args.cv_dirs[0] / 'predictions.csv'}")
    rows = -(-len(paths) // args.columns)
    sheet = Image.new("RGB", (args.columns * TILE, rows * (TILE + TEXT)), "white")
    for i, path in enumerate(paths):
        image = Image.open(path).convert("RGB")
        image.thumbnail((TILE, TILE))
        p = sum(float(run[path]["p_leukemic"]) for run in runs) / len(runs)
        x, y = (i % args.columns) * TILE, (i // args.columns) * (TILE + TEXT)
        sheet.paste(image, (x, y))
        row = runs[0][path]
        ImageDraw.Draw(sheet).text((x + 2, y + TILE + 1), f"{row['detail'][:12]} {row['truth']} {p:.2f}", fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=80)
    print(f"{args.out}: {len(paths)} cells of {args.patient}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
