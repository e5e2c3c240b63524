"""Leukocyte boxes (Pascal VOC) and detection scores of a label image against them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np


def read_voc_boxes(path, name: str = "WBC") -> np.ndarray:
    """Boxes of class ``name`` in a Pascal VOC XML file.

    Returns
    -------
    (N, 4) ndarray of float
        ``ymin, xmin, ymax, xmax`` in pixels (napari's row/column order).
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise ValueError(f"{path}: not a readable Pascal VOC file ({err})") from err
    boxes = []
    for obj in root.iter("object"):
        if (obj.findtext("name") or "").strip() != name:
            continue
        b = obj.find("bndbox")
        x0, y0, x1, y1 = (float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((y0, x0, y1, x1))
    return np.asarray(boxes, float).reshape(-1, 4)


def label_boxes(labels: np.ndarray) -> np.ndarray:
    """Bounding boxes ``(ymin, xmin, ymax, xmax)`` of labels 1..N, exclusive ends, in label order."""
    from skimage.measure import regionprops

    return np.asarray([r.bbox for r in regionprops(labels)], float).reshape(-1, 4)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of two box arrays ``(N, 4)`` and ``(M, 4)``; returns ``(N, M)``."""
    a, b = np.asarray(a, float)[:, None], np.asarray(b, float)[None]
    h = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    w = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = h * w
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def match_boxes(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """One-to-one matching of predicted to true boxes (Hungarian on IoU).

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn`` counts and ``ious`` of the matched pairs.
    """
    from scipy.optimize import linear_sum_assignment

    if len(pred) == 0 or len(truth) == 0:
        return {"tp": 0, "fp": len(pred), "fn": len(truth), "ious": []}
    iou = box_iou(pred, truth)
    rows, cols = linear_sum_assignment(-iou)
    ious = [float(iou[r, c]) for r, c in zip(rows, cols) if iou[r, c] >= iou_threshold]
    tp = len(ious)
    return {"tp": tp, "fp": len(pred) - tp, "fn": len(truth) - tp, "ious": ious}


def detection_summary(matches: list[dict]) -> dict:
    """Precision, recall, F1 and mean matched IoU over many :func:`match_boxes` results."""
    tp = sum(m["tp"] for m in matches)
    fp = sum(m["fp"] for m in matches)
    fn = sum(m["fn"] for m in matches)
    ious = [i for m in matches for i in m["ious"]]
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {
        "images": len(matches),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r) if p + r else 0.0,
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
    }


def voc_path_for(image_path, voc_dir) -> Path:
    """The VOC annotation file of an image: same stem, ``.xml``, in ``voc_dir``."""
    return Path(voc_dir) / (Path(image_path).stem + ".xml")


def score_segmentation(image_paths, voc_dir, segment, *, iou_threshold: float = 0.5, name: str = "WBC",
                       progress=None) -> dict:
    """Detection scores of a segmenter over annotated images.

    Parameters
    ----------
    image_paths : sequence of path
        Images; each needs ``<stem>.xml`` (Pascal VOC) in ``voc_dir``.
    segment : callable
        ``segment(image) -> labels`` (e.g. a partial of :func:`~.segment.segment_leukocytes`).
    progress : callable, optional
        Called with each image path after it is scored.

    Returns
    -------
    dict
        :func:`detection_summary` plus ``seconds_per_megapixel``, ``per_image`` rows and ``errors``
        (images that could not be read, by name, with the reason).
    """
    import time

    from .io import ImageError, read_image

    matches, rows, errors, seconds, pixels = [], [], [], 0.0, 0
    for path in image_paths:
        try:
            image = read_image(path)
            truth = read_voc_boxes(voc_path_for(path, voc_dir), name)
        except (ImageError, ValueError, OSError) as err:
            errors.append(str(err))
            continue
        t0 = time.perf_counter()
        labels = segment(image)
        seconds += time.perf_counter() - t0
        pixels += image.shape[0] * image.shape[1]
        m = match_boxes(label_boxes(labels), truth, iou_threshold)
        matches.append(m)
        rows.append({"image": str(path), "cells": int(labels.max()), "boxes": len(truth),
                     "tp": m["tp"], "fp": m["fp"], "fn": m["fn"]})
        if progress:
            progress(path)
    summary = detection_summary(matches)
    summary.update(iou_threshold=iou_threshold, seconds_per_megapixel=seconds / max(pixels / 1e6, 1e-9),
                   per_image=rows, errors=errors)
    return summary


#: Outcomes of :func:`centre_cell_outcome`.
CENTRE_OUTCOMES = ("one", "missed", "split", "merged")


def centre_cell(labels: np.ndarray, reach: float = 0.1) -> tuple[int, int]:
    """The cell a single-cell field is about: label and area of the cell at (or nearest) the centre.

    ``(0, 0)`` when no cell comes within ``reach`` x the shorter side of the field's centre.
    """
    from .preprocess import centre_cell as nearest

    cell = nearest(labels)
    if cell == 0:
        return 0, 0
    rows, cols = np.nonzero(labels == cell)
    h, w = labels.shape
    if np.min((rows - h / 2) ** 2 + (cols - w / 2) ** 2) > (reach * min(h, w)) ** 2:
        return 0, 0
    return cell, len(rows)


def centre_cell_outcome(area: int, typical_area: float) -> str:
    """Judge the centre cell of a single-cell field by its area against the typical area of its class.

    ``"missed"``: no cell at the centre (area 0); ``"split"``: under half the typical area (a cell cut
    in parts, or cytoplasm lost); ``"merged"``: over twice the typical area (neighbours joined to it);
    else ``"one"``. The typical area is the median over fields of the same cell class.
    """
    if area == 0:
        return "missed"
    if area < 0.5 * typical_area:
        return "split"
    if area > 2.0 * typical_area:
        return "merged"
    return "one"
