"""Crop every DeepAPL field's centre leukocyte through the pipeline: segment, centre cell, crop_cells.

    python scripts/prepare_deepapl_crops.py --split train --size 112 --out .clsdata/train.npz
    python scripts/prepare_deepapl_crops.py --split test --size 112 --out .clsdata/test.npz

Also writes ``<out>.fields.csv``: one row per field with the outcome (ok / no cell / unreadable), so
fields the segmenter misses are counted, not silently dropped.
"""

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from napari_leukemia.core.config import CropConfig, SegmentConfig
from napari_leukemia.core.cropstore import save_crops
from napari_leukemia.core.io import ImageError, read_image
from napari_leukemia.core.preprocess import centre_cell, crop_cells
from napari_leukemia.core.segment import load_segmenter, segment_leukocytes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--split", choices=["train", "test"], required=True)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--segmenter", default=None)
    ap.add_argument("--method", default="cellpose")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    root = Path(args.shared) / "deepapl"
    rows = [r for r in csv.DictReader(open(root / "manifest.csv"))
            if r["split"] == args.split and r["duplicate_in_other_class"] == "0"]
    if args.limit:
        rows = rows[: args.limit]
    crop = CropConfig(size=args.size)
    seg_cfg = SegmentConfig(method=args.method)
    model = load_segmenter(args.segmenter, "cpu") if args.method == "cellpose" else None
    images, table, outcomes = [], {k: [] for k in ("file", "patient_id", "cell_class", "coarse_label", "cells_in_field")}, []
    t0 = time.time()
    for i, r in enumerate(rows):
        try:
            image = read_image(root / r["file"])
        except ImageError as err:
            outcomes.append((r["file"], "unreadable", str(err)))
            continue
        labels = segment_leukocytes(image, seg_cfg, model=model)
        cell = centre_cell(labels)
        if cell == 0:
            outcomes.append((r["file"], "no cell", ""))
            continue
        images.append(crop_cells(image, labels, crop, ids=[cell]).images[0])
        for k in ("file", "patient_id", "cell_class", "coarse_label"):
            table[k].append(r[k])
        table["cells_in_field"].append(int(labels.max()))
        outcomes.append((r["file"], "ok", ""))
        if i % 500 == 0:
            print(f"{i}/{len(rows)} fields, {time.time() - t0:.0f} s", flush=True)
    table["crop_config"] = crop.to_dict()
    save_crops(args.out, np.stack(images), table)
    with open(args.out + ".fields.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "outcome", "error"])
        w.writerows(outcomes)
    counts = {o: sum(1 for x in outcomes if x[1] == o) for o in ("ok", "no cell", "unreadable")}
    print(counts, f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
