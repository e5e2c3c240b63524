"""Leukocyte detection on BCCD fields against their WBC boxes (a predicted cell matches a box at IoU >= 0.5).

    python scripts/evaluate_segmentation_bccd.py --out docs/figures/segmentation_bccd.json

By default only the held-out fields (file index a multiple of 5, never used to make training masks) are scored.
"""

import argparse
import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_segmenter_masks import bccd_is_holdout  # noqa: E402

from napari_leukemia.core.boxes import score_segmentation  # noqa: E402
from napari_leukemia.core.config import SegmentConfig  # noqa: E402
from napari_leukemia.core.segment import load_segmenter, segment_leukocytes  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--segmenter", default=None)
    ap.add_argument("--all", action="store_true", help="score every field, not only the held-out ones")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    root = Path(args.shared) / "bccd"
    files = [f for f in sorted((root / "JPEGImages").glob("*.jpg")) if args.all or bccd_is_holdout(f)]
    model = load_segmenter(args.segmenter, "cpu")
    report = {}
    for method in ("cellpose", "stain"):
        segment = functools.partial(segment_leukocytes, cfg=SegmentConfig(method=method), model=model)
        s = score_segmentation(files, root / "Annotations", segment)
        s["failures"] = [r for r in s.pop("per_image") if r["fp"] or r["fn"]]
        report[method] = s
        print(method, {k: round(v, 4) if isinstance(v, float) else v for k, v in s.items() if k != "failures"})
    report["fields"] = "held-out (index % 5 == 0)" if not args.all else "all"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
