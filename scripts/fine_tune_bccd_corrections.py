"""The review loop on real data: correct BCCD cells (normal blood, another lab) and fine-tune the shipped classifier.

    python scripts/fine_tune_bccd_corrections.py --out runs/ft_bccd --epochs 2 --lr 1e-4 --mix-per-class 800 \
        --crops-cache .clsdata/ft_bccd.npz --test-crops-cache .clsdata/ft_bccd_test.npz

1. Every BCCD field is analysed with the shipped models; each found cell matching a WBC box (IoU >= 0.3) is called
   ``normal`` (BCCD is normal blood) and exported with :func:`~napari_leukemia.core.training_set.export_training_set`,
   as the Review panel does: one slide (group) per field.
2. :func:`~napari_leukemia.core.fine_tune.fine_tune` holds out 20% of the fields, mixes in ``--mix-per-class`` DeepAPL
   ``split=train`` fields per class (so the model does not forget) and fine-tunes the shipped DenseNet201.
3. Before / after: fraction of held-out BCCD cells called leukaemic, and DeepAPL ``split=test`` metrics.
   Figures go to ``OUT/fine_tune_bccd.json``.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_leukemia.core import drain
from napari_leukemia.core.boxes import box_iou, label_boxes, read_voc_boxes
from napari_leukemia.core.config import AnalysisConfig, TrainConfig
from napari_leukemia.core.datasets import read_dataset
from napari_leukemia.core.fine_tune import fine_tune
from napari_leukemia.core.io import read_image
from napari_leukemia.core.model import DEFAULT_CLASSIFIER
from napari_leukemia.core.pipeline import analyze_smear, get_classifier
from napari_leukemia.core.review import annotate
from napari_leukemia.core.scoring import evaluate_dataset
from napari_leukemia.core.training_set import DATASET_CSV, export_training_set


def print_epoch(event):
    report = event.payload
    if event.stage == "epoch" and not report.get("stopped"):
        print(f"epoch {report['epoch']}: val loss {report['val_loss']:.4f} acc {report['val_accuracy']:.3f}", flush=True)


def export_corrections(shared: Path, folder: Path) -> Path:
    """Analyse every BCCD field and export the cells on WBC boxes, called normal."""
    csv = folder / DATASET_CSV
    if csv.is_file():
        return csv
    clf = get_classifier(None, "cpu")
    for f in sorted((shared / "bccd" / "JPEGImages").glob("*.jpg")):
        image = read_image(f)
        r = analyze_smear(image, classifier=clf, config=AnalysisConfig(device="cpu", gradcam=False), name=f.name)
        try:
            truth = read_voc_boxes(shared / "bccd" / "Annotations" / f"{f.stem}.xml")
        except ValueError:
            continue
        if not len(r.cells) or not len(truth):
            continue
        iou = box_iou(label_boxes(r.labels), truth).max(1)
        cells = r.cells
        for label, best in zip(cells["label"], iou):
            if best >= 0.3:
                cells = annotate(cells, int(label), "normal", classes=clf.info.classes, who="BCCD WBC boxes")
        export_training_set(folder, image, r.labels, cells, clf.info.crop, source_image=f.name, group=f.stem)
    return csv


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--mix-per-class", type=int, default=400)
    ap.add_argument("--corrections", type=Path, help="an exported corrections folder to reuse (default OUT/corrections)")
    ap.add_argument("--crops-cache", type=Path)
    ap.add_argument("--test-crops-cache", type=Path)
    args = ap.parse_args()
    t0 = time.perf_counter()
    csv = export_corrections(args.shared, args.corrections or args.out / "corrections")
    manifest = args.shared / "deepapl" / "manifest.csv"
    train = [s for s in read_dataset(manifest) if s.split == "train"]
    rng = np.random.default_rng(0)
    mix = []
    for label in sorted({s.label for s in train}):
        pool = [s for s in train if s.label == label]
        mix += [pool[i] for i in sorted(rng.choice(len(pool), min(args.mix_per_class, len(pool)), replace=False))]
    config = TrainConfig(epochs=args.epochs, lr=args.lr, device="cpu", imagenet="")
    result = drain(fine_tune(csv, args.out / "tuned", init=DEFAULT_CLASSIFIER, mix=mix, held_out=0.2, config=config,
                             crops_cache=args.crops_cache, command="scripts/fine_tune_bccd_corrections.py"),
                   print_epoch)
    deepapl = {}
    for name, path in (("before", DEFAULT_CLASSIFIER), ("after", result["checkpoint"])):
        report = drain(evaluate_dataset(manifest, path, args.out / f"deepapl_test_{name}", split="test",
                                        crops_cache=args.test_crops_cache, device="cpu"))
        deepapl[name] = {k: report["overall"][k] for k in ("roc_auc", "sensitivity_at_95_specificity",
                                                           "balanced_accuracy", "specificity", "recall", "ece")}
    figures = {
        "command": "python scripts/fine_tune_bccd_corrections.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "shared"),
        "corrections": str(csv), "bccd_cells": sum(1 for _ in open(csv)) - 1, "mix_deepapl_fields": len(mix),
        "held_out_bccd_cells": result["held_out"], "held_out_by": result["held_out_by"],
        "bccd_held_out_called_leukemic": {k: 1 - result[k]["accuracy"] for k in ("before", "after")},
        "deepapl_test": deepapl, "val_metrics": result["val_metrics"], "seconds": round(time.perf_counter() - t0),
    }
    (args.out / "fine_tune_bccd.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
