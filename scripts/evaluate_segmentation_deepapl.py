"""Is the centre leukocyte of DeepAPL fields found as one object? Per cell class, for a segmenter.

    python scripts/evaluate_segmentation_deepapl.py --per-class 150 --out docs/figures/segmentation_deepapl.json

Fields are drawn per cell class (seeded; all of a class when it has fewer), from both splits. The centre cell
(``core.boxes.centre_cell``: the cell at the field centre, or within 10% of the field of it) is judged by
``core.boxes.centre_cell_outcome``: missed (none), split (under half the median area of its class), merged
(over twice), else one object.
"""

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from napari_leukemia.core.boxes import centre_cell, centre_cell_outcome
from napari_leukemia.core.config import SegmentConfig
from napari_leukemia.core.io import ImageError, read_image
from napari_leukemia.core.segment import load_segmenter, segment_leukocytes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--segmenter", default=None)
    ap.add_argument("--method", default="cellpose", choices=["cellpose", "stain"])
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--split", default="all", choices=["all", "train", "test"])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    root = Path(args.shared) / "deepapl"
    m = pd.read_csv(root / "manifest.csv")
    m = m[(m.decode_ok == 1) & (m.duplicate_in_other_class == 0)]
    if args.split != "all":
        m = m[m.split == args.split]
    m = m.sample(frac=1.0, random_state=0).groupby("cell_class").head(args.per_class)
    model = load_segmenter(args.segmenter, "cpu") if args.method == "cellpose" else None
    areas, seconds = defaultdict(list), 0.0
    for r in m.itertuples():
        try:
            image = read_image(root / r.file)
        except ImageError as err:
            print(err)
            continue
        t0 = time.perf_counter()
        labels = segment_leukocytes(image, SegmentConfig(method=args.method), model=model)
        seconds += time.perf_counter() - t0
        areas[r.cell_class].append((r.file, centre_cell(labels)[1]))
    counts, failures = defaultdict(Counter), defaultdict(list)
    for cls, rows in areas.items():
        typical = float(np.median([a for _, a in rows if a > 0] or [1]))
        for file, area in rows:
            outcome = centre_cell_outcome(area, typical)
            counts[cls][outcome] += 1
            if outcome != "one":
                failures[cls].append([file, outcome, area, typical])
    report = {"method": args.method, "segmenter": args.segmenter or "shipped", "split": args.split,
              "seconds_per_field": seconds / max(len(m), 1), "per_class": {}, "failures": failures}
    for cls, c in sorted(counts.items()):
        judged = sum(c.values())
        report["per_class"][cls] = {"fields": judged, **dict(c), "one_fraction": c["one"] / max(judged, 1)}
        print(f"{cls:24s} {c['one']:4d}/{judged:4d} = {c['one'] / max(judged, 1):.3f}  {dict(c)}")
    total = sum(counts.values(), Counter())
    judged = sum(total.values())
    report["overall"] = {**dict(total), "one_fraction": total["one"] / max(judged, 1)}
    report["worst_class_one_fraction"] = float(np.min([v["one_fraction"] for v in report["per_class"].values()]))
    print("overall", report["overall"], "worst class", report["worst_class_one_fraction"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
