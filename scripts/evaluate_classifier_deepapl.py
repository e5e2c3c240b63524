"""Score a classifier on DeepAPL crops made by prepare_deepapl_crops.py (the full pipeline: segmented centre cell).

    python scripts/evaluate_classifier_deepapl.py --crops .clsdata/test.npz --out docs/figures/deepapl_test

Writes metrics.json (overall, per cell class, per patient; fields the segmenter missed are counted), roc.png and
confusion.png. p_leukemic >= 0.5 is a leukaemic call.
"""

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from napari_leukemia.core.cropstore import load_crops
from napari_leukemia.core.datasets import DEEPAPL_LEUKEMIC
from napari_leukemia.core.evaluate import binary_metrics, expected_calibration_error, plot_confusion, plot_roc
from napari_leukemia.core.model import load_classifier
from napari_leukemia.core.predict import p_leukemic, predict_logits, probabilities


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--crops", required=True)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, table = load_crops(args.crops)
    clf = load_classifier(args.classifier, "cpu")
    p = p_leukemic(clf, probabilities(clf, predict_logits(clf, images, batch_size=64)))
    y = np.isin(table["coarse_label"], DEEPAPL_LEUKEMIC).astype(int)
    fields = list(csv.DictReader(open(args.crops + ".fields.csv")))
    report = {"classifier": clf.name, "overall": binary_metrics(y, p), "ece": expected_calibration_error(y, p),
              "fields": {o: sum(r["outcome"] == o for r in fields) for o in ("ok", "no cell", "unreadable")}}
    classes = np.array(table["cell_class"])
    report["per_cell_class"] = {c: {"n": int((classes == c).sum()), "called_leukemic": float((p[classes == c] >= 0.5).mean())}
                                for c in sorted(set(classes))}
    patients = np.array(table["patient_id"])
    report["per_patient"] = {pt: {"n": int((patients == pt).sum()),
                                  "accuracy": float(((p[patients == pt] >= 0.5) == y[patients == pt]).mean())}
                             for pt in sorted(set(patients))}
    hard = np.isin(classes, ["blast_no_lineage_spec", "promyelocyte", "myelocyte", "metamyelocyte"])
    if len(set(y[hard])) == 2:
        report["blasts_promyelocytes_vs_immature_granulocytes_auc"] = binary_metrics(y[hard], p[hard])["roc_auc"]
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    plot_roc(y, p, out / "roc.png", title="DeepAPL split=test (pipeline crops)")
    plot_confusion(report["overall"]["confusion_matrix"], ["normal", "leukemic"], out / "confusion.png")
    o = report["overall"]
    print(json.dumps({k: o[k] for k in ("n", "accuracy", "balanced_accuracy", "roc_auc", "sensitivity_at_95_specificity",
                                          "precision", "recall", "specificity", "f1")}), "ECE", round(report["ece"], 4),
          report["fields"])


if __name__ == "__main__":
    main()
