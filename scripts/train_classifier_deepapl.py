"""Train the leukaemic-vs-normal DenseNet201 on DeepAPL split=train crops made by the pipeline.

    python scripts/prepare_deepapl_crops.py ...      # segment + crop (the pipeline), writes crops npz
    python scripts/train_classifier_deepapl.py --crops .clsdata/train.npz --out runs/densenet --epochs 12

Validation: 15% of the split=train patients (by patient). Temperature fitted on validation.
"""

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from napari_leukemia.core.config import CropConfig, TrainConfig
from napari_leukemia.core.cropstore import load_crops
from napari_leukemia.core.datasets import DEEPAPL_LEUKEMIC
from napari_leukemia.core.evaluate import binary_metrics, fit_temperature, plot_curves
from napari_leukemia.core.model import ClassifierInfo, load_classifier, save_classifier
from napari_leukemia.core.predict import predict_logits
from napari_leukemia.core.train import CropSet, train_epochs


def patient_split(patients, frac, seed):
    """Choose ``frac`` of the unique patients (seeded); returns a boolean mask over cells."""
    uniq = np.unique(patients)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(uniq, size=max(1, round(frac * len(uniq))), replace=False)
    return np.isin(patients, chosen)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--crops", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--imagenet", default="auto")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--finalize", action="store_true",
                    help="skip training: calibrate best.safetensors of an earlier run, write the final file")
    args = ap.parse_args()
    images, table = load_crops(args.crops)
    crop = CropConfig(**table.pop("crop_config")) if "crop_config" in table else CropConfig(size=images.shape[1])
    y = np.isin(np.array(table["coarse_label"]), DEEPAPL_LEUKEMIC).astype(np.int64)
    patients = np.array(table["patient_id"])
    val_mask = patient_split(patients, 0.15, seed=0)
    data = CropSet(images, y, patients)
    train, val = data.subset(~val_mask), data.subset(val_mask)
    print(f"train {len(train)} cells / {len(np.unique(train.groups))} patients, val {len(val)} / {len(np.unique(val.groups))}")
    info = ClassifierInfo(classes=("normal", "leukemic"), leukemic=("leukemic",), crop=crop)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, imagenet=args.imagenet)
    if not args.finalize:
        for report in train_epochs(train, val, info, cfg, args.out, resume=args.resume):
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}), flush=True)
    history = json.loads((Path(args.out) / "history.json").read_text())
    seconds = sum(h["seconds"] for h in history)
    best = load_classifier(Path(args.out) / "best.safetensors")
    logits = predict_logits(best, val.images, batch_size=128)
    temperature = fit_temperature(logits, val.targets)
    z = logits / temperature
    p = np.exp(z[:, 1] - np.logaddexp(z[:, 0], z[:, 1]))
    import torch

    provenance = {
        "data": "DeepAPL split=train (Sidhom et al. 2021, MIT), crops by the pipeline: "
                "cellpose segmentation, centre cell, crop_cells",
        "train_cells": len(train), "val_cells": len(val),
        "train_patients": int(len(np.unique(train.groups))), "val_patients": int(len(np.unique(val.groups))),
        "command": "python scripts/train_classifier_deepapl.py "
                   + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "train_config": cfg.to_dict(),
        "seconds": round(seconds, 1),
        "epochs_run": len(history),
        "best_epoch": min(history, key=lambda h: h["val_loss"])["epoch"],
        "hardware": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "val_metrics": binary_metrics(val.targets, p),
        "temperature": temperature,
    }
    best.info = ClassifierInfo(**{**best.info.__dict__, "temperature": temperature, "provenance": provenance})
    save_classifier(best, Path(args.out) / "densenet201_leukemia.safetensors")
    plot_curves(history, Path(args.out) / "curves.png")
    print(json.dumps(provenance["val_metrics"]), "T", temperature)


if __name__ == "__main__":
    main()
