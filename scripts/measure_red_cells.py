"""How well the red-cell diameter (the scale of fixed-window crops) is measured on a smear.

    python scripts/measure_red_cells.py --out docs/figures/red_cells.json

DeepAPL: ``measure_red_cells`` on random fields of one scanner; their median is ``DEEPAPL_RED_CELL_PX``.
BCCD: the measurement against the median of each field's annotated RBC boxes (mean of box width and height; the
boxes are loose and some are missing, so they are a rough truth).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from napari_leukemia.core.boxes import read_voc_boxes
from napari_leukemia.core.io import atomic_path, read_image
from napari_leukemia.core.preprocess import measure_red_cells


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--fields", type=int, default=120, help="DeepAPL fields and BCCD fields measured (default 120)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    q = lambda a: [round(float(v), 2) for v in np.percentile(a, [10, 25, 50, 75, 90])]  # noqa: E731

    manifest = pd.read_csv(args.shared / "deepapl" / "manifest.csv")
    files = manifest[manifest.decode_ok == 1].sample(args.fields, random_state=1).file
    deepapl = [measure_red_cells(read_image(args.shared / "deepapl" / f)) for f in files]

    ratios, truth = [], []
    for xml in sorted((args.shared / "bccd" / "Annotations").glob("*.xml"))[: args.fields]:
        boxes = read_voc_boxes(xml, name="RBC")
        if len(boxes) < 5:
            continue
        sides = np.median([(b[2] - b[0] + b[3] - b[1]) / 2 for b in boxes])
        image = read_image(args.shared / "bccd" / "JPEGImages" / f"{xml.stem}.jpg")
        truth.append(sides)
        ratios.append(measure_red_cells(image) / sides)
    report = {"percentiles": [10, 25, 50, 75, 90],
              "deepapl_measured_px": q(deepapl), "deepapl_fields": len(deepapl),
              "bccd_box_px": q(truth), "bccd_measured_over_boxes": q(ratios), "bccd_fields": len(ratios)}
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
