"""Leukocyte boxes (Pascal VOC) and detection scores of a label image against them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np

from .config import BOX_LABEL, MATCH_IOU


def _voc_objects(path) -> list:
    """The ``<object>`` elements of a Pascal VOC file; ``ValueError`` naming the file when it is not readable XML."""
    try:
        return list(ET.parse(path).getroot().iter("object"))
    except (ET.ParseError, OSError) as err:
        raise ValueError(f"{path}: not a readable Pascal VOC file ({err})") from err


def _object_name(obj) -> str:
    return (obj.findtext("name") or "").strip()


def read_voc_boxes(path, name: str = BOX_LABEL) -> np.ndarray:
    """Boxes of class ``name`` (matched case-insensitively) in a Pascal VOC XML file.

    Returns
    -------
    (N, 4) ndarray of float
        ``ymin, xmin, ymax, xmax`` in pixels (napari's row/column order).

    Raises
    ------
    ValueError
        Naming the file, when it is not readable XML or an object of class ``name`` lacks ``<bndbox>`` or one
        of its coordinates, or has one that is not a finite number, or a maximum under its minimum.
    """
    boxes = []
    for i, obj in enumerate(_voc_objects(path), start=1):
        if _object_name(obj).lower() != name.strip().lower():
            continue
        where = f"{path}: object {i} ({_object_name(obj)})"
        b = obj.find("bndbox")
        if b is None:
            raise ValueError(f"{where} has no <bndbox>")
        coords = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            text = b.findtext(key)
            if text is None:
                raise ValueError(f"{where} has no <{key}> in its <bndbox>")
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not np.isfinite(value):
                raise ValueError(f"{where}: <{key}> is not a number: {text.strip()!r}")
            coords.append(value)
        x0, y0, x1, y1 = coords
        if x1 < x0 or y1 < y0:
            raise ValueError(f"{where}: the box's maximum lies before its minimum ({x0:g}, {y0:g}, {x1:g}, {y1:g})")
        boxes.append((y0, x0, y1, x1))
    return np.asarray(boxes, float).reshape(-1, 4)


def check_voc_label(image_paths, voc_dir, name: str) -> None:
    """Refuse a box class that no VOC file of ``image_paths`` holds (in any letter case).

    Nothing is refused when none of the files can be read: each is then reported on its own when scored.

    Raises
    ------
    ValueError
        Naming the class, the folder and the classes the files do hold.
    """
    counts, readable = Counter(), False
    for path in image_paths:
        try:
            counts.update(_object_name(obj) for obj in _voc_objects(voc_path_for(path, voc_dir)))
            readable = True
        except ValueError:
            continue
    if readable and not any(k.lower() == name.strip().lower() for k in counts):
        held = ", ".join(f"{k or '(unnamed)'} ({n})" for k, n in sorted(counts.items())) or "none (no objects)"
        raise ValueError(f"no box labelled {name!r} in the VOC files of {voc_dir}; the labels they hold: {held}")


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


def match_boxes(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = MATCH_IOU) -> dict:
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


def score_segmentation(image_paths, voc_dir, segment, *, iou_threshold: float = MATCH_IOU, name: str = BOX_LABEL,
                       progress=None) -> dict:
    """Detection scores of a segmenter over annotated images.

    Parameters
    ----------
    image_paths : sequence of path
        Images; each needs ``<stem>.xml`` (Pascal VOC) in ``voc_dir``.
    segment : callable
        ``segment(image) -> labels`` (e.g. a partial of :func:`~.segment.segment_leukocytes`).
    iou_threshold : float
        In (0, 1]: the IoU at which a cell matches a box.
    name : str
        Class of the boxes (letter case aside).
    progress : callable, optional
        Called with each image path after it is scored (or found unreadable).

    Returns
    -------
    dict
        :func:`detection_summary` plus ``seconds_per_megapixel``, ``per_image`` rows and ``errors``
        (images or VOC files that could not be read or segmented, by name, with the reason).

    Raises
    ------
    ValueError
        When ``iou_threshold`` is outside (0, 1], or no readable VOC file holds a box of class ``name``
        (:func:`check_voc_label`); before anything is segmented.
    """
    import time

    from .io import ImageError, read_image

    if not 0 < iou_threshold <= 1:
        raise ValueError(f"the IoU threshold must lie in (0, 1], got {iou_threshold}")
    check_voc_label(image_paths, voc_dir, name)
    matches, rows, errors, seconds, pixels = [], [], [], 0.0, 0
    for path in image_paths:
        try:
            truth = read_voc_boxes(voc_path_for(path, voc_dir), name)
            image = read_image(path)
            t0 = time.perf_counter()
            labels = segment(image)
            seconds += time.perf_counter() - t0
        except (ImageError, ValueError, OSError) as err:
            errors.append(str(err) if str(path) in str(err) else f"{path}: {err}")
            if progress:
                progress(path)
            continue
        pixels += image.shape[0] * image.shape[1]
        m = match_boxes(label_boxes(labels), truth, iou_threshold)
        matches.append(m)
        rows.append({"image": str(path), "cells": len(np.unique(labels[labels > 0])), "boxes": len(truth),
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
