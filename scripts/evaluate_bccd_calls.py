"""How often leukocytes of normal smears (BCCD: another lab, scanner and stain) are called leukaemic.

    python scripts/evaluate_bccd_calls.py --out docs/figures/bccd_calls.json
    python scripts/evaluate_bccd_calls.py --segmenter runs/seg_frozen.safetensors --labels-cache .clsdata/bccd_labels \
        --classifier runs/arm/classifier.safetensors --out runs/arm/bccd_calls.json

Every field goes through the pipeline (analyze_smear: segment, crop, classify). Each cell is matched to the field's
annotated WBC boxes (box IoU), so calls on true leukocytes (IoU >= 0.5) and on other detections are counted apart.
"""

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from napari_leukemia.core.boxes import box_iou, read_voc_boxes
from napari_leukemia.core.config import LEUKEMIC_THRESHOLD, AnalysisConfig
from napari_leukemia.core.io import read_image
from napari_leukemia.core.pipeline import analyze_smear, model_name

BOX_COLUMNS = ["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--classifier", default=None, help="classifier checkpoint or shipped name (default: leukemic)")
    ap.add_argument("--segmenter", default=None, help="cellpose segmenter checkpoint (default: the shipped one)")
    ap.add_argument("--labels-cache", default=None, metavar="DIR",
                    help="keep each field's segmentation here (<field>.npz, with the segmenter's name@sha256) and "
                         "reuse it, so several classifiers are scored on the same cells")
    ap.add_argument("--red-cell-diameter", type=float, default=None, metavar="PX",
                    help="scale of a fixed-window (cell-type) classifier's crops (default: measured per field)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    root = Path(args.shared) / "bccd"
    files = sorted((root / "JPEGImages").glob("*.jpg"))
    config = AnalysisConfig(device="cpu", gradcam=False, red_cell_diameter=args.red_cell_diameter)
    segmenter = model_name(args.segmenter) if args.segmenter else None
    cache = Path(args.labels_cache) if args.labels_cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    cells, per_field, classifier = [], [], "shipped"
    for f in files:
        labels = None
        cached = cache / f"{f.stem}.npz" if cache else None
        if cached and cached.is_file():
            with np.load(cached) as z:
                if str(z["segmenter"]) != str(segmenter):
                    raise SystemExit(f"{cached} was segmented by {z['segmenter']}, not {segmenter}; use another "
                                     "--labels-cache")
                labels = z["labels"]
        r = analyze_smear(read_image(f), segmenter=args.segmenter, classifier=args.classifier, name=f.name,
                          config=config, labels=labels)
        classifier = r.summary["classifier"]  # name@sha256 of the file, also for a shipped name
        if cached and labels is None:
            np.savez_compressed(cached, labels=r.labels, segmenter=np.asarray(str(segmenter)))
        wbc = read_voc_boxes(root / "Annotations" / f"{f.stem}.xml")
        boxes = r.cells[BOX_COLUMNS].to_numpy(float)
        iou = box_iou(boxes, wbc).max(axis=1) if len(wbc) and len(boxes) else np.zeros(len(boxes))
        for (_, c), i in zip(r.cells.iterrows(), iou):
            cells.append({"image": f.name, "label": int(c["label"]), "area": int(c["area"]),
                          "p_leukemic": round(float(c["p_leukemic"]), 4), "wbc_iou": round(float(i), 3),
                          "predicted_class": str(c["predicted_class"])})
        per_field.append({"image": f.name, "wbc_boxes": len(wbc), "leukocytes": r.summary["leukocytes"],
                          "leukemic": r.summary["leukemic"]})
    p = np.asarray([c["p_leukemic"] for c in cells])
    on_wbc = np.asarray([c["wbc_iou"] >= 0.5 for c in cells], bool)
    called = p >= LEUKEMIC_THRESHOLD

    def fraction(mask):
        return float(called[mask].mean()) if mask.any() else 0.0

    report = {"fields": len(files), "classifier": classifier,
              "segmenter": segmenter or "shipped", "leukocytes": int(len(p)), "called_leukemic": int(called.sum()),
              "fraction_called_leukemic": fraction(np.ones(len(p), bool)),
              "median_p_leukemic": float(np.median(p)) if len(p) else 0.0,
              "cells_on_wbc_box": int(on_wbc.sum()), "fraction_called_leukemic_on_wbc_box": fraction(on_wbc),
              "cells_off_wbc_box": int((~on_wbc).sum()), "fraction_called_leukemic_off_wbc_box": fraction(~on_wbc),
              "red_cell_diameter": args.red_cell_diameter or "measured per field",
              "predicted_classes_on_wbc_box": dict(Counter(c["predicted_class"] for c, w in zip(cells, on_wbc) if w)),
              "per_field": per_field, "cells": cells}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print({k: v for k, v in report.items() if k not in ("per_field", "cells")})


if __name__ == "__main__":
    main()
