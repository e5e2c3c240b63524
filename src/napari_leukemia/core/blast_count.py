"""The slide's blast-equivalent percentage as a measurement: the count, the percentage and its 95% interval.

Research use only: not a diagnostic device.

A hematologist reads a blast percentage off a 100-200 cell differential, and a count of ``n`` cells carries a
counting error (for a true 20% on 100 cells, about 13-29%). The estimate is the fraction of cells called blast
equivalent, and its interval the Wilson score interval of that fraction. When the classifier carries
cross-validated error rates (``cv_rates`` in its provenance: sensitivity and false-positive rate over patients it
never saw), the interval is widened to hold the same interval corrected for them too (adjusted classify-and-count,
Forman 2008: ``(q - FPR) / (TPR - FPR)``); otherwise it holds the counting error alone and says so. The estimate
itself stays the count: over 94 patients in cross-validation it was nearer the truth than the corrected one for
nearly every model (``docs/benchmark.md``), because a classifier's errors differ from patient to patient (a
patient with only lymphocytes and neutrophils has almost no false positives) while the correction removes one
average rate from everyone.
"""

from __future__ import annotations

import numpy as np

#: The WHO blast threshold for acute leukaemia, and the level it must be told apart from.
WHO_THRESHOLD_PCT = 20.0
TELL_APART_PCT = 10.0
Z95 = 1.959964


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``k / n`` (NaN for ``n == 0``)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return min(p, max(0.0, float(centre - half))), max(p, min(1.0, float(centre + half)))  # p inside, rounding too


def blast_percentage(called: int, counted: int, rates: dict | None = None) -> dict:
    """Blast equivalents among the leukocytes counted, with its 95% interval.

    Parameters
    ----------
    called : int
        Cells called blast equivalent (leukaemic).
    counted : int
        Leukocytes counted.
    rates : dict, optional
        ``{"sensitivity": TPR, "false_positive_rate": FPR}`` from cross-validation by patient; they widen the
        interval when ``TPR - FPR >= 0.5`` (:func:`adjusted_percentage`).

    Returns
    -------
    dict
        ``blast_pct`` (None without cells), ``blast_pct_low``, ``blast_pct_high``, ``interval`` (what the interval
        holds: ``"counting"`` or ``"counting+classifier"``) and ``too_few_cells`` (the interval holds both 10% and
        20%: too few cells were counted to tell them apart).
    """
    if counted <= 0:
        return {"blast_pct": None, "blast_pct_low": None, "blast_pct_high": None, "interval": "counting",
                "too_few_cells": True}
    lo, hi = wilson_interval(called, counted)
    low, high = 100 * lo, 100 * hi
    adjusted = adjusted_percentage(called, counted, rates)
    if adjusted is not None:
        low, high = min(low, adjusted[1]), max(high, adjusted[2])
    return {"blast_pct": 100 * called / counted, "blast_pct_low": low, "blast_pct_high": high,
            "interval": "counting" if adjusted is None else "counting+classifier",
            "too_few_cells": bool(low <= TELL_APART_PCT and high >= WHO_THRESHOLD_PCT)}


def adjusted_percentage(called: int, counted: int, rates: dict | None) -> tuple[float, float, float] | None:
    """The blast-equivalent percentage and its counting interval corrected for a classifier's error rates.

    Adjusted classify-and-count (Forman 2008): ``(q - FPR) / (TPR - FPR)``, clipped to 0-100%, for the estimate
    and both bounds of the Wilson interval. None without cells, without rates, or when ``TPR - FPR < 0.5`` (too
    weak a classifier to invert).
    """
    tpr, fpr = (rates or {}).get("sensitivity"), (rates or {}).get("false_positive_rate")
    if counted <= 0 or tpr is None or fpr is None or not (np.isfinite(tpr) and np.isfinite(fpr)) or tpr - fpr < 0.5:
        return None
    lo, hi = wilson_interval(called, counted)
    q, lo, hi = (100 * float(np.clip((x - fpr) / (tpr - fpr), 0, 1)) for x in (called / counted, lo, hi))
    return q, lo, hi


def describe(count: dict) -> str:
    """One line for people: ``"12.0% (95% interval 6.1-21.9%); too few cells to tell 20% from 10%"``."""
    if count["blast_pct"] is None:
        return "no leukocytes counted"
    text = (f"{count['blast_pct']:.1f}% (95% interval {count['blast_pct_low']:.1f}-{count['blast_pct_high']:.1f}%"
            f"{'' if count['interval'] != 'counting' else ', counting error only'})")
    if count["too_few_cells"]:
        text += f"; too few cells to tell {WHO_THRESHOLD_PCT:.0f}% from {TELL_APART_PCT:.0f}%"
    return text


def classifier_rates(info) -> dict | None:
    """A classifier's cross-validated error rates (``cv_rates`` in its :class:`~.model.ClassifierInfo`'s
    provenance), which widen every interval it counts; None when it carries none."""
    return (info.provenance or {}).get("cv_rates")


def call_counts(cells, classifier) -> dict:
    """What every summary counts from a cell table's calls (a smear's or a whole slide's).

    ``leukocytes``, ``leukemic`` and ``leukemic_fraction``; the blast-equivalent percentage with its interval
    (:func:`blast_percentage`, widened by the classifier's ``cv_rates`` when it carries them); ``classes``,
    ``leukemic_classes`` and the cells ``per_class``.
    """
    info = classifier.info
    n, k = len(cells), int(cells["leukemic"].astype(bool).sum())
    return {
        "leukocytes": n,
        "leukemic": k,
        "leukemic_fraction": k / n if n else 0.0,
        **blast_percentage(k, n, classifier_rates(info)),
        "classes": list(info.classes),
        "leukemic_classes": list(info.leukemic),
        "per_class": {c: int((cells["predicted_class"] == c).sum()) for c in info.classes},
    }
