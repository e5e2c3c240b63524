"""Derive leukocyte training masks for cellpose from ../shared/data with the stain-based segmenter.

Masks are kept only where they are trustworthy: on BCCD every WBC box must be matched (IoU >= 0.6) with no
extra object; on DeepAPL every object must be a plausible single leukocyte (solid, not larger than 1.7x the
median cell). BCCD images whose index is a multiple of 5 are held out for evaluation and never written.

    python scripts/make_segmenter_masks.py --shared ../shared/data --out .segdata --per-class 120
"""

import argparse
import csv
import random
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.measure import regionprops

from napari_leukemia.core.boxes import label_boxes, match_boxes, read_voc_boxes
from napari_leukemia.core.io import ImageError, read_image
from napari_leukemia.core.stain import stain_segment


def bccd_is_holdout(path) -> bool:
    """BCCD fields held out from segmenter training: every fifth by file index."""
    return int(Path(path).stem.split("_")[-1]) % 5 == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--out", default=".segdata")
    ap.add_argument("--per-class", type=int, default=120)
    args = ap.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    kept = Counter()
    rows = []
    for f in sorted((shared / "bccd" / "JPEGImages").glob("*.jpg")):
        if bccd_is_holdout(f):
            continue
        im = read_image(f)
        lab = stain_segment(im)
        m = match_boxes(label_boxes(lab), read_voc_boxes(shared / "bccd" / "Annotations" / f"{f.stem}.xml"), 0.6)
        kept["bccd_seen"] += 1
        if m["fp"] or m["fn"]:
            continue
        rows.append(_save(out, f"bccd_{f.stem}", im, lab))
        kept["bccd"] += 1
    manifest = list(csv.DictReader(open(shared / "deepapl" / "manifest.csv")))
    manifest = [r for r in manifest if r["split"] == "train" and r["decode_ok"] == "1" and r["duplicate_in_other_class"] == "0"]
    random.Random(0).shuffle(manifest)
    per_class = Counter()
    candidates = []
    for r in manifest:
        if per_class[r["cell_class"]] >= args.per_class:
            continue
        per_class[r["cell_class"]] += 1
        try:
            im = read_image(shared / "deepapl" / r["file"])
        except ImageError:
            continue
        candidates.append((r, im, stain_segment(im)))
    areas = [p.area for _, _, lab in candidates for p in regionprops(lab)]
    median = float(np.median(areas))
    for r, im, lab in candidates:
        props = regionprops(lab)
        kept["deepapl_seen"] += 1
        if not props or any(p.solidity < 0.9 or p.area > 1.7 * median or p.area < 0.3 * median for p in props):
            continue
        name = "deepapl_" + r["file"].replace("/", "_").removesuffix(".jpg")
        rows.append(_save(out, name, im, lab))
        kept["deepapl"] += 1
    with open(out / "list.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "masks"])
        w.writerows(rows)
    print(dict(kept), "median DeepAPL leukocyte area", median)


def _save(out, name, im, lab):
    Image.fromarray(im).save(out / "images" / f"{name}.jpg", quality=95)
    Image.fromarray(lab.astype(np.uint16)).save(out / "images" / f"{name}_masks.png")
    return [f"images/{name}.jpg", f"images/{name}_masks.png"]


if __name__ == "__main__":
    main()
