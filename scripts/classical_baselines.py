"""The seeds' classical baselines (logistic regression, SVM, random forest, kNN on hand-made features,
:mod:`napari_leukemia.core.classical`) cross-validated on the patient folds of a network's ``train --cv`` run.

    python scripts/classical_baselines.py ../shared/data/deepapl/manifest.csv \
        --folds ~/.cache/napari-leukemia/runs/cv5_r18_baseline/folds.json \
        --crops-cache ~/.cache/napari-leukemia/crops/deepapl_112.npz \
        --score-also ~/.cache/napari-leukemia/data/pbc_heldout.csv --out ~/.cache/napari-leukemia/runs/cv5_classical

Same crops (read from the crops cache, nothing is cropped again), same folds, same report: each model gets
``OUT/<model>/`` with ``predictions.csv``, ``cv.json`` (plus ``cost``: features and model time, cells per
second, parameters), ``patients.csv`` and ``patients.png``, which ``scripts/cv_table.py`` compares with the
networks. A model trains on all the cells of the other folds (fixed settings, nothing tuned, so it needs no
validation split). Features are computed once into ``OUT/features_cv.npz``, the slow part (about 9 ms a crop
on one free core).

``--labels cell_type`` fits the models to DeepAPL's cell types instead (same cells, folds and features) and
writes ``OUT/<model>/cell_type.json``: macro-F1 and accuracy per fold and pooled, per-class F1 and the confusion
matrix (:func:`~napari_leukemia.core.evaluate.multiclass_report`), the baseline of the cell-type checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_leukemia.core import drain
from napari_leukemia.core.classical import CLASSICAL_MODELS, FEATURE_NAMES, classical_model, crop_features
from napari_leukemia.core.config import CropConfig
from napari_leukemia.core.cropstore import iter_crops
from napari_leukemia.core.crossval import PREDICTION_COLUMNS, patient_folds
from napari_leukemia.core.cv_report import cv_report, other_data_report, write_cv_report
from napari_leukemia.core.datasets import read_samples
from napari_leukemia.core.evaluate import multiclass_report
from napari_leukemia.core.io import write_csv, write_json


def cached_crops(samples, cache: Path, size: int):
    """The crops of ``samples`` from ``cache``; refuses to crop anything (that is the networks' run's job)."""
    def refuse_cropping(event):
        if event.payload["cached"] < event.total:
            raise SystemExit(f"{cache}: holds {event.payload['cached']} of {event.total} crops with these settings; "
                             "run the networks' cross-validation with this --crops-cache first")

    return drain(iter_crops(samples, CropConfig(size=size), cache=cache, device="cpu"), refuse_cropping)


def features_of(name: str, samples, cache: Path, size: int, out: Path):
    """``(crops.samples, features, seconds per crop)``, computed once into ``OUT/features_<name>.npz``."""
    crops = cached_crops(samples, cache, size)
    paths = np.array([str(s.path) for s in crops.samples])
    path = out / f"features_{name}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if np.array_equal(z["paths"], paths) and tuple(z["names"]) == FEATURE_NAMES:
                return crops.samples, z["features"], float(z["seconds_per_crop"])
    start = time.perf_counter()
    features = crop_features(crops.images)
    per_crop = (time.perf_counter() - start) / max(len(features), 1)
    np.savez(path, paths=paths, names=np.array(FEATURE_NAMES), features=features, seconds_per_crop=per_crop)
    return crops.samples, features, per_crop


def n_parameters(model) -> int:
    """Numbers the fitted model keeps (coefficients, support vectors, tree nodes, stored training cells)."""
    est = model[-1]
    if hasattr(est, "calibrated_classifiers_"):  # the SVM inside its Platt scaling
        est = est.calibrated_classifiers_[0].estimator
    if hasattr(est, "coef_"):
        return int(est.coef_.size + est.intercept_.size)
    if hasattr(est, "support_vectors_"):
        return int(est.support_vectors_.size + est.dual_coef_.size)
    if hasattr(est, "estimators_"):
        return int(sum(t.tree_.node_count for t in est.estimators_))
    return int(est.n_samples_fit_ * est.n_features_in_)


def rows_of(fold: int, samples, p) -> list[dict]:
    return [{"fold": fold, "path": str(s.path), "group": s.group, "stratum": s.stratum, "label": s.label,
             "detail": s.detail, "truth": int(s.label == "leukemic"), "p_leukemic": f"{q:.6f}"}
            for s, q in zip(samples, p)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--folds", type=Path, required=True, help="folds.json of the networks' cross-validation")
    parser.add_argument("--crops-cache", type=Path, required=True)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--score-also", default=None, help="data no fold trains on (e.g. another lab's cells)")
    parser.add_argument("--models", nargs="+", default=list(CLASSICAL_MODELS), choices=CLASSICAL_MODELS)
    parser.add_argument("--labels", choices=("binary", "cell_type"), default="binary",
                        help="blast equivalent or not (the default), or DeepAPL's cell types")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    samples = read_samples(args.dataset)
    plan = json.loads(args.folds.read_text())
    folds = plan["folds"]
    if folds != patient_folds(samples, plan["k"], seed=plan["seed"]):
        raise SystemExit(f"{args.folds}: its folds are not the patient folds of {args.dataset}")
    args.out.mkdir(parents=True, exist_ok=True)
    kept, x, per_crop = features_of("cv", samples, args.crops_cache, args.size, args.out)
    other = (features_of("other", read_samples(args.score_also), args.crops_cache, args.size, args.out)
             if args.score_also else None)
    y = np.array([s.label == "leukemic" for s in kept], int)
    group = np.array([s.group for s in kept])
    print(f"{len(kept)} cells, {len(set(group))} patients, {x.shape[1]} features, {1000 * per_crop:.1f} ms a crop")
    if args.labels == "cell_type":
        return cell_types(args, kept, x, group, folds, plan["seed"])
    for name in args.models:
        rows, other_rows, fit_s, predict_s, params = [], [], 0.0, 0.0, []
        for i, fold in enumerate(folds):
            test = np.isin(group, fold)
            model = classical_model(name, seed=plan["seed"])
            start = time.perf_counter()
            model.fit(x[~test], y[~test])
            fit_s += time.perf_counter() - start
            start = time.perf_counter()
            p = model.predict_proba(x[test])[:, 1]
            predict_s += time.perf_counter() - start
            params.append(n_parameters(model))
            rows += rows_of(i, [s for s, t in zip(kept, test) if t], p)
            if other:
                other_rows.append(rows_of(i, other[0], model.predict_proba(other[1])[:, 1]))
        rows = [{k: str(v) for k, v in r.items()} for r in rows]
        report = {"k": plan["k"], "seed": plan["seed"], **cv_report(rows)}
        if other:
            report["other_data"] = {Path(args.score_also).stem: other_data_report(other_rows)}
        report["cost"] = {"features_ms_per_cell": 1000 * per_crop, "fit_seconds_per_fold": fit_s / len(folds),
                          "model_cells_per_second": len(rows) / predict_s,
                          "cells_per_second": 1 / (per_crop + predict_s / len(rows)),
                          "parameters": int(np.mean(params))}
        report["model"] = name
        report["features"] = list(FEATURE_NAMES)
        out = args.out / name
        out.mkdir(exist_ok=True)
        write_csv(out / "predictions.csv", rows, PREDICTION_COLUMNS)
        write_cv_report(out, report)
        e = report["patient_errors"]
        print(f"{name}: ROC-AUC {report['pooled']['roc_auc']:.3f}, patient error {e['mean_abs_error']:.1f} mean, "
              f"{e['max_abs_error']:.1f} max; fit {fit_s / len(folds):.1f} s a fold")
    return 0


def cell_types(args, kept, x, group, folds, seed: int) -> int:
    """Each model fitted to the cell types on the same folds: macro-F1 per fold into ``OUT/<model>/cell_type.json``."""
    types = {str(s.path): s.label for s in read_samples(args.dataset, "cell_type")}
    classes = sorted(set(types.values()))
    y = np.array([classes.index(types[str(s.path)]) for s in kept])
    for name in args.models:
        pred, per_fold = np.zeros_like(y), []
        for fold in folds:
            test = np.isin(group, fold)
            model = classical_model(name, seed=seed).fit(x[~test], y[~test])
            pred[test] = model.predict(x[test])
            r = multiclass_report(y[test], pred[test], classes)
            per_fold.append({"patients": len(fold), "cells": int(test.sum()), "macro_f1": r["macro_f1"],
                             "accuracy": r["accuracy"]})
        report = {"model": name, "labels": "cell_type", "folds": per_fold, "pooled": multiclass_report(y, pred, classes),
                  "classes": classes}
        (args.out / name).mkdir(exist_ok=True)
        write_json(args.out / name / "cell_type.json", report)
        f1s = " / ".join(f"{f['macro_f1']:.3f}" for f in per_fold)
        print(f"{name}: macro-F1 per fold {f1s}, pooled "
              f"{report['pooled']['macro_f1']:.3f}, accuracy {report['pooled']['accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
