"""Reviewing a smear's cells: manual calls, review order, re-classifying edited cells, saving and loading a
review (exporting corrected cells as a training set: :mod:`.training_set`). Qt-free: the napari Review panel,
the console and scripts share it.

A saved review is a folder ``<image stem>.review/`` holding ``labels.tif`` (int32 cell labels), ``cells.csv``
(the per-cell table with the ``annotation``, ``annotated_by`` and ``annotated_at`` columns) and ``review.json``
(format tag, image name and sha256 of its pixels, classes, classifier, versions, time).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .io import as_rgb8, atomic_path, write_json
from .pipeline import cell_geometry, classify_cells, probability_column

REVIEW_FORMAT = "napari-leukemia-review"
REVIEW_VERSION = 1
REVIEW_SUFFIX = ".review"
LABELS_FILE, CELLS_FILE, INFO_FILE = "labels.tif", "cells.csv", "review.json"
#: The manual call of an object that is not a leukocyte (or not usable).
EXCLUDE = "exclude"
ANNOTATION_COLUMNS = ("annotation", "annotated_by", "annotated_at")
GEOMETRY_COLUMNS = ("centroid_y", "centroid_x", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "area")
REQUIRED_COLUMNS = ("label", *GEOMETRY_COLUMNS, "predicted_class", "p_leukemic")


class ReviewError(ValueError):
    """A review that cannot be saved, read or used; the message names the file and the problem."""


@dataclass
class Review:
    """The reviewed cells of one smear.

    Attributes
    ----------
    labels : (H, W) ndarray of int32
        Cells 1..N (as corrected by hand).
    cells : pandas.DataFrame
        The per-cell table (:func:`~.pipeline.cell_table`) with the annotation columns.
    info : dict
        ``image`` (name), ``image_sha256`` (:func:`image_sha256`, "" if unknown), ``classes``,
        ``leukemic_classes``, ``classifier``; saving adds format, versions, time and counts.
    """

    labels: np.ndarray
    cells: object
    info: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- annotations


def image_sha256(image) -> str:
    """sha256 of an image's RGB uint8 pixels and shape (as napari-leukemia reads it, whatever the file format)."""
    a = as_rgb8(image)
    h = hashlib.sha256(f"{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def with_annotations(cells):
    """A copy of ``cells`` with the annotation columns (``""`` where missing)."""
    cells = cells.copy()
    for column in ANNOTATION_COLUMNS:
        cells[column] = cells[column].fillna("").astype(str) if column in cells else ""
    return cells


def annotate(cells, label: int, value: str, *, classes, who: str | None = None, when: str | None = None):
    """Set cell ``label``'s manual call; returns a new table.

    Parameters
    ----------
    cells : pandas.DataFrame
    label : int
    value : str
        A class of ``classes``, :data:`EXCLUDE`, or ``""`` to clear the call.
    classes : sequence of str
        The classifier's classes.
    who, when : str, optional
        Annotator (default: the login name) and ISO time (default: now).
    """
    if value not in (*classes, EXCLUDE, ""):
        raise ValueError(f"{value!r} is not a class ({', '.join(classes)}) nor {EXCLUDE!r}")
    cells = with_annotations(cells)
    rows = cells["label"] == int(label)
    if not rows.any():
        raise KeyError(f"cell {label} is not in the cell table; press Update after painting a new cell")
    stamp = (who or getpass.getuser(), when or now()) if value else ("", "")
    cells.loc[rows, list(ANNOTATION_COLUMNS)] = [value, *stamp]
    return cells


def now() -> str:
    """The current time, ISO 8601 with time zone, to the second."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def calls(cells):
    """Each cell's current call: its manual annotation where set, else the predicted class (str)."""
    predicted = cells["predicted_class"].astype(str)
    if "annotation" not in cells:
        return predicted
    manual = cells["annotation"].fillna("").astype(str)
    return manual.where(manual != "", predicted)


def reviewed_summary(cells, leukemic) -> dict:
    """The slide summary with the manual calls in: excluded cells are not leukocytes, a called cell is leukaemic when
    its call is one of the ``leukemic`` classes, an uncalled one when the classifier called it (``leukemic``)."""
    manual = (cells["annotation"].fillna("").astype(str).to_numpy(object) if "annotation" in cells
              else np.full(len(cells), "", object))
    kept = manual != EXCLUDE
    by_hand = (manual != "") & kept
    leuk = np.where(by_hand, np.isin(manual, list(leukemic)), cells["leukemic"].to_numpy(bool))
    n, k = int(kept.sum()), int((leuk & kept).sum())
    from .blast_count import blast_percentage

    return {"leukocytes": n, "leukemic": k, "leukemic_fraction": k / n if n else 0.0, **blast_percentage(k, n),
            "called_by_hand": int(by_hand.sum()), "excluded": int((~kept).sum())}


def review_uncertainty(cells, classes, leukemic) -> np.ndarray:
    """``1 - max`` class probability per cell (for two classes the same order as ``|p_leukemic - 0.5|``)."""
    p = cells[[probability_column(c, leukemic) for c in classes]].to_numpy(float)
    return 1 - p.max(axis=1) if len(p) else np.zeros(0)


def review_order(cells, classes, leukemic, *, call: str | None = None, unreviewed: bool = False) -> np.ndarray:
    """Labels to review, most uncertain first (ties by label).

    Parameters
    ----------
    call : str, optional
        Only cells whose current call (:func:`calls`) is this class (or :data:`EXCLUDE`).
    unreviewed : bool
        Only cells without a manual call.
    """
    keep = np.ones(len(cells), bool)
    if call:
        keep &= (calls(cells) == call).to_numpy()
    if unreviewed and "annotation" in cells:
        keep &= (cells["annotation"].fillna("") == "").to_numpy()
    labels = cells["label"].to_numpy(int)[keep]
    u = review_uncertainty(cells, classes, leukemic)[keep]
    return labels[np.lexsort((labels, -u))]


# ----------------------------------------------------------------------------------- edited cells


def changed_cells(labels: np.ndarray, cells) -> tuple[np.ndarray, np.ndarray]:
    """Cells whose mask no longer matches the table, found by comparing geometry (no stored state).

    A cell is changed when it is new (no row) or its area, bounding box or centroid differs from its row;
    a row is removed when its label is gone from ``labels``.

    Returns
    -------
    changed, removed : ndarray of int
    """
    labels = np.asarray(labels).astype(np.int32, copy=False)
    present = np.unique(labels)
    present = present[present > 0]
    known = cells["label"].to_numpy(int)
    both = np.intersect1d(present, known)
    now_geometry = cell_geometry(labels, both)[list(GEOMETRY_COLUMNS)].to_numpy(float)
    old_geometry = cells.set_index("label").loc[both, list(GEOMETRY_COLUMNS)].to_numpy(float)
    moved = ~np.isclose(now_geometry, old_geometry, rtol=0, atol=1e-6).all(axis=1)
    return np.union1d(np.setdiff1d(present, known), both[moved]), np.setdiff1d(known, present)


def carry_annotations(cells, source):
    """``cells`` with the annotation columns of ``source`` copied for every label both tables hold."""
    cells, source = with_annotations(cells), with_annotations(source)
    src = source.drop_duplicates("label").set_index("label")[list(ANNOTATION_COLUMNS)]
    rows = cells["label"].isin(src.index).to_numpy()
    if rows.any():
        cells.loc[rows, list(ANNOTATION_COLUMNS)] = src.loc[cells.loc[rows, "label"]].to_numpy()
    return cells


@dataclass
class Update:
    """What :func:`update_cells` did: the new table, the labels it re-classified or dropped, and (when asked for)
    the Grad-CAM of the re-classified cells inside their masks (an image, 0 elsewhere)."""

    cells: object
    changed: np.ndarray
    removed: np.ndarray
    gradcam: np.ndarray | None = None


def update_cells(image, labels, cells, classifier, *, batch_size: int = 32, gradcam: bool = False,
                 red_cell_px: float | None = None) -> Update:
    """Re-classify only the cells whose mask changed, drop the rows of deleted cells, keep the others as they are.

    Manual annotations of cells that kept their label are kept. The same path as the analysis
    (:func:`~.pipeline.classify_cells`): the shared crop and the classifier's preprocessing.

    Parameters
    ----------
    image : (H, W[, C]) array
    labels : (H, W) int array
        The edited cells.
    cells : pandas.DataFrame
        The table the cells had before the edits.
    classifier : Classifier
        The classifier that made ``cells`` (same classes).
    gradcam : bool
        Also explain the re-classified cells (:attr:`Update.gradcam`).
    red_cell_px : float, optional
        The red-cell diameter the analysis used (its summary's ``red_cell_diameter``), for fixed-window crops.
    """
    import pandas as pd

    from .pipeline import check_labels

    image = as_rgb8(image)
    labels = check_labels(labels, image.shape[:2])
    classes = list(classifier.info.classes)
    missing = [probability_column(c, classifier.info.leukemic) for c in classes]
    missing = [c for c in missing if c not in cells]
    if missing:
        raise ReviewError(f"the cells were not classified with classes {classes} (no columns {missing}); "
                          f"choose the classifier that made them")
    changed, removed = changed_cells(labels, cells)
    fresh, crops = classify_cells(image, labels, classifier, ids=changed, batch_size=batch_size,
                                  red_cell_px=red_cell_px)
    cams = None
    if gradcam:
        from .explain import gradcam as explain
        from .explain import paint_maps_in_cells

        maps = explain(classifier, crops.images, fresh["predicted_class"].cat.codes.to_numpy()) if len(changed) else []
        cams = paint_maps_in_cells(labels, crops, maps)
    kept = cells[~cells["label"].isin(np.union1d(changed, removed))]
    out = pd.concat([kept, fresh], ignore_index=True).sort_values("label", ignore_index=True)
    out["predicted_class"] = pd.Categorical(out["predicted_class"].astype(str), categories=classes)
    return Update(cells=carry_annotations(out, cells), changed=changed, removed=removed, gradcam=cams)


# ------------------------------------------------------------------------------------------ save / load


def review_path(image: str | Path, folder: str | Path | None = None) -> Path:
    """Default place of an image's review: ``<folder or the image's folder>/<stem>.review``."""
    image = Path(image)
    return Path(folder or image.parent) / f"{image.stem}{REVIEW_SUFFIX}"


def save_review(path, review: Review, *, overwrite: bool = False) -> Path:
    """Write a review folder (each file atomically; ``review.json`` last, so a failed save leaves no valid review).

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False, or it exists and is not a review.
    ReviewError
        Labels or table unfit to be saved.
    """
    import tifffile

    from .device import package_version

    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists; choose another name or allow replacing it")
        if not (path / INFO_FILE).is_file():
            raise FileExistsError(f"{path} exists and is not a napari-leukemia review; it is left as it was")
    labels = np.asarray(review.labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ReviewError(f"{path}: labels must be a 2D integer image, got {labels.dtype} of shape {labels.shape}")
    missing = [c for c in REQUIRED_COLUMNS if c not in review.cells]
    if missing:
        raise ReviewError(f"{path}: the cell table lacks columns {missing}")
    cells = with_annotations(review.cells)
    info = {
        **review.info,
        "format": REVIEW_FORMAT,
        "format_version": REVIEW_VERSION,
        "napari_leukemia": package_version(),
        "image_shape": list(labels.shape),
        "cells": int(len(cells)),
        "annotated": int((cells["annotation"] != "").sum()),
        "saved_at": now(),
        "saved_by": getpass.getuser(),
    }
    created = not path.exists()
    try:
        with contextlib.ExitStack() as stack:
            tmp = {name: stack.enter_context(atomic_path(path / name)) for name in (INFO_FILE, CELLS_FILE, LABELS_FILE)}
            tifffile.imwrite(tmp[LABELS_FILE], labels.astype(np.int32), compression="zlib")
            cells.to_csv(tmp[CELLS_FILE], index=False)
            write_json(tmp[INFO_FILE], info)
    except BaseException:
        if created and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise
    return path


def is_review(path) -> bool:
    """True for a folder that looks like a saved review (named ``*.review`` or holding ``review.json``)."""
    path = Path(path)
    return path.is_dir() and (path.suffix == REVIEW_SUFFIX or (path / INFO_FILE).is_file())


def load_review(path) -> Review:
    """Read a review folder (or its ``review.json``), checking every file.

    Raises
    ------
    ReviewError
        Missing files, damaged JSON, labels of the wrong shape or dtype, a table with missing columns,
        duplicate labels or unknown classes. The message names the file.
    """
    import pandas as pd
    import tifffile

    path = Path(path)
    if path.name == INFO_FILE:
        path = path.parent
    if not path.is_dir():
        raise ReviewError(f"{path}: no such review folder")
    for name in (INFO_FILE, LABELS_FILE, CELLS_FILE):
        if not (path / name).is_file():
            raise ReviewError(f"{path}: not a complete review, {name} is missing")
    info_file, labels_file, cells_file = path / INFO_FILE, path / LABELS_FILE, path / CELLS_FILE
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReviewError(f"{info_file}: not valid JSON ({err})") from err
    if not isinstance(info, dict) or info.get("format") != REVIEW_FORMAT:
        raise ReviewError(f"{info_file}: not a {REVIEW_FORMAT} file (no format tag {REVIEW_FORMAT!r})")
    if info.get("format_version", 0) > REVIEW_VERSION:
        raise ReviewError(f"{info_file}: written by a newer napari-leukemia (format {info['format_version']}); update")
    classes, leukemic = info.get("classes"), info.get("leukemic_classes", [])
    if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes)
            or not set(leukemic) <= set(classes)):
        raise ReviewError(f"{info_file}: 'classes' must list at least two class names holding 'leukemic_classes'")
    try:
        labels = tifffile.imread(labels_file)
    except Exception as err:  # tifffile raises many types for damaged files
        raise ReviewError(f"{labels_file}: cannot be read as a TIFF ({err})") from err
    if labels.size == 0:
        raise ReviewError(f"{labels_file}: cannot be read, it holds no image (damaged or truncated)")
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise ReviewError(f"{labels_file}: expected a 2D image of non-negative integer labels, "
                          f"got {labels.dtype} of shape {labels.shape}")
    if "image_shape" in info and list(labels.shape) != list(info["image_shape"]):
        raise ReviewError(f"{labels_file}: shape {labels.shape} differs from the image's {info['image_shape']} in {INFO_FILE}")
    text = dict.fromkeys(("predicted_class", *ANNOTATION_COLUMNS), str)
    try:
        cells = pd.read_csv(cells_file, dtype=text, keep_default_na=False, na_values=[""])
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ReviewError(f"{cells_file}: not a readable cell table ({err})") from err
    needed = list(dict.fromkeys([*REQUIRED_COLUMNS, *(probability_column(c, leukemic) for c in classes)]))
    missing = [c for c in needed if c not in cells]
    if missing:
        raise ReviewError(f"{cells_file}: missing columns {missing}")
    numbers = [c for c in needed if c != "predicted_class"]
    bad = [c for c in numbers if not pd.api.types.is_numeric_dtype(cells[c]) or cells[c].isna().any()]
    if bad:
        raise ReviewError(f"{cells_file}: columns {bad} must hold a number in every row")
    if cells["label"].duplicated().any() or (cells["label"] <= 0).any():
        raise ReviewError(f"{cells_file}: labels must be unique positive integers")
    cells = with_annotations(cells)
    unknown = sorted(set(cells["predicted_class"]) - set(classes)) + sorted(
        set(cells["annotation"]) - {*classes, EXCLUDE, ""})
    if unknown:
        raise ReviewError(f"{cells_file}: calls {unknown} are not classes of this review ({classes}) nor {EXCLUDE!r}")
    cells["predicted_class"] = pd.Categorical(cells["predicted_class"], categories=classes)
    return Review(labels=labels.astype(np.int32, copy=False), cells=cells, info=info)


def source_problem(info: dict, image) -> str:
    """Why ``image`` is not the image a review was made on ("" when it is, or when the review has no hash)."""
    expected = info.get("image_sha256", "")
    if image is None:
        return f"the image {info.get('image', '')!r} of this review is not open"
    shape = np.shape(image)[:2]
    if "image_shape" in info and list(shape) != list(info["image_shape"]):
        return f"the image is {shape[1]}x{shape[0]} px, the review was made on {info['image_shape'][1]}x{info['image_shape'][0]}"
    if expected and image_sha256(image) != expected:
        return f"the image differs from the one reviewed (sha256 {expected[:12]}...): its pixels have changed"
    return ""
