"""A classifier's figures on labelled cells: :func:`score_cells`, and a dataset split scored and written to a folder.

Research use only: not a diagnostic device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np

from .classes import default_leukemic
from .config import EVAL_BATCH_SIZE, LEUKEMIC_THRESHOLD, SegmentConfig
from .cropstore import iter_crops
from .datasets import IMMATURE_GRANULOCYTES, Sample, read_samples, split_by_group, split_digest
from .events import Event
from .io import finite


def score_cells(classifier, images: np.ndarray, samples: list[Sample], *, truth_leukemic=None,
                batch_size: int = EVAL_BATCH_SIZE, proba: np.ndarray | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of a classifier on labelled cell crops.

    The binary truth is "label is leukaemic": the checkpoint's leukaemic classes when every label is one
    of its classes, else ``truth_leukemic`` (default :func:`default_leukemic` of the labels). ``p_leukemic``
    is summed over the checkpoint's leukaemic classes; a call is ``p_leukemic >= 0.5``.

    Returns
    -------
    report : dict
        ``overall`` (binary metrics and ECE), ``per_class`` (when the labels are the checkpoint's classes:
        precision/recall/F1/support per class, macro-F1, confusion matrix), ``per_label`` (n, fraction called
        leukaemic, mean p_leukemic, and for normal labels the ROC-AUC of the leukaemic cells against them),
        ``hard_pair`` (when immature granulocytes are labelled, :data:`~.datasets.IMMATURE_GRANULOCYTES`: the
        ROC-AUC of the leukaemic cells against them, the hardest look-alikes) and ``per_group`` (n, accuracy,
        mean p_leukemic, fraction called leukaemic, labels).
    y : (N,) ndarray of int
        Binary truth.
    p : (N,) ndarray of float
        ``p_leukemic``.
    """
    from .evaluate import binary_metrics, expected_calibration_error, multiclass_report
    from .predict import classify_crops, p_leukemic

    info = classifier.info
    labels = np.array([s.label for s in samples])
    groups = np.array([s.group for s in samples])
    own = set(labels) <= set(info.classes)
    if own and truth_leukemic is None:
        truth = tuple(info.leukemic)
    else:
        truth = default_leukemic(sorted(set(labels))) if truth_leukemic is None else tuple(truth_leukemic)
        if not set(truth) & set(labels):
            raise ValueError(f"none of the labels {sorted(set(labels))} is taken as leukaemic (leukaemic labels: "
                             f"{list(truth)}); name them (--leukemic-classes)")
    if proba is None:  # else computed by the caller (who kept the parts of a feature SVM's mean)
        proba = classify_crops(classifier, images, batch_size=batch_size)
    p = p_leukemic(classifier, proba)
    y = np.isin(labels, truth).astype(int)
    called = p >= LEUKEMIC_THRESHOLD
    report = {
        "classifier": classifier.name, "classes": list(info.classes), "leukemic_classes": list(info.leukemic),
        "truth_leukemic_labels": sorted(set(truth) & set(labels)), "threshold": LEUKEMIC_THRESHOLD,
        "n_cells": len(labels),
        "overall": {**binary_metrics(y, p, LEUKEMIC_THRESHOLD), "ece": expected_calibration_error(y, p)},
        "per_class": None,
    }
    pred = proba.argmax(1)
    if own:
        index = {c: i for i, c in enumerate(info.classes)}
        report["per_class"] = multiclass_report([index[x] for x in labels], pred, info.classes)
    report["per_label"] = {lab: {"n": int(m.sum()), "called_leukemic": float(called[m].mean()),
                                 "mean_p_leukemic": float(p[m].mean())}
                           for lab in sorted(set(labels)) for m in [labels == lab]}
    details = np.array([s.detail or s.label for s in samples])
    if any(s.detail for s in samples):  # e.g. the cell classes behind binary labels
        report["per_detail"] = {d: {"n": int(m.sum()), "truth_leukemic": float(y[m].mean()),
                                    "called_leukemic": float(called[m].mean()), "mean_p_leukemic": float(p[m].mean())}
                                for d in sorted(set(details)) for m in [details == d]}

    def auc_against(normal_labels) -> float:  # the leukaemic cells against the cells of these normal labels
        m = (y == 1) | np.isin(labels, normal_labels)
        return binary_metrics(y[m], p[m])["roc_auc"]

    for lab, row in report["per_label"].items():
        if lab not in truth:
            row["auc_vs_leukemic"] = auc_against([lab])
    hard = sorted(set(labels) & set(IMMATURE_GRANULOCYTES) - set(truth))
    if hard:
        report["hard_pair"] = {"normal_labels": hard, "n_leukemic": int(y.sum()),
                               "n_normal": int(np.isin(labels, hard).sum()), "roc_auc": auc_against(hard)}
    report["per_group"] = {}
    for g in sorted(set(groups)):
        m = groups == g
        row = {"n": int(m.sum()), "accuracy": float((called[m] == (y[m] == 1)).mean()),
               "mean_p_leukemic": float(p[m].mean()), "called_leukemic": float(called[m].mean()),
               "labels": dict(sorted(Counter(labels[m].tolist()).items()))}
        if own:
            row["class_accuracy"] = float((np.array(info.classes)[pred[m]] == labels[m]).mean())
        report["per_group"][g] = row
    return report, y, p


