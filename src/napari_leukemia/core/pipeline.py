"""analyze_smear: segment, crop, classify and explain every leukocyte of a smear."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .blast_count import call_counts
from .config import DISCLAIMER, LEUKEMIC_THRESHOLD, AnalysisConfig
from .events import Event
from .io import ImageError, as_rgb8


@dataclass
class SmearResult:
    """Everything an analysis produces.

    Attributes
    ----------
    labels : (H, W) ndarray of int32
        Leukocytes 1..N.
    cells : pandas.DataFrame
        One row per cell (see :data:`CELL_COLUMNS`; plus ``p_<class>`` for each class).
    probability : (H, W) ndarray of float32
        Each cell's ``p_leukemic`` painted over its mask, 0 elsewhere.
    gradcam : (H, W) ndarray of float32 or None
        Grad-CAM of each cell's predicted class, inside the cell's mask (0 elsewhere).
    summary : dict
        Counts, leukaemic fraction, model names and versions, timings, messages.
    """

    labels: np.ndarray
    cells: object
    probability: np.ndarray
    gradcam: np.ndarray | None
    summary: dict = field(default_factory=dict)


CELL_COLUMNS = [
    "label", "centroid_y", "centroid_x", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "area",
    "predicted_class", "p_leukemic", "uncertainty", "leukemic",
]


def iter_analyze_smear(image, *, segmenter=None, classifier=None, config: AnalysisConfig = AnalysisConfig(),
                       labels=None, name: str = "image") -> Generator[Event, None, SmearResult]:
    """Analyse a smear step by step: yields :class:`~.events.Event` (3 steps, 4 with Grad-CAM; one per tile and
    per batch within them), returns a :class:`SmearResult`.

    Parameters
    ----------
    image : (H, W[, C]) array
        The smear (RGB or RGBA, 8- to 16-bit; grayscale is refused: the stain colour is needed).
    segmenter, classifier : path or loaded model, optional
        The shipped models when omitted.
    config : AnalysisConfig
        Device, Grad-CAM, batch size and segmentation settings; ``single_cell=True`` for an image of one cell at
        its centre (:func:`~.single_cell.analyze_single_cells`).
    labels : (H, W) int array, optional
        Use these cells (e.g. edited in napari) instead of segmenting.
    name : str
        Shown in messages and the summary.
    """
    from .segment import segment_leukocytes
    from .tiling import iter_segment_tiled

    t_start = time.perf_counter()
    image = as_rgb8(image, name)
    timings = {}
    total = 4 if config.gradcam else 3
    yield Event("load", 0, total, "loading models")
    clf, seg_model, device = load_models(segmenter, classifier, config, labels is None)
    if config.single_cell and labels is None:
        from .single_cell import analyze_single_cells

        yield Event("single_cell", 1, total, "finding the cell at the centre")
        result = analyze_single_cells([image], [name], classifier=clf, segmenter=seg_model, config=config)[0]
        if isinstance(result, Exception):
            raise result
        yield Event("finished", total, total, result.summary["message"] or f"one cell, {result.summary['leukemic']} leukaemic")
        return result
    if labels is None:
        yield Event("segment", 1, total, "segmenting leukocytes")
        t = time.perf_counter()
        if max(image.shape[:2]) > config.segment.tile_size:  # tile by tile: progress, and a stop between tiles
            tiles = iter_segment_tiled(image, config.segment, model=seg_model, device=str(device))
            while True:
                try:
                    event = next(tiles)
                except StopIteration as done:
                    labels = done.value
                    break
                yield Event("segment", 1, total, f"segmenting leukocytes: {event.message}",
                            {"tile": event.done, "tiles": event.total} if event.stage == "segment" else {})
        else:
            labels = segment_leukocytes(image, config.segment, model=seg_model, device=str(device))
        timings["segment_s"] = time.perf_counter() - t
        segmenter_name = segmenter_label(seg_model)
    else:
        labels = check_labels(labels, image.shape[:2], name)
        segmenter_name = "user labels"
    yield Event("classify", 2, total, "classifying cells")
    t = time.perf_counter()
    try:
        steps = iter_classify_cells(image, labels, clf, batch_size=config.batch_size,
                                    red_cell_px=config.red_cell_diameter)
        while True:  # batch by batch: progress, and a stop between batches
            try:
                done, n = next(steps)
            except StopIteration as finished:
                cells, crops = finished.value
                break
            yield Event("classify", 2, total, f"classifying cells: {done} of {n}", {"cells_done": done, "cells": n})
    except ValueError as err:  # no red cells to scale a fixed window by
        raise ImageError(f"{name}: {err}") from err
    timings["classify_s"] = time.perf_counter() - t
    cams = None
    if config.gradcam:
        yield Event("gradcam", 3, total, "Grad-CAM")
        t = time.perf_counter()
        targets = cells["predicted_class"].cat.codes.to_numpy()
        cams = np.zeros((0,) + crops.images.shape[1:3], np.float32) if not len(crops.labels) else None
        for start in range(0, len(crops.labels), config.batch_size):
            part = explain_crops(clf, crops.images[start : start + config.batch_size],
                                 targets[start : start + config.batch_size])
            cams = part if cams is None else np.concatenate([cams, part])
            yield Event("gradcam", 3, total, f"Grad-CAM: {len(cams)} of {len(crops.labels)}",
                        {"cells_done": len(cams), "cells": len(crops.labels)})
        timings["gradcam_s"] = time.perf_counter() - t
    result = build_result(image, labels, cells, crops, cams, clf, name=name, segmenter=segmenter_name,
                          device=device, timings=timings, t_start=t_start)
    n, k = result.summary["leukocytes"], result.summary["leukemic"]
    yield Event("finished", total, total, result.summary["message"] or f"{n} leukocytes, {k} leukaemic")
    return result


def load_models(segmenter, classifier, config: AnalysisConfig, segmenting: bool = True):
    """The loaded classifier, cellpose segmenter (``None`` for the stain method, or when not ``segmenting``) and
    torch device of an analysis (:func:`iter_analyze_smear`'s arguments)."""
    from .device import resolve_device
    from .segment import load_segmenter

    device = resolve_device(config.device)
    clf = get_classifier(classifier, device)
    seg_model = None
    if segmenting and config.segment.method == "cellpose":
        seg_model = segmenter if hasattr(segmenter, "eval") else load_segmenter(segmenter, str(device))
    return clf, seg_model, device


def segmenter_label(seg_model) -> str:
    """The segmenter's name in a summary: ``file@sha`` of a cellpose model, or ``stain-based``."""
    return model_name(getattr(seg_model, "path", None)) if seg_model is not None else "stain-based"


def explain_crops(clf, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Grad-CAM of each crop ``(N, S, S, 3)`` for its target class (e.g. the predicted one): ``(N, S, S)`` float32."""
    from .explain import gradcam

    if not len(images):
        return np.zeros((0,) + images.shape[1:3], np.float32)
    return gradcam(clf, images, targets)


def build_result(image, labels, cells, crops, cams, clf, *, name: str, segmenter: str, device, timings: dict,
                 t_start: float = 0.0, extra: dict | None = None) -> SmearResult:
    """A :class:`SmearResult` of classified cells: the probability and Grad-CAM images, and the summary.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
    labels : (H, W) ndarray of int32
    cells : pandas.DataFrame
        :func:`cell_table` of the cells.
    crops : CellCrops
    cams : (N, S, S) ndarray of float32 or None
        Each crop's Grad-CAM (:func:`explain_crops`); ``None`` without Grad-CAM.
    clf : Classifier
    name, segmenter : str
        The image's and the segmenter's names, for the summary.
    timings : dict
        Seconds per step; ``total_s``, unless given, is taken from ``t_start`` (a ``time.perf_counter()`` value).
    extra : dict, optional
        Added to the summary.
    """
    from .explain import paint_maps_in_cells

    cam_image = None if cams is None else paint_maps_in_cells(labels, crops, cams)
    prob_image = paint_values(labels, cells["label"].to_numpy(), cells["p_leukemic"].to_numpy())
    timings = {"total_s": time.perf_counter() - t_start, **timings}
    summary = {
        "image": name,
        "shape": list(image.shape[:2]),
        **call_counts(cells, clf),
        "segmenter": segmenter,
        "red_cell_diameter": crops.red_cell_px,
        "classifier": model_name(clf.path),
        "device": str(device),
        "timings": {key: round(v, 3) for key, v in timings.items()},
        "message": "" if len(cells) else f"no leukocytes found in {name}",
        "note": DISCLAIMER,
        **(extra or {}),
    }
    return SmearResult(labels=labels, cells=cells, probability=prob_image, gradcam=cam_image, summary=summary)


def analyze_smear(image, **kwargs) -> SmearResult:
    """Analyse a smear in one call; the arguments of :func:`iter_analyze_smear`.

    Examples
    --------
    >>> from napari_leukemia import analyze_smear, load_sample  # doctest: +SKIP
    >>> result = analyze_smear(load_sample("bccd"))  # doctest: +SKIP
    >>> result.summary["leukocytes"], result.cells.head()  # doctest: +SKIP
    """
    from . import drain

    return drain(iter_analyze_smear(image, **kwargs))


def check_labels(labels, shape, name: str = "image") -> np.ndarray:
    """Validate a user label image against the smear (same shape, integer, non-negative); returns an int32 copy."""
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise ImageError(f"{name}: labels of shape {labels.shape} do not match the image's {tuple(shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ImageError(f"{name}: labels must be integers, got {labels.dtype}")
    from .preprocess import label_ids

    try:
        label_ids(labels, f"{name}: labels")  # negative ids, or ids beyond int32: refused, never wrapped
    except ValueError as err:
        raise ImageError(str(err)) from err
    return labels.astype(np.int32)  # a copy: the result owns its labels (never a view of the user's layer)


def get_classifier(classifier=None, device="auto"):
    """A loaded :class:`~.model.Classifier`: ``classifier`` itself, or the checkpoint at that path or of that
    shipped name (:data:`~.model.SHIPPED_CLASSIFIERS`; the default one when ``None``), loaded once per path and
    device."""
    from .device import resolve_device
    from .model import Classifier

    if isinstance(classifier, Classifier):
        return classifier
    return _cached_classifier(str(classifier or ""), str(resolve_device(str(device))))


def classify_cells(image: np.ndarray, labels: np.ndarray, classifier, *, ids=None, batch_size: int = 32,
                   red_cell_px: float | None = None):
    """Crop (:func:`~.preprocess.crop_cells`) and classify cells: the one classification path of every caller.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
    labels : (H, W) ndarray of int
    classifier : Classifier
    ids : sequence of int, optional
        Classify only these labels (default: every label present).
    red_cell_px : float, optional
        The image's red-cell diameter in pixels, for fixed-window crops (measured when omitted).

    Returns
    -------
    cells : pandas.DataFrame
        :func:`cell_table` of the classified cells, in the order of ``ids``.
    crops : CellCrops
    """
    steps = iter_classify_cells(image, labels, classifier, ids=ids, batch_size=batch_size, red_cell_px=red_cell_px)
    while True:
        try:
            next(steps)
        except StopIteration as finished:
            return finished.value


def iter_classify_cells(image: np.ndarray, labels: np.ndarray, classifier, *, ids=None, batch_size: int = 32,
                        red_cell_px: float | None = None) -> Generator[tuple[int, int], None, tuple]:
    """:func:`classify_cells` batch by batch: yields ``(cells done, cells)`` after each batch, returns its result."""
    from .predict import feature_opinion, p_leukemic, predict_logits, probabilities
    from .preprocess import crop_cells

    crops = crop_cells(image, labels, classifier.info.crop, ids=ids, red_cell_px=red_cell_px)
    n = len(crops.labels)
    logits, p_features = np.zeros((0, len(classifier.info.classes)), np.float32), np.zeros(0)
    for start in range(0, n, batch_size):
        batch = crops.images[start : start + batch_size]
        logits = np.concatenate([logits, predict_logits(classifier, batch, batch_size=batch_size)])
        opinion = feature_opinion(classifier, batch)
        p_features = np.concatenate([p_features, opinion]) if opinion is not None else None
        yield len(logits), n
    proba = probabilities(classifier, logits, p_features) if n else np.zeros((0, len(classifier.info.classes)))
    cells = cell_table(labels, crops.labels, proba, p_leukemic(classifier, proba), classifier.info.classes,
                       classifier.info.leukemic, p_features if n else None)
    return cells, crops


def probability_column(cls: str, leukemic=("leukemic",)) -> str:
    """Name of class ``cls``'s probability column in the cell table.

    ``p_<cls>``; a class named ``leukemic`` that is not the only leukaemic class gets ``p_class_leukemic``, so
    that ``p_leukemic`` always means the sum over leukaemic classes.
    """
    return "p_class_leukemic" if cls == "leukemic" and tuple(leukemic) != ("leukemic",) else f"p_{cls}"


def _compact(labels: np.ndarray, ids) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` and ``ids`` renumbered 1..N when the ids are sparse (e.g. 2**31 - 1), so that per-id tables stay
    small; unchanged otherwise. The caller keeps the original ids for its output."""
    ids = np.array(ids, np.int64)  # a writable copy (pandas may hand out read-only views)
    if not len(ids) or ids.max() <= 4 * len(ids) + 1024:
        return labels, ids
    from skimage.segmentation import relabel_sequential

    compact, forward, _ = relabel_sequential(labels)
    return compact, np.asarray(forward[ids], np.int64)


def cell_geometry(labels: np.ndarray, ids):
    """Per-cell geometry (pandas): ``label``, centroid, bounding box (``bbox_y1/x1`` exclusive) and area."""
    import pandas as pd
    from scipy import ndimage as ndi

    original = np.asarray(ids, int)
    labels, ids = _compact(labels, original)
    n = len(ids)
    centroids = np.asarray(ndi.center_of_mass(np.ones_like(labels), labels, ids)).reshape(n, 2)
    slices = ndi.find_objects(labels, max_label=int(ids.max()) if n else 0)
    boxes = [[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in (slices[i - 1] for i in ids)]
    bbox = np.array(boxes, int).reshape(n, 4)
    area = np.bincount(labels.ravel(), minlength=int(ids.max()) + 1 if n else 1)[ids] if n else np.zeros(0, int)
    return pd.DataFrame({
        "label": original,
        "centroid_y": centroids[:, 0],
        "centroid_x": centroids[:, 1],
        "bbox_y0": bbox[:, 0], "bbox_x0": bbox[:, 1], "bbox_y1": bbox[:, 2], "bbox_x1": bbox[:, 3],
        "area": area,
    })


def cell_table(labels, ids, proba, p_leuk, classes, leukemic=("leukemic",), p_features=None):
    """The per-cell table (pandas): geometry (:func:`cell_geometry`), class probabilities, p_leukemic,
    uncertainty, call. Each class ``c`` gets a column :func:`probability_column`. With ``p_features`` (a checkpoint
    with a feature SVM, whose mean with the network ``p_leukemic`` is) each part gets a column too: ``p_network``
    and ``p_features``."""
    return with_calls(cell_geometry(labels, ids), proba, p_leuk, classes, leukemic, p_features)


def with_calls(table, proba, p_leuk, classes, leukemic=("leukemic",), p_features=None):
    """:func:`cell_table` of cells whose geometry is measured already: ``table`` with the calls added."""
    import pandas as pd

    n = len(table)
    p_leuk = np.asarray(p_leuk, float)
    table["predicted_class"] = pd.Categorical(
        [classes[i] for i in np.asarray(proba).argmax(axis=1)] if n else [], categories=list(classes)
    )
    table["p_leukemic"] = p_leuk
    table["uncertainty"] = 1 - np.abs(2 * p_leuk - 1)
    table["leukemic"] = p_leuk >= LEUKEMIC_THRESHOLD
    for j, c in enumerate(classes):
        table[probability_column(c, leukemic)] = np.asarray(proba, float)[:, j] if n else np.zeros(0)
    if p_features is not None:  # p_leukemic pools the two parts
        from .predict import network_part

        table["p_network"] = network_part(p_leuk, p_features)
        table["p_features"] = np.asarray(p_features, float)
    return table


def paint_values(labels: np.ndarray, ids, values) -> np.ndarray:
    """Float image with ``values[i]`` over the pixels of ``ids[i]``, 0 elsewhere."""
    labels, ids = _compact(labels, ids)
    lut = np.zeros(int(labels.max()) + 1, np.float32)
    lut[np.asarray(ids, int)] = values
    return lut[labels]


@functools.lru_cache(maxsize=4)
def _cached_classifier(path: str, device: str):
    from .model import load_classifier

    return load_classifier(path or None, device)


@functools.lru_cache(maxsize=16)
def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def model_name(path) -> str:
    """``file name @ sha256[:12]``: the model and its exact version."""
    if not path:
        return "in-memory"
    return f"{Path(path).name}@{_sha(str(path))}"
