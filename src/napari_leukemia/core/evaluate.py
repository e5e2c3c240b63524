"""Classification metrics, calibration and plots."""

from __future__ import annotations

import numpy as np


def binary_metrics(y_true, p, threshold: float = 0.5) -> dict:
    """Accuracy, balanced accuracy, precision, recall (sensitivity), specificity, F1, ROC-AUC,
    sensitivity at 95% specificity and the confusion matrix ``[[TN, FP], [FN, TP]]``.

    Parameters
    ----------
    y_true : (N,) array of {0, 1}
        1 = leukaemic.
    p : (N,) array of float
        ``p_leukemic``.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y_true).astype(int)
    p = np.asarray(p, float)
    pred = p >= threshold
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    prec = tp / (tp + fp) if tp + fp else float("nan")
    both = len(np.unique(y)) == 2
    out = {
        "n": int(len(y)),
        "accuracy": (tp + tn) / len(y) if len(y) else float("nan"),
        "balanced_accuracy": (sens + spec) / 2,
        "precision": prec,
        "recall": sens,
        "specificity": spec,
        "f1": 2 * prec * sens / (prec + sens) if prec + sens else 0.0,
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "sensitivity_at_95_specificity": float("nan"),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "threshold": threshold,
    }
    if both:
        fpr, tpr, _ = roc_curve(y, p)
        ok = fpr <= 0.05
        out["sensitivity_at_95_specificity"] = float(tpr[ok].max()) if ok.any() else 0.0
    return out


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood of ``softmax(logits / T)`` (fit on validation data)."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, float)
    targets = np.asarray(targets, int)

    def nll(log_t):
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -logp[np.arange(len(targets)), targets].mean()

    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


def expected_calibration_error(y_true, p, bins: int = 15) -> float:
    """ECE of binary probabilities ``p`` (of class 1) in equal-width bins of confidence."""
    y = np.asarray(y_true, int)
    p = np.asarray(p, float)
    conf = np.where(p >= 0.5, p, 1 - p)
    correct = (p >= 0.5) == (y == 1)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def multiclass_report(y_true, y_pred, classes) -> dict:
    """Per-class precision, recall, F1 and support, macro-F1, accuracy and the confusion matrix.

    Parameters
    ----------
    y_true, y_pred : (N,) array of int
        Class indices into ``classes``.
    classes : sequence of str

    Returns
    -------
    dict
        ``per_class`` (``{class: {precision, recall, f1, support}}``), ``macro_f1``, ``accuracy`` and
        ``confusion_matrix`` (rows: truth, columns: prediction, in the order of ``classes``).
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y, pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    labels = list(range(len(classes)))
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=np.nan)
    present = support > 0
    return {
        "per_class": {c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "macro_f1": float(np.nanmean(np.nan_to_num(f1[present], nan=0.0))) if present.any() else float("nan"),
        "accuracy": float((y == pred).mean()) if len(y) else float("nan"),
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
    }


def _save(fig, path) -> None:
    """Write a matplotlib figure as PNG, atomically (no pyplot: safe in threads and beside a Qt backend)."""
    from .io import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_roc(y_true, p, path, title: str = "ROC") -> None:
    """Save a ROC curve with its AUC."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y_true, p)
    fig = Figure(figsize=(4, 4), dpi=120)
    ax = fig.subplots()
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y_true, p):.4f}")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.axvline(0.05, ls="--", color="tab:red", lw=0.8, label="95% specificity")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_confusion(matrix, classes, path, title: str = "Confusion matrix") -> None:
    """Save a confusion matrix (rows: truth, columns: prediction)."""
    from matplotlib.figure import Figure

    m = np.asarray(matrix)
    fig = Figure(figsize=(1.2 + 0.9 * len(classes), 1 + 0.8 * len(classes)), dpi=120)
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    _save(fig, path)


def draw_curves(axes, history: list[dict]) -> None:
    """Draw loss and accuracy, train vs validation, per epoch, on two matplotlib axes (whole epochs on the x axis,
    which spans at least epochs 0 to 2, so that one epoch is a point, not a zoom around it)."""
    from matplotlib.ticker import MaxNLocator

    ep = [h["epoch"] for h in history]
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.clear()
        ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        ax.plot(ep, [h[f"val_{key}"] for h in history], "o-", ms=3, label="validation")
        ax.set(xlabel="epoch", ylabel=key, xlim=(0, max(ep + [2]) + 0.5))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if history:
            ax.legend()


def plot_curves(history: list[dict], path) -> None:
    """Save training curves: loss and accuracy, train vs validation, per epoch."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2), dpi=120)
    draw_curves(fig.subplots(1, 2), history)
    _save(fig, path)
