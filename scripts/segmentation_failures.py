"""Pictures of the DeepAPL fields whose centre cell the segmenter got wrong (from evaluate_segmentation_deepapl.py).

    python scripts/segmentation_failures.py docs/figures/segmentation_deepapl_cellpose.json docs/images/segmentation_failures.jpg
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

from napari_leukemia.core.io import read_image
from napari_leukemia.core.segment import load_segmenter, segment_leukocytes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("out")
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--per-outcome", type=int, default=4)
    args = ap.parse_args()
    report = json.loads(Path(args.report).read_text())
    model = load_segmenter(None, "cpu")
    rows = []
    for outcome in ("missed", "split", "merged"):
        picked = [(c, f) for c, v in report["failures"].items() for f, o, *_ in v if o == outcome][: args.per_outcome]
        tiles = []
        for cls, f in picked:
            image = read_image(Path(args.shared) / "deepapl" / f)
            labels = segment_leukocytes(image, model=model)
            tile = image.copy()
            tile[find_boundaries(labels)] = (0, 255, 0)
            tile = Image.fromarray(np.ascontiguousarray(tile[:360, :360]))
            ImageDraw.Draw(tile).text((4, 4), f"{outcome}: {cls}", fill=(0, 0, 0))
            tiles.append(np.asarray(tile))
        tiles += [np.full((360, 360, 3), 255, np.uint8)] * (args.per_outcome - len(tiles))
        rows.append(np.concatenate(tiles, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).resize((args.per_outcome * 240, 720)).save(args.out)


if __name__ == "__main__":
    main()
