"""Which image change makes the classifier call normal DeepAPL cells leukaemic: colour (stain) or resolution?

    python scripts/degradation_probe.py --crops-cache .clsdata/deepapl_112_test.npz \
        --segmenter runs/seg_frozen.safetensors --out docs/figures/degradation_probe.json

The same pipeline crops of DeepAPL's test patients are scored clean, after stain changes (core.augment.hed_jitter,
seeded) and after losing resolution (core.augment.low_resolution: shrunk 2 or 3 times and enlarged back, as BCCD's
640 x 480 fields look next to CellaVision's). Per condition: ROC-AUC, and the fraction called leukaemic of normal
cells, of lymphocytes, and of leukaemic cells.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from napari_leukemia.core import drain
from napari_leukemia.core.augment import hed_jitter, low_resolution
from napari_leukemia.core.config import SegmentConfig
from napari_leukemia.core.cropstore import iter_crops
from napari_leukemia.core.datasets import read_samples, split_by_group
from napari_leukemia.core.evaluate import binary_metrics
from napari_leukemia.core.model import load_classifier
from napari_leukemia.core.predict import p_leukemic, predict_logits, probabilities


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", default="../shared/data/deepapl/manifest.csv")
    ap.add_argument("--classifier", default=None, help="default: the shipped one")
    ap.add_argument("--segmenter", default=None)
    ap.add_argument("--crops-cache", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    clf = load_classifier(args.classifier, "cpu")
    test = split_by_group(read_samples(Path(args.manifest), "cell_class"), seed=0)["test"]
    crops = drain(iter_crops(test, clf.info.crop, segment=SegmentConfig(), segmenter=args.segmenter,
                             cache=args.crops_cache, device="cpu"))
    labels = np.array([s.label for s in crops.samples])
    y = np.isin(labels, ("blast_no_lineage_spec", "promyelocyte", "promonocyte")).astype(int)
    x = torch.from_numpy(crops.images).permute(0, 3, 1, 2).float() / 255

    def stain(sigma, vector_sigma):
        return lambda t: hed_jitter(t, sigma, vector_sigma=vector_sigma, generator=torch.Generator().manual_seed(0))

    conditions = {"clean": lambda t: t, "stain sigma 0.2": stain(0.2, 0.0),
                  "stain sigma 0.2 + vectors 0.1": stain(0.2, 0.1),
                  "resolution / 2": lambda t: low_resolution(t, 2.0), "resolution / 3": lambda t: low_resolution(t, 3.0)}
    rows = {}
    for name, change in conditions.items():
        images = (change(x).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        p = p_leukemic(clf, probabilities(clf, predict_logits(clf, images, batch_size=64)))
        called = p >= 0.5
        rows[name] = {"roc_auc": binary_metrics(y, p)["roc_auc"],
                      "normal_called_leukemic": float(called[y == 0].mean()),
                      "lymphocytes_called_leukemic": float(called[np.isin(labels, ("lymphocyte",))].mean()),
                      "leukemic_called_leukemic": float(called[y == 1].mean())}
        print(name, {k: round(v, 4) for k, v in rows[name].items()}, flush=True)
    report = {"classifier": clf.name, "cells": int(len(y)), "leukemic": int(y.sum()), "conditions": rows}
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
