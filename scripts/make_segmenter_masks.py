"""Derive leukocyte training masks for cellpose from ../shared/data with the stain-based segmenter.

Masks are kept only where they are trustworthy: on BCCD every WBC box must be matched (IoU >= 0.6) with no
extra object; on DeepAPL every object must be a plausible single leukocyte (solid, 0.3-1.7x the median cell;
a cell cut by the field border need only not be too large). Where the plain stain mask of a DeepAPL field
fails this because touching leukocytes merged, they are cut apart (``stain_segment(..., split=True)``, a
distance-transform watershed of the stain, at the estimated diameter or smaller ones) and the field is kept
if the cut masks pass and the centre cell has its class's typical size; so the network sees touching cells.
BCCD images whose index is a multiple of 5 are held out for evaluation and never written; DeepAPL
``split=test`` is never used.

zheng1's expert masks are the only ones holding the whole cytoplasm. Its crops (one leukocyte each, about
120 px) are laid out four to an image, 2 x 2, each padded to 120 px by repeating its border, and the cell
(nucleus and cytoplasm) is one label; crops whose number is a multiple of 5 (60 of 300) are held out.
``--sources zheng1_single`` writes the same training crops one to an image, as they are, so that the network
also sees a cell alone in a frame it fills and touches.
``--whole-cell`` grows the BCCD and DeepAPL masks out to their pale cytoplasm (``grow_to_cytoplasm``), which the
stain masks' fixed rim leaves out.

    python scripts/make_segmenter_masks.py --shared ../shared/data --out .segdata --per-class 130
    python scripts/make_segmenter_masks.py --sources zheng1 --list zheng1.csv --out .segdata
    python scripts/make_segmenter_masks.py --sources zheng1_single --list zheng1_single.csv --out .segdata
"""

import argparse
import csv
import random
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage.measure import regionprops

from napari_leukemia.core.boxes import centre_cell, label_boxes, match_boxes, read_voc_boxes
from napari_leukemia.core.io import ImageError, read_image
from napari_leukemia.core.mask_eval import read_mask
from napari_leukemia.core.stain import estimate_diameter, grow_to_cytoplasm, stain_segment


def bccd_is_holdout(path) -> bool:
    """BCCD fields held out from segmenter training: every fifth by file index."""
    return int(Path(path).stem.split("_")[-1]) % 5 == 0


def zheng1_is_holdout(path) -> bool:
    """zheng1 crops held out from segmenter training: every fifth by number (60 of 300)."""
    return int(Path(path).stem.split("_")[0]) % 5 == 0


#: zheng1 crops are padded to this size and laid out 2 x 2 in one training image.
ZHENG1_TILE = 120


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--out", default=".segdata")
    ap.add_argument("--per-class", type=int, default=120)
    ap.add_argument("--sources", nargs="+", choices=("bccd", "deepapl", "zheng1", "zheng1_single"), default=["bccd", "deepapl"])
    ap.add_argument("--list", default="list.csv", help="name of the list of image and mask files written in --out")
    ap.add_argument("--whole-cell", action="store_true",
                    help="grow each kept BCCD and DeepAPL mask out to its pale cytoplasm (core.stain.grow_to_cytoplasm)")
    args = ap.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    kept = Counter()
    rows = []
    if "bccd" in args.sources:
        rows += _bccd(shared, out, kept, args.whole_cell)
    if "deepapl" in args.sources:
        rows += _deepapl(shared, out, kept, args.per_class, args.whole_cell)
    if "zheng1" in args.sources:
        rows += _zheng1(shared, out, kept)
    if "zheng1_single" in args.sources:
        rows += _zheng1_single(shared, out, kept)
    with open(out / args.list, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "masks"])
        w.writerows(rows)
    print(dict(kept))


def _zheng1(shared, out, kept):
    """zheng1's training crops, four to an image, the whole cell (nucleus and cytoplasm) one label each."""
    files = _zheng1_training_files(shared)
    rows = []
    for start in range(0, len(files) - 3, 4):
        tiles, labels = [], []
        for k, f in enumerate(files[start:start + 4]):
            im = read_image(f)
            cell = read_mask(f.with_name(f"{f.stem}_mask.png")) > 0
            pad = [(0, ZHENG1_TILE - n) for n in cell.shape]
            tiles.append(cv2.copyMakeBorder(im, 0, pad[0][1], 0, pad[1][1], cv2.BORDER_REPLICATE))
            labels.append(np.pad(cell, pad).astype(np.uint16) * (k + 1))
        im = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
        lab = np.concatenate([np.concatenate(labels[:2], 1), np.concatenate(labels[2:], 1)], 0)
        rows.append(_save(out, f"zheng1_{files[start].stem}", im, lab))
        kept["zheng1"] += 1
    return rows