def write_evaluation(out_dir, report: dict, y: np.ndarray, p: np.ndarray) -> list[Path]:
    """Write ``metrics.json`` (NaN as null), ``roc.png`` (when both truths occur) and ``confusion.png``."""
    from .evaluate import plot_confusion, plot_roc
    from .io import write_json

    out = Path(out_dir)
    written = [out / "metrics.json"]
    write_json(written[0], finite(report))
    if len(set(y.tolist())) == 2:
        plot_roc(y, p, out / "roc.png", title=f"{report['classifier']}: leukaemic vs not")
        written.append(out / "roc.png")
    if report["per_class"] is not None:
        plot_confusion(report["per_class"]["confusion_matrix"], report["classes"], out / "confusion.png")
    else:
        plot_confusion(report["overall"]["confusion_matrix"], ["not leukaemic", "leukaemic"], out / "confusion.png")
    written.append(out / "confusion.png")
    return written


def evaluate_dataset(source, classifier, out_dir, *, split: str = "test", single_cells: bool = False,
                     deepapl_labels: str = "binary", truth_leukemic=None, seed: int | None = None,
                     segment: SegmentConfig = SegmentConfig(), segmenter=None, crops_cache=None, device: str = "auto",
                     batch_size: int = EVAL_BATCH_SIZE, should_stop: Callable[[], bool] = lambda: False
                     ) -> Generator[Event, None, dict | None]:
    """Score a classifier on one split of a dataset; writes :func:`write_evaluation`'s files to ``out_dir``.

    The split is :func:`~.datasets.split_by_group`'s with ``seed`` (default: the seed the checkpoint was
    trained with), so ``test`` is the split its training kept aside; ``all`` takes every image. Cells are
    cropped with the checkpoint's own crop settings. Yields crop progress; returns the report (None if stopped),
    with ``skipped`` files and ``split_matches_training`` (None when the checkpoint does not record it).
    """
    from .model import Classifier, load_classifier

    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split must be train, val, test or all, got {split!r}")
    clf = classifier if isinstance(classifier, Classifier) else load_classifier(classifier, device)
    trained = {k: v for k, v in (clf.info.provenance or {}).items() if isinstance(v, dict)}  # older: free text
    if seed is None:
        seed = int(trained.get("train_config", {}).get("seed", 0))
    samples = read_samples(source, deepapl_labels)
    splits = split_by_group(samples, seed=seed)
    chosen = samples if split == "all" else splits[split]
    if not chosen:
        raise ValueError(f"the {split} split of {source} is empty (seed {seed}); choose another --split")
    crops = yield from iter_crops(chosen, clf.info.crop, single_cells=single_cells, segment=segment,
                                  segmenter=segmenter, cache=crops_cache, device=device, should_stop=should_stop)
    if crops is None:
        return None
    if not crops.samples:
        raise ValueError(f"no usable cell in the {split} split ({len(crops.skipped)} files skipped)")
    report, y, p = score_cells(clf, crops.images, crops.samples, truth_leukemic=truth_leukemic, batch_size=batch_size)
    recorded = trained.get("data", {}).get("split")
    report = {"dataset": str(source) if not isinstance(source, (list, tuple)) else "samples", "split": split,
              "seed": seed, "split_matches_training": None if recorded is None else recorded == split_digest(splits),
              "files": len(chosen), "skipped": crops.skipped, **report}
    write_evaluation(out_dir, report, y, p)
    return report
