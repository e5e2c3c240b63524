"""Score a finished cross-validation again with a test-time change, on the same fold models and cells.

Test-time recipes (nothing is trained again): ``bn_adapt`` moves every batch-norm layer's statistics to each
patient's own cells before scoring them (:func:`~napari_leukemia.core.predict.adapt_batchnorm`, ``--prior`` cells
of weight for the trained statistics); ``flips`` averages the logits over the 8 flips and quarter turns. Folds not
finished yet are left out (both headlines then cover the same finished folds). Writes
``<CVDIR>/rescored_<mode>.json`` (the :func:`~napari_leukemia.core.cv_report.cv_report` of the new calls) and prints
its headline beside the original's.

    python scripts/cv_rescore.py ~/.cache/napari-leukemia/runs/cv5_r18_baseline ../shared/data/deepapl/manifest.csv \
        --mode bn_adapt --crops-cache ~/.cache/napari-leukemia/crops/deepapl_112.npz
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from napari_leukemia.core.cropstore import iter_crops
from napari_leukemia.core.crossval import FOLD_PREDICTIONS
from napari_leukemia.core.cv_report import cv_report
from napari_leukemia.core.datasets import read_samples
from napari_leukemia.core.fit import FINAL_NAME
from napari_leukemia.core.io import finite, write_json
from napari_leukemia.core.model import load_classifier
from napari_leukemia.core.predict import adapt_batchnorm, p_leukemic, predict_logits, probabilities


def drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def flip_logits(clf, crops):
    views = [np.rot90(crops, k, axes=(1, 2)) for k in range(4)]
    views += [v[:, :, ::-1] for v in views]
    return np.mean([predict_logits(clf, np.ascontiguousarray(v)) for v in views], axis=0)


def headline(report: dict) -> str:
    o, e, a = report["pooled"], report["patient_errors"], report["patient_errors_adjusted"]
    return (f"ROC-AUC {o['roc_auc']:.4f}, sens@95 {o['sensitivity_at_95_specificity']:.3f}, ECE {o['ece']:.3f}; "
            f"per patient: count error {e['mean_abs_error']:.1f} (max {e['max_abs_error']:.1f}), adjusted "
            f"{a['mean_abs_error']:.1f} (max {a['max_abs_error']:.1f})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cv_dir", type=Path)
    parser.add_argument("dataset")
    parser.add_argument("--mode", choices=("bn_adapt", "flips"), required=True)
    parser.add_argument("--prior", type=float, default=0.0, help="bn_adapt: weight of the trained statistics, in cells")
    parser.add_argument("--crops-cache", required=True)
    args = parser.parse_args(argv)
    by_path = {str(s.path): s for s in read_samples(args.dataset)}
    rows, originals = [], []
    k = json.loads((args.cv_dir / "folds.json").read_text())["k"]
    for i in range(k):
        run = args.cv_dir / f"fold_{i}"
        if not (run / FOLD_PREDICTIONS).is_file():
            print(f"fold {i + 1}/{k} not finished: left out", flush=True)
            continue
        with open(run / FOLD_PREDICTIONS, newline="") as fh:
            fold_rows = {r["path"]: r for r in csv.DictReader(fh)}
        originals += fold_rows.values()
        clf = load_classifier(run / FINAL_NAME, "cpu")
        crops = drain(iter_crops([by_path[p] for p in fold_rows], clf.info.crop, cache=args.crops_cache, device="cpu"))
        groups = np.array([s.group for s in crops.samples])
        p = np.zeros(len(groups))
        for g in sorted(set(groups)):
            m = groups == g
            if args.mode == "bn_adapt":
                logits = predict_logits(adapt_batchnorm(clf, crops.images[m], prior=args.prior), crops.images[m])
            else:
                logits = flip_logits(clf, crops.images[m])
            p[m] = p_leukemic(clf, probabilities(clf, logits))
        rows += [{**fold_rows[str(s.path)], "p_leukemic": f"{q:.6f}"} for s, q in zip(crops.samples, p)]
        print(f"fold {i + 1}/{k} rescored", flush=True)
    report = cv_report(rows)
    name = f"rescored_{args.mode}" + (f"_prior{args.prior:g}" if args.mode == "bn_adapt" and args.prior else "")
    write_json(args.cv_dir / f"{name}.json", finite({"mode": args.mode, "prior": args.prior, **report}))
    print(f"original: {headline(cv_report(originals))}\n{name}: {headline(report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
