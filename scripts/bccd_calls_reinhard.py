"""BCCD calls with every field's colours first matched to DeepAPL's (Reinhard: LAB mean and spread), a probe of
whether colour is what makes normal BCCD leukocytes look leukaemic.

    python scripts/bccd_calls_reinhard.py reference runs/reinhard_ref.json
    python scripts/bccd_calls_reinhard.py bccd fg runs/reinhard_ref.json runs/reinhard_bccd_fg.json

``reference``: the mean LAB statistics of 200 random DeepAPL ``split=train`` fields. ``bccd MODE``: runs
``evaluate_bccd_calls.py`` (its options as there: the shared segmentation cache ``.clsdata/bccd_labels_seg2``, the
shipped classifier) on normalised fields. MODE ``whole`` takes each field's statistics over every pixel, ``fg``
leaves out its brightest tenth (background).
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np
from skimage.color import lab2rgb, rgb2lab

from napari_leukemia.core.io import read_image

DEEPAPL = Path("../shared/data/deepapl")


def lab_stats(image, mode: str):
    lab = rgb2lab(image)
    px = lab[lab[..., 0] < np.percentile(lab[..., 0], 90)] if mode == "fg" else lab.reshape(-1, 3)
    return px.mean(0), px.std(0)


def normalize(image, ref: dict, mode: str):
    mean, std = lab_stats(image, mode)
    lab = (rgb2lab(image) - mean) / std * np.array(ref[mode]["std"]) + np.array(ref[mode]["mean"])
    return (np.clip(lab2rgb(lab), 0, 1) * 255).round().astype(np.uint8)


def main():
    if sys.argv[1] == "reference":
        rows = [r for r in csv.DictReader(open(DEEPAPL / "manifest.csv")) if r["split"] == "train"]
        picks = np.random.default_rng(0).choice(len(rows), 200, replace=False)
        ref = {}
        for mode in ("whole", "fg"):
            s = [lab_stats(read_image(DEEPAPL / rows[i]["file"]), mode) for i in picks]
            ref[mode] = {"mean": np.mean([m for m, _ in s], 0).tolist(), "std": np.mean([d for _, d in s], 0).tolist()}
        Path(sys.argv[2]).write_text(json.dumps(ref, indent=1))
        return
    mode, ref, out = sys.argv[2], json.loads(Path(sys.argv[3]).read_text()), sys.argv[4]
    sys.path.insert(0, str(Path(__file__).parent))
    import evaluate_bccd_calls

    evaluate_bccd_calls.read_image = lambda f: normalize(read_image(f), ref, mode)
    sys.argv = ["evaluate_bccd_calls.py", "--labels-cache", ".clsdata/bccd_labels_seg2", "--out", out]
    evaluate_bccd_calls.main()


if __name__ == "__main__":
    main()
