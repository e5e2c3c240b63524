"""Leukaemic-vs-normal figures of a classifier on DeepAPL validation and test patients, with the hard pair.

    python scripts/hard_pair_probe.py --classifier runs/x/classifier.safetensors --seed 0 --out runs/x/probe.json
    python scripts/hard_pair_probe.py --tta --out docs/figures/hard_pair_probe/shipped.json

Validation is the ``--seed`` draw of ``split_by_group`` on the binary labels (the patients a run of that seed
validated on; ``napari-leukemia evaluate --labels cell_class --split val`` draws other ones). The hard pair is
blasts + promyelocytes against myelocytes + metamyelocytes. Test figures carry 95% intervals from resampling
patients (1,000 draws). ``--tta`` also scores the mean logits over flips and over the 8 rotations/flips of each crop.
Crops come from the caches the training log names (made with the classifier's crop settings).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from napari_leukemia.core import drain
from napari_leukemia.core.cropstore import iter_crops
from napari_leukemia.core.datasets import IMMATURE_GRANULOCYTES, read_samples, split_by_group
from napari_leukemia.core.evaluate import binary_metrics, expected_calibration_error
from napari_leukemia.core.model import load_classifier
from napari_leukemia.core.predict import p_leukemic, predict_logits, probabilities

MANIFEST = Path("../shared/data/deepapl/manifest.csv")


def figures(y, p, labels) -> dict:
    hard = (y == 1) | np.isin(labels, IMMATURE_GRANULOCYTES)
    ig = np.isin(labels, IMMATURE_GRANULOCYTES)
    b = binary_metrics(y, p)
    return {"n": len(y), "roc_auc": b["roc_auc"], "sensitivity_at_95_specificity": b["sensitivity_at_95_specificity"],
            "balanced_accuracy": b["balanced_accuracy"], "hard_pair_roc_auc": binary_metrics(y[hard], p[hard])["roc_auc"],
            "ece": expected_calibration_error(y, p), "immature_granulocytes_called_leukemic": float((p[ig] >= 0.5).mean())}


def patient_interval(y, p, labels, groups, draws: int = 1000) -> dict:
    rng = np.random.default_rng(0)
    names = np.unique(groups)
    rows = {"roc_auc": [], "hard_pair_roc_auc": []}
    for _ in range(draws):
        idx = np.concatenate([np.flatnonzero(groups == g) for g in rng.choice(names, len(names))])
        hard = idx[(y[idx] == 1) | np.isin(labels[idx], IMMATURE_GRANULOCYTES)]
        if len(set(y[idx])) == 2 and len(set(y[hard])) == 2:
            rows["roc_auc"].append(binary_metrics(y[idx], p[idx])["roc_auc"])
            rows["hard_pair_roc_auc"].append(binary_metrics(y[hard], p[hard])["roc_auc"])
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in rows.items()}


def views(images, k: int):
    x = np.rot90(images, k % 4, axes=(1, 2))
    return np.ascontiguousarray(x[:, :, ::-1] if k >= 4 else x)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", default="src/napari_leukemia/models/densenet201_leukemia.safetensors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=".clsdata/deepapl_112_seg2.npz", help="crops of the training patients")
    ap.add_argument("--test-cache", default=".clsdata/deepapl_112_seg2_test.npz")
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    clf = load_classifier(args.classifier, "cpu")
    samples = read_samples(MANIFEST, "binary")
    fine = {str(s.path): s.label for s in read_samples(MANIFEST, "cell_class")}
    parts = {"val": (split_by_group(samples, seed=args.seed)["val"], args.cache),
             "test": ([s for s in samples if s.split == "test"], args.test_cache)}
    result = {"classifier": clf.name, "seed": args.seed}
    for name, (chosen, cache) in parts.items():
        crops = drain(iter_crops(chosen, clf.info.crop, cache=cache, device="cpu"))
        y = np.array([s.label == "leukemic" for s in crops.samples], int)
        labels = np.array([fine[str(s.path)] for s in crops.samples])
        groups = np.array([s.group for s in crops.samples])
        logits = [predict_logits(clf, views(crops.images, k)) for k in (range(8) if args.tta and name == "test" else [0])]
        p = p_leukemic(clf, probabilities(clf, logits[0]))
        result[name] = figures(y, p, labels)
        if name == "test":
            result[name]["patients"] = len(set(groups))
            result[name]["interval_95"] = patient_interval(y, p, labels, groups)
            for tta, ks in (("tta_flips", [0, 2, 4, 6]), ("tta_8", range(8))) if args.tta else ():
                result[tta] = figures(y, p_leukemic(clf, probabilities(clf, np.mean([logits[k] for k in ks], 0))), labels)
        print(name, json.dumps(result[name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
