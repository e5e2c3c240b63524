"""Write DeepAPL fields as fixed centre crops: a dataset CSV (cell classes) to score a classifier without segmentation.

    python scripts/centre_crops_csv.py --split test --out .clsdata/centre_test/dataset.csv
    napari-leukemia evaluate .clsdata/centre_test/dataset.csv --single-cells --split all \
        --classifier src/napari_leukemia/models/densenet201_leukemia.safetensors --out docs/figures/deepapl_test_centre

The issue's comparison "pipeline crops against centre crops": every field becomes a square of one fixed size at
its centre, the size the pipeline's crop of a median leukocyte has (the median box side of the segmented centre
cells of ``--sample`` fields, with the classifier's context margin). The rows are single-cell samples whose
``margin`` column makes the shared preprocessing (``crop_cells`` on ``datasets.cell_box``) cut exactly that
square, so the classifier sees centre crops through the same function as pipeline crops; only the box differs.
"""

import argparse
import csv
from pathlib import Path

import numpy as np

from napari_leukemia.core.config import SegmentConfig
from napari_leukemia.core.datasets import read_dataset
from napari_leukemia.core.io import read_image
from napari_leukemia.core.model import load_classifier
from napari_leukemia.core.preprocess import centre_cell
from napari_leukemia.core.segment import load_segmenter, segment_leukocytes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", default="../shared/data/deepapl/manifest.csv")
    ap.add_argument("--split", default="test")
    ap.add_argument("--classifier", default=None, help="whose crop margin to use (default: the shipped one)")
    ap.add_argument("--sample", type=int, default=200, help="fields segmented to find the median cell size")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    samples = [s for s in read_dataset(args.manifest, deepapl_labels="cell_class") if s.split == args.split]
    margin = load_classifier(args.classifier, "cpu").info.crop.margin
    model = load_segmenter(None, "cpu")
    rng = np.random.default_rng(0)
    sides = []
    for i in rng.choice(len(samples), min(args.sample, len(samples)), replace=False):
        labels = segment_leukocytes(read_image(samples[i].path), SegmentConfig(), model=model)
        cell = centre_cell(labels)
        if cell:
            rows, cols = np.nonzero(labels == cell)
            sides.append(max(np.ptp(rows), np.ptp(cols)) + 1)
    box = float(np.median(sides))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group", "margin"])
        for s in samples:
            field = min(read_image(s.path).shape[:2])
            window = min(box * (1 + 2 * margin), field)  # the pipeline's window on a median cell
            w.writerow([s.path.resolve(), s.label, s.group, round((field / (window / (1 + 2 * margin)) - 1) / 2, 4)])
    print(f"median centre-cell box {box:.0f} px ({len(sides)} fields); window {box * (1 + 2 * margin):.0f} px; "
          f"{len(samples)} rows in {args.out}")


if __name__ == "__main__":
    main()
