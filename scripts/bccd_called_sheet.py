"""Contact sheet: the BCCD cells a classifier calls most leukaemic, the least, and random DeepAPL test crops.

    python scripts/bccd_called_sheet.py docs/figures/stain_ablation/bccd_shipped.json \
        docs/figures/stain_ablation/bccd_called_sheet.jpg --labels-cache .clsdata/bccd_labels \
        --deepapl-crops .clsdata/deepapl_112_test.npz

Rows: the 24 highest p_leukemic (two rows), the 12 lowest, 12 random DeepAPL crops (seed 0). BCCD cells are cut
with crop_cells from the labels evaluate_bccd_calls.py kept (--labels-cache).
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from napari_leukemia.core.config import CropConfig
from napari_leukemia.core.cropstore import load_crops
from napari_leukemia.core.io import read_image
from napari_leukemia.core.preprocess import crop_cells


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("calls", help="evaluate_bccd_calls.py output (with its per-cell table)")
    ap.add_argument("out")
    ap.add_argument("--labels-cache", required=True)
    ap.add_argument("--deepapl-crops", required=True)
    ap.add_argument("--shared", default="../shared/data")
    args = ap.parse_args()
    cells = sorted(json.loads(Path(args.calls).read_text())["cells"], key=lambda c: -c["p_leukemic"])
    crop = CropConfig(size=112)

    def cut(c):
        image = read_image(Path(args.shared) / "bccd" / "JPEGImages" / c["image"])
        with np.load(Path(args.labels_cache) / f"{Path(c['image']).stem}.npz") as z:
            labels = z["labels"]
        return crop_cells(image, labels, crop, ids=[c["label"]]).images[0]

    top, low = [cut(c) for c in cells[:24]], [cut(c) for c in cells[-12:]]
    deepapl, _ = load_crops(args.deepapl_crops)
    pick = deepapl[np.random.default_rng(0).choice(len(deepapl), 12, replace=False)]
    rows = [np.concatenate(top[:12], 1), np.concatenate(top[12:], 1), np.concatenate(low, 1), np.concatenate(list(pick), 1)]
    Image.fromarray(np.concatenate(rows, 0)).save(args.out, quality=85)


if __name__ == "__main__":
    main()
