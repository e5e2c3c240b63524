"""Tiled segmentation of a 10,000 x 10,000 mosaic of real smear fields: time, peak memory, seams.

    python scripts/benchmark_large.py --out docs/figures/benchmark_large.json

The mosaic is built from BCCD fields (../shared/data/bccd, 640 x 480, with their WBC boxes; mirrored copies
when the mosaic needs more fields than there are), so every leukocyte's true box is known. Tiles are 2048 px
(the default) and many leukocytes straddle a seam. Reported: seconds per megapixel (against the same
segmenter on the separate fields, the reference), peak resident memory of the process, and leukocyte
detection precision / recall against the boxes, split into cells that straddle a seam and cells that do not.
"""

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from napari_leukemia.core.boxes import label_boxes, match_boxes, read_voc_boxes
from napari_leukemia.core.config import SegmentConfig
from napari_leukemia.core.io import read_image
from napari_leukemia.core.segment import load_segmenter, segment_leukocytes


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--side", type=int, default=10_000)
    ap.add_argument("--tile", type=int, default=2048)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    root = Path(args.shared) / "bccd"
    files = sorted((root / "JPEGImages").glob("*.jpg"))
    rows, cols = -(-args.side // 480), -(-args.side // 640)
    mosaic = np.zeros((rows * 480, cols * 640, 3), np.uint8)
    boxes, field_seconds = [], 0.0
    model = load_segmenter(None, "cpu")
    segment_leukocytes(read_image(files[0]), model=model)  # warm-up
    for i in range(rows * cols):
        f = files[i % len(files)]
        image, box = read_image(f), read_voc_boxes(root / "Annotations" / f"{f.stem}.xml")
        if image.shape[:2] != (480, 640):
            continue
        if (i // len(files)) % 2:  # second round: mirrored copies
            image, box = image[:, ::-1], np.c_[box[:, 0], 640 - box[:, 3], box[:, 2], 640 - box[:, 1]]
        r, c = divmod(i, cols)
        mosaic[r * 480 : (r + 1) * 480, c * 640 : (c + 1) * 640] = image
        boxes.append(box + [r * 480, c * 640, r * 480, c * 640])
        if i < 40:  # reference speed: the same segmenter on separate fields
            t0 = time.perf_counter()
            segment_leukocytes(np.ascontiguousarray(image), model=model)
            field_seconds += time.perf_counter() - t0
    boxes = np.concatenate(boxes)
    mp = mosaic.shape[0] * mosaic.shape[1] / 1e6
    before = peak_gb()
    t0 = time.perf_counter()
    labels = segment_leukocytes(mosaic, SegmentConfig(tile_size=args.tile), model=model)
    seconds = time.perf_counter() - t0
    pred = label_boxes(labels)
    seam = lambda lo, hi: np.any([(lo < s) & (s < hi) for s in range(args.tile, max(mosaic.shape), args.tile)], axis=0)
    on_seam = seam(boxes[:, 0], boxes[:, 2]) | seam(boxes[:, 1], boxes[:, 3])
    m_all = match_boxes(pred, boxes)
    m_seam = match_boxes(pred, boxes[on_seam])
    report = {
        "mosaic_px": list(mosaic.shape[:2]), "fields": rows * cols, "tile_px": args.tile,
        "leukocyte_boxes": len(boxes), "boxes_on_seams": int(on_seam.sum()), "cells_found": int(labels.max()),
        "precision": m_all["tp"] / max(m_all["tp"] + m_all["fp"], 1), "recall": m_all["tp"] / len(boxes),
        "seam_boxes_found": m_seam["tp"],
        "seconds": round(seconds, 1), "s_per_megapixel": round(seconds / mp, 3),
        "reference_s_per_megapixel_separate_fields": round(field_seconds / (40 * 0.3072), 3),
        "peak_rss_gb": round(peak_gb(), 2), "peak_rss_gb_before_segmentation": round(before, 2),
    }
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
