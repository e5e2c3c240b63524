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
CENTRE_OUTCOMES = ("one", "missed", "split", "merged", "no stain")


def centre_cell_outcome(labels: np.ndarray, nucleus: np.ndarray, diameter: float) -> str:
    """Judge a segmentation of a single-cell field (a leukocyte at the centre) against its nuclear stain.

    The centre nucleus is the piece of nuclear stain (at least a tenth of the largest piece) nearest the
    field centre. The cell the pipeline takes (:func:`~.preprocess.centre_cell`) must cover at least half
    of it (else ``"missed"``) and no other cell more than 15% of it (else ``"split"``). Pieces of stain
    within 12% of a cell diameter of each other form one nucleus (the lobes of a neutrophil; also nuclei
    that touch); the cell may not cover more than 30% of another nucleus of at least a fifth of its
    size (else ``"merged"``). ``"no stain"``: the field has no nuclear stain to judge by.

    Parameters
    ----------
    labels : (H, W) ndarray of int
    nucleus : (H, W) ndarray of bool
        Nuclear stain (:func:`~.stain.nucleus_mask`).
    diameter : float
        Leukocyte diameter in pixels.
    """
    from scipy import ndimage as ndi

    from .preprocess import centre_cell

    pieces, n = ndi.label(nucleus)
    if n == 0:
        return "no stain"
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    rows, cols = np.nonzero(np.isin(pieces, np.nonzero(sizes >= 0.1 * sizes.max())[0]))
    h, w = labels.shape
    k = np.argmin((rows - h / 2) ** 2 + (cols - w / 2) ** 2)
    central = pieces == pieces[rows[k], cols[k]]
    cell = centre_cell(labels)
    inside = labels[central]
    if cell == 0 or np.mean(inside == cell) < 0.5:
        return "missed"
    if np.mean((inside != cell) & (inside != 0)) > 0.15:
        return "split"
    r = max(1, int(0.12 * diameter))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    groups, _ = ndi.label(ndi.binary_dilation(nucleus, x * x + y * y <= r * r))
    groups[~nucleus] = 0
    own = groups[central][0]
    sizes = np.bincount(groups.ravel())
    covered = np.bincount(groups[labels == cell], minlength=len(sizes))
    for g in np.nonzero(covered)[0]:
        if g not in (0, own) and sizes[g] >= 0.2 * sizes[own] and covered[g] > 0.3 * sizes[g]:
            return "merged"
    return "one"