def _zheng1_single(shared, out, kept):
    """zheng1's training crops one to an image, as they are: a cell that fills its frame and touches it, as a
    single-cell image or a tight crop shows it (the four-to-an-image layout never has a cell alone in its frame)."""
    rows = []
    for f in _zheng1_training_files(shared):
        cell = read_mask(f.with_name(f"{f.stem}_mask.png")) > 0
        rows.append(_save(out, f"zheng1_single_{f.stem}", read_image(f), cell.astype(np.uint16)))
        kept["zheng1_single"] += 1
    return rows


def _zheng1_training_files(shared):
    return [f for f in sorted((shared / "zheng1" / "images").glob("*.png"))
            if not f.stem.endswith("_mask") and not zheng1_is_holdout(f)]


def _bccd(shared, out, kept, whole_cell):
    """BCCD fields outside the held-out fifth whose stain masks match every WBC box and nothing else."""
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
        rows.append(_save(out, f"bccd_{f.stem}", im, _grown(im, lab) if whole_cell else lab))
        kept["bccd"] += 1
    return rows


def _deepapl(shared, out, kept, per_class_max, whole_cell):
    """DeepAPL ``split=train`` fields (up to ``per_class`` per cell class) whose masks are plausible, cut apart if need be."""
    rows = []
    manifest = list(csv.DictReader(open(shared / "deepapl" / "manifest.csv")))
    manifest = [r for r in manifest if r["split"] == "train" and r["decode_ok"] == "1" and r["duplicate_in_other_class"] == "0"]
    random.Random(0).shuffle(manifest)
    per_class = Counter()
    fields = []
    for r in manifest:
        if per_class[r["cell_class"]] >= per_class_max:
            continue
        per_class[r["cell_class"]] += 1
        try:
            fields.append((r, read_image(shared / "deepapl" / r["file"])))
        except ImageError:
            continue
    # typical sizes from the plain stain masks: every cell, and the centre cell of fields holding one cell
    plain = [stain_segment(im).astype(np.uint16) for _, im in fields]
    median = float(np.median([p.area for lab in plain for p in regionprops(lab)]))
    centre = {c: np.median([centre_cell(lab)[1] for (r, _), lab in zip(fields, plain) if r["cell_class"] == c
                            and lab.max() == 1 and centre_cell(lab)[1]]) for c in per_class}
    for (r, im), lab in zip(fields, plain):
        kept["deepapl_seen"] += 1
        if not _good(lab, median):
            lab = _split_masks(im, lab, median, centre[r["cell_class"]])
            if lab is None:
                continue
            kept["deepapl_split"] += 1
        name = "deepapl_" + r["file"].replace("/", "_").removesuffix(".jpg")
        rows.append(_save(out, name, im, _grown(im, lab) if whole_cell else lab))
        kept["deepapl"] += 1
    print("median DeepAPL leukocyte area", median)
    return rows


def _good(lab, median) -> bool:
    """Every object one plausible leukocyte: solid, 0.3-1.7x the median cell (a cell cut by the border may be small)."""
    props = regionprops(lab)
    border = lambda p: p.bbox[0] == 0 or p.bbox[1] == 0 or p.bbox[2] == lab.shape[0] or p.bbox[3] == lab.shape[1]
    return bool(props) and all(p.solidity >= 0.9 and p.area <= 1.7 * median and (border(p) or p.area >= 0.3 * median)
                               for p in props)


def _split_masks(im, lab, median, centre_area):
    """Touching cells cut apart: the first of ever smaller diameters at which every object is plausible.

    The stain estimate of the diameter runs large where cells touch, so the split is tried at the
    estimate and at 1/1.3 and 1/1.6 of it. The centre cell must also be of its class's typical size
    (0.6-1.7x), so a single cell cut into lobes is not taken for touching cells. ``None`` if none fits.
    """
    diameter = estimate_diameter(im)
    for factor in (1.0, 1.3, 1.6):
        cut = stain_segment(im, diameter / factor, split=True)
        if cut.max() > lab.max() and _good(cut, median) and 0.6 <= centre_cell(cut)[1] / centre_area <= 1.7:
            return cut
    return None


def _grown(im, lab):
    """The masks grown to their pale cytoplasm, at the stain's diameter estimate."""
    return grow_to_cytoplasm(im, lab, estimate_diameter(im))


def _save(out, name, im, lab):
    Image.fromarray(im).save(out / "images" / f"{name}.jpg", quality=95)
    Image.fromarray(lab.astype(np.uint16)).save(out / "images" / f"{name}_masks.png")
    return [f"images/{name}.jpg", f"images/{name}_masks.png"]


if __name__ == "__main__":
    main()
