"""The report of a cross-validation by patient (:mod:`~.crossval`): pooled and per-fold cell-level figures, call
rates per cell class, and the per-patient blast-equivalent percentages a hematologist reads, with their intervals.

Research use only: not a diagnostic device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .blast_count import adjusted_percentage, blast_percentage
from .datasets import IMMATURE_GRANULOCYTES
from .io import finite, write_json

#: Targets of the cross-validated figures (issue "Blast percentages that hold on new patients").
TARGETS = {"roc_auc": (">=", 0.97), "sensitivity_at_95_specificity": (">=", 0.85), "ece": ("<=", 0.03),
           "patient_mean_abs_error": ("<=", 5.0), "patient_max_abs_error": ("<=", 10.0)}


def other_data_report(per_fold: list[list[dict]], threshold: float = 0.5) -> dict:
    """Call rates of data no fold trained on, scored by each fold's classifier: per fold, and averaged.

    Returns
    -------
    dict
        ``n_cells``, ``called_leukemic`` (the mean over folds of the share of cells called blast equivalent),
        ``per_fold`` (each fold's share) and ``per_detail`` (cell class: ``n`` and the mean share called).
    """
    rates = [float(np.mean([float(r["p_leukemic"]) >= threshold for r in rows])) if rows else float("nan")
             for rows in per_fold]
    details = sorted({r["detail"] or r["label"] for rows in per_fold for r in rows})
    per_detail = {}
    for d in details:
        shares = [np.mean([float(r["p_leukemic"]) >= threshold for r in rows if (r["detail"] or r["label"]) == d])
                  for rows in per_fold if any((r["detail"] or r["label"]) == d for r in rows)]
        per_detail[d] = {"n": sum((r["detail"] or r["label"]) == d for r in per_fold[0]),
                         "called_leukemic": float(np.mean(shares))}
    return {"n_cells": len(per_fold[0]) if per_fold else 0, "called_leukemic": float(np.nanmean(rates)),
            "per_fold": rates, "per_detail": per_detail}


def cv_report(rows: list[dict], *, fold_metrics: list[dict] | None = None, threshold: float = 0.5) -> dict:
    """Pooled, per-fold, per-cell-class and per-patient figures of out-of-fold calls.

    Parameters
    ----------
    rows : list of dict
        :data:`PREDICTION_COLUMNS` (strings, as read from the CSV).
    fold_metrics : list of dict, optional
        Each fold's :func:`~.scoring.score_cells` report; its ``per_class`` macro-F1 is kept (multi-class
        checkpoints).

    Returns
    -------
    dict
        ``pooled`` (binary metrics and ECE), ``per_fold``, ``hard_pair`` (blast equivalents against immature
        granulocytes, when labelled), ``per_detail`` (call rate per cell class), ``patients`` (one row per
        patient: cells, true and predicted blast-equivalent %, difference, and the 95% interval a slide
        summary would give, :func:`~.blast_count.blast_percentage` with the error rates of the other folds'
        calls; then the percentage corrected for those rates, :func:`~.blast_count.adjusted_percentage`, with
        its interval), ``cv_rates`` (sensitivity and false-positive rate of all
        calls: what a shipped checkpoint carries), ``patient_errors`` (mean and largest absolute difference,
        patients off by more than 5 and 10 points, share of true values inside the interval), the same for the
        adjusted percentage (``patient_errors_adjusted``) and for the mean probability
        (``patient_errors_mean_p``), and ``targets`` (each target, its value and whether it is met).
    """
    from .evaluate import binary_metrics, expected_calibration_error

    y = np.array([int(r["truth"]) for r in rows])
    p = np.array([float(r["p_leukemic"]) for r in rows])
    fold = np.array([int(r["fold"]) for r in rows])
    group = np.array([r["group"] for r in rows])
    detail = np.array([r["detail"] or r["label"] for r in rows])
    called = p >= threshold

    def figures(m) -> dict:
        return {**binary_metrics(y[m], p[m], threshold), "ece": expected_calibration_error(y[m], p[m])}

    report: dict = {"n_cells": len(rows), "n_patients": len(set(group)), "threshold": threshold,
                    "pooled": figures(np.ones(len(y), bool)), "per_fold": []}
    for i in sorted(set(fold.tolist())):
        row = {"fold": i, "patients": len(set(group[fold == i])), **figures(fold == i)}
        per_class = (fold_metrics or [{}] * (i + 1))[i].get("per_class") if fold_metrics else None
        if per_class:
            row["macro_f1"] = per_class.get("macro_f1")
            row["class_accuracy"] = per_class.get("accuracy")
        report["per_fold"].append(row)
    hard = np.isin(detail, IMMATURE_GRANULOCYTES) & (y == 0)
    if hard.any() and y.any():
        m = (y == 1) | hard
        report["hard_pair"] = {"normal_details": sorted(set(detail[hard])), "n_leukemic": int(y.sum()),
                               "n_normal": int(hard.sum()), "roc_auc": binary_metrics(y[m], p[m])["roc_auc"]}
    report["per_detail"] = {d: {"n": int(m.sum()), "truth_leukemic": float(y[m].mean()),
                                "called_leukemic": float(called[m].mean()), "mean_p_leukemic": float(p[m].mean())}
                            for d in sorted(set(detail)) for m in [detail == d]}
    report["cv_rates"] = _rates(y, called)
    patients = []
    for g in sorted(set(group)):
        m = group == g
        n, k = int(m.sum()), int(called[m].sum())
        true_pct = 100 * y[m].mean()
        f = fold[m][0]
        rates = _rates(y[fold != f], called[fold != f])  # of the other folds
        summary = blast_percentage(k, n, rates)
        lo, hi = summary["blast_pct_low"], summary["blast_pct_high"]
        adjusted = adjusted_percentage(k, n, rates) or (summary["blast_pct"], lo, hi)
        patients.append({"patient": g, "stratum": rows[int(np.flatnonzero(m)[0])]["stratum"], "fold": int(f),
                         "cells": n, "true_pct": true_pct, "predicted_pct": summary["blast_pct"],
                         "mean_p_pct": 100 * float(p[m].mean()), "difference": summary["blast_pct"] - true_pct,
                         "interval_low": lo, "interval_high": hi, "true_in_interval": bool(lo <= true_pct <= hi),
                         "adjusted_pct": adjusted[0], "adjusted_low": adjusted[1], "adjusted_high": adjusted[2]})
    report["patients"] = patients
    report["patient_errors"] = _errors(patients, "predicted_pct", "interval_low", "interval_high")
    report["patient_errors_adjusted"] = _errors(patients, "adjusted_pct", "adjusted_low", "adjusted_high")
    report["patient_errors_mean_p"] = _errors(patients, "mean_p_pct")
    values = {**{key: report["pooled"][key] for key in ("roc_auc", "sensitivity_at_95_specificity", "ece")},
              "patient_mean_abs_error": report["patient_errors"]["mean_abs_error"],
              "patient_max_abs_error": report["patient_errors"]["max_abs_error"]}
    report["targets"] = {key: {"target": f"{op} {bound:g}", "value": values[key],
                               "met": bool(values[key] >= bound if op == ">=" else values[key] <= bound)}
                         for key, (op, bound) in TARGETS.items()}
    return report


def _rates(y: np.ndarray, called: np.ndarray) -> dict:
    """Sensitivity and false-positive rate of calls (NaN where a class is absent)."""
    return {"sensitivity": float(called[y == 1].mean()) if (y == 1).any() else float("nan"),
            "false_positive_rate": float(called[y == 0].mean()) if (y == 0).any() else float("nan")}


def _errors(patients: list[dict], key: str, low: str = "", high: str = "") -> dict:
    """Mean, median and largest absolute error of one per-patient estimate against the truth (points)."""
    err = np.abs([r[key] - r["true_pct"] for r in patients])
    out = {"mean_abs_error": float(err.mean()), "median_abs_error": float(np.median(err)),
           "max_abs_error": float(err.max()), "over_5_points": int((err > 5).sum()),
           "over_10_points": int((err > 10).sum())}
    if low:
        out["true_in_interval"] = float(np.mean([r[low] <= r["true_pct"] <= r[high] for r in patients]))
    return out


def write_cv_report(out_dir, report: dict) -> list[Path]:
    """Write ``cv.json``, ``patients.csv`` and ``patients.png`` (true vs predicted % per patient) to ``out_dir``."""
    from .io import write_csv

    out = Path(out_dir)
    write_json(out / "cv.json", finite(report))
    columns = list(report["patients"][0]) if report["patients"] else ["patient"]
    write_csv(out / "patients.csv", report["patients"], columns)
    plot_patients(report["patients"], out / "patients.png",
                  title=f"{report.get('k', '')}-fold cross-validation by patient: blast equivalents")
    return [out / "cv.json", out / "patients.csv", out / "patients.png"]


def plot_patients(patients: list[dict], path, title: str = "") -> None:
    """True against predicted blast-equivalent % per patient, with the 95% counting interval of each."""
    from matplotlib.figure import Figure

    from .evaluate import _save

    fig = Figure(figsize=(5.5, 5.5), dpi=120)
    ax = fig.subplots()
    ax.plot([0, 100], [0, 100], color="0.3", lw=1)
    for d, style in ((5, ":"), (10, "--")):
        for sign in (1, -1):
            ax.plot([0, 100], [sign * d, 100 + sign * d], color="0.6", lw=0.8, ls=style)
    strata = sorted({r["stratum"] for r in patients})
    for j, s in enumerate(strata):
        rs = [r for r in patients if r["stratum"] == s]
        x = np.array([r["true_pct"] for r in rs])
        yv = np.array([r["predicted_pct"] for r in rs])
        err = np.array([[r["predicted_pct"] - r["interval_low"] for r in rs],
                        [r["interval_high"] - r["predicted_pct"] for r in rs]])
        ax.errorbar(x, yv, yerr=err, fmt="o", ms=4, lw=0.7, capsize=0, color=f"C{j}", label=s or "patients")
    ax.set(xlim=(-2, 102), ylim=(-2, 102), xlabel="true blast equivalents (%)", ylabel="predicted (%)", title=title)
    ax.legend(loc="upper left", frameon=False, title="dotted / dashed: 5 / 10 points")
    _save(fig, path)
