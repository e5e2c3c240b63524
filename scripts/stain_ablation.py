"""Stain-augmentation ablation table: DeepAPL split=test metrics and BCCD leukaemic calls per classifier.

    python scripts/stain_ablation.py --segmenter runs/seg_frozen.safetensors \
        --crops-cache .clsdata/deepapl_112_test.npz --out docs/figures/stain_ablation.json \
        --arm shipped src/napari_leukemia/models/densenet201_leukemia.safetensors runs/bccd_shipped.json \
        --arm jitter0 runs/stain_j0/classifier.safetensors runs/stain_j0/bccd_calls.json ...

Each classifier scores the same pipeline crops of DeepAPL's test patients (the crops cache; cells are segmented
only when missing from it): ROC-AUC, sensitivity at 95% specificity, balanced accuracy, ECE, the fraction called
leukaemic per cell class, and the AUC of blasts + promyelocytes against myelocytes + metamyelocytes (the hardest
look-alikes). The BCCD figures are read from scripts/evaluate_bccd_calls.py's output for that classifier; the
training command, settings and seconds from the checkpoint's provenance.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from napari_leukemia.core import drain
from napari_leukemia.core.config import SegmentConfig
from napari_leukemia.core.cropstore import iter_crops
from napari_leukemia.core.datasets import read_samples, split_by_group
from napari_leukemia.core.evaluate import binary_metrics
from napari_leukemia.core.model import load_classifier
from napari_leukemia.core.scoring import score_cells

HARD_LEUKEMIC = ("blast_no_lineage_spec", "promyelocyte")
HARD_NORMAL = ("myelocyte", "metamyelocyte")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", default="../shared/data/deepapl/manifest.csv")
    ap.add_argument("--segmenter", default=None)
    ap.add_argument("--crops-cache", default=None)
    ap.add_argument("--arm", nargs=3, action="append", required=True, metavar=("NAME", "CLASSIFIER", "BCCD_JSON"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    samples = read_samples(Path(args.manifest), "cell_class")
    test = split_by_group(samples, seed=0)["test"]
    rows = []
    for name, ckpt, bccd_json in args.arm:
        clf = load_classifier(ckpt, "cpu")
        crops = drain(iter_crops(test, clf.info.crop, segment=SegmentConfig(), segmenter=args.segmenter,
                                 cache=args.crops_cache, device="cpu"))
        report, y, p = score_cells(clf, crops.images, crops.samples)
        labels = np.array([s.label for s in crops.samples])
        hard = np.isin(labels, HARD_LEUKEMIC + HARD_NORMAL)
        o = report["overall"]
        bccd = json.loads(Path(bccd_json).read_text())
        prov = clf.info.provenance if isinstance(clf.info.provenance, dict) else {}
        rows.append({
            "arm": name, "classifier": clf.name,
            "train_config": prov.get("train_config"), "command": prov.get("command"),
            "train_seconds": prov.get("train_seconds", prov.get("seconds")), "epochs_run": prov.get("epochs_run"),
            "deepapl_test": {"n": report["n_cells"], "skipped": len(crops.skipped), "roc_auc": o["roc_auc"],
                             "sensitivity_at_95_specificity": o["sensitivity_at_95_specificity"],
                             "balanced_accuracy": o["balanced_accuracy"], "ece": o["ece"],
                             "confusion_matrix": o["confusion_matrix"],
                             "blasts_promyelocytes_vs_myelocytes_metamyelocytes_auc":
                                 binary_metrics(y[hard], p[hard])["roc_auc"],
                             "called_leukemic_per_cell_class": {k: round(v["called_leukemic"], 4)
                                                                for k, v in report["per_label"].items()}},
            "bccd": {k: bccd[k] for k in ("leukocytes", "called_leukemic", "fraction_called_leukemic",
                                          "median_p_leukemic", "cells_on_wbc_box", "fraction_called_leukemic_on_wbc_box",
                                          "cells_off_wbc_box", "fraction_called_leukemic_off_wbc_box") if k in bccd},
        })
        d = rows[-1]["deepapl_test"]
        print(f"{name}: AUC {d['roc_auc']:.4f} sens@95 {d['sensitivity_at_95_specificity']:.4f} "
              f"bal.acc {d['balanced_accuracy']:.4f} ECE {d['ece']:.4f} "
              f"hard AUC {d['blasts_promyelocytes_vs_myelocytes_metamyelocytes_auc']:.4f} "
              f"BCCD {rows[-1]['bccd'].get('fraction_called_leukemic', float('nan')):.4f}", flush=True)
    out = {"dataset": f"{args.manifest} split=test (patients kept aside); BCCD JPEGImages (normal smears)",
           "segmenter": args.segmenter or "shipped", "crops_cache": args.crops_cache, "arms": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
