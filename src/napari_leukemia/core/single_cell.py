"""Single-cell images: one leukocyte at the centre of each image, from any lab and at any magnification.

CellaVision exports and public single-cell sets hold one cell per image, cropped around it, sometimes at a
higher magnification and sometimes on a removed (black or white) background. :func:`find_centre_cell` finds that
cell whatever its size, or falls back to a centred crop and says so (``found_by``); :func:`analyze_single_cells`
classifies many such images with their crops in full batches. Research use only: not a diagnostic device.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from .config import AnalysisConfig, SegmentConfig
from .io import ImageError, as_rgb8

#: How the cell of a single-cell image was found: segmented, or the centred crop taken when segmentation found
#: no cell at the centre.
FOUND_BY = ("segmentation", "centre crop")
#: Segmentation runs on the image shrunk to this shorter side (never enlarged): a 3x image costs what a 1x one does,
#: and cellpose sees the cell at its own scale either way.
WORK_SIDE = 256
#: A segmented cell that does not cover the image centre is the cell only when it comes this close to the centre
#: (a fraction of the shorter side); neighbours cut by the frame lie farther out.
CENTRE_DISTANCE = 0.1
#: When no cell is found at the centre at the stain's diameter estimate, segmentation is tried again at these
#: leukocyte diameters, as fractions of the image's shorter side (a cell that fills the frame fools the estimate).
SIZE_FRACTIONS = (0.6, 0.35, 0.85)
#: A centre cell narrower than this fraction of the image's shorter side may be the nucleus of a cell that fills the
#: frame: larger scales are looked at too (:func:`_filling_cell`).
FILLS = 0.7
#: ... at these leukocyte diameters, as fractions of that side, in turn: cellpose misses a cell that nearly fills
#: the frame at the frame's side (zheng1's largest cells, 0.7-0.8 of it), and finds it at 0.7 of it ...
FILL_FRACTIONS = (0.7, 1.0)
#: ... and the cell found at one of them is taken when it is at least this many times as large as the centre cell
#: found before (a nucleus or a lobe of it is a small part of its cell; a neighbour merged into a cell of a
#: smear's own size adds less: PBC's cells, 0.4-0.55 of their frame, grow 1.03-1.6x) ...
PART_AT_MOST = 2.0
#: ... and the cell found at a diameter is taken when its own diameter (that of a disc of its area) is within this
#: factor of it.
SCALE_AGREES = 1.25
#: Segmentation sees the image framed by this fraction of its shorter side on every side, in the colour of its
#: frame: a cell that fills the image or touches its frame then lies on background, as cellpose knows cells.
PAD = 0.5
#: A removed background: pixels no channel of which exceeds ``BLACK_MAX``, or every channel of which reaches
#: ``WHITE_MIN``, joined to the frame and covering at least ``REMOVED_BORDER`` of the frame's pixels.
BLACK_MAX = 40
WHITE_MIN = 245
REMOVED_BORDER = 0.5
#: A removed background is painted with this colour: the plasma between the cells of a May-Grünwald-Giemsa smear
#: (the median frame colour of DeepAPL's fields), the background the segmenter and the classifier know.
SMEAR_BACKGROUND = (250, 224, 198)
#: An image with less than this fraction left once its removed background is taken away holds no cell: refused.
MIN_FOREGROUND = 0.02


def clear_background(image: np.ndarray, name: str = "image") -> tuple[np.ndarray, str]:
    """Paint a removed black or white background with :data:`SMEAR_BACKGROUND`.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
    name : str
        Named in errors.

    Returns
    -------
    image : (H, W, 3) ndarray of uint8
        ``image`` itself when it has no removed background, else a painted copy.
    removed : {"", "black", "white"}
        Which background was removed.

    Raises
    ------
    ImageError
        When (almost) nothing but that background is left: no cell to analyse.
    """
    from scipy import ndimage as ndi

    frame = np.zeros(image.shape[:2], bool)
    frame[[0, -1], :] = frame[:, [0, -1]] = True
    for kind, uniform in (("black", image.max(axis=-1) <= BLACK_MAX), ("white", image.min(axis=-1) >= WHITE_MIN)):
        if uniform[frame].mean() < REMOVED_BORDER:
            continue
        parts, _ = ndi.label(uniform)
        touching = np.unique(parts[frame & uniform])
        background = np.isin(parts, touching[touching > 0])
        if background.mean() > 1 - MIN_FOREGROUND:
            raise ImageError(f"{name}: the image is a uniform {kind} background with no cell on it")
        background = ndi.binary_dilation(background, iterations=2)  # the JPEG fringe around the cell's outline
        out = image.copy()
        out[background] = SMEAR_BACKGROUND
        return out, kind
    return image, ""


def find_centre_cell(image: np.ndarray, cfg: SegmentConfig = SegmentConfig(), *, model=None, device: str = "auto",
                     margin: float = 0.25) -> tuple[np.ndarray, str]:
    """The one cell of a single-cell image: the segmented cell at (or nearest) its centre, else a centred crop.

    The image is segmented at most :data:`WORK_SIDE` px on its shorter side, first at ``cfg.diameter`` or the
    stain's estimate, then, while no cell lies at the centre (:func:`~.preprocess.centre_cell` within
    :data:`CENTRE_DISTANCE`), at the diameters of :data:`SIZE_FRACTIONS` of the image. Other cells (neighbours cut
    by the frame) are left out.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        Its removed background, if any, painted already (:func:`clear_background`).
    cfg : SegmentConfig
        Method and thresholds; a ``diameter`` is in the pixels of ``image``.
    model : cellpose model, optional
    margin : float
        The fallback's margin (the classifier's :attr:`~.config.CropConfig.margin`): its box is the image less
        this margin, so that its crop is the whole image.

    Returns
    -------
    labels : (H, W) ndarray of int32
        The cell as label 1, 0 elsewhere.
    found_by : str
        One of :data:`FOUND_BY`.
    """
    import cv2

    from .datasets import cell_box
    from .segment import MIN_DIAMETER, upscale_labels
    from .stain import estimate_diameter

    h, w = image.shape[:2]
    scale = min(1.0, WORK_SIDE / min(h, w))
    small = image if scale == 1 else cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    side = min(small.shape[:2])
    pad = int(PAD * side)
    frame = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    padded = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=np.median(frame, axis=0).tolist())
    estimate = cfg.diameter * scale if cfg.diameter else estimate_diameter(small)
    diameters = ([estimate] if estimate else []) + [f * side for f in SIZE_FRACTIONS]
    for diameter in diameters:
        if diameter < MIN_DIAMETER:
            continue
        only = _centre_at(padded, pad, small.shape[:2], diameter, cfg, model, device)
        if only is not None:
            if _disc_diameter(only) < FILLS * side:
                only = _filling_cell(padded, pad, small.shape[:2], only, cfg, model, device)
            return (only if scale == 1 else upscale_labels(only, (h, w))), FOUND_BY[0]
    return cell_box((h, w), margin), FOUND_BY[1]


def _centre_at(padded, pad, shape, diameter, cfg, model, device) -> np.ndarray | None:
    """The centre cell (int32, 1 inside) of the image ``padded`` frames (``shape`` within a frame of ``pad``),
    segmented at ``diameter``; None when no cell lies at its centre."""
    from .preprocess import centre_cell
    from .segment import segment_leukocytes

    labels = segment_leukocytes(padded, dataclasses.replace(cfg, diameter=float(diameter)), model=model, device=device)
    labels = labels[pad : pad + shape[0], pad : pad + shape[1]]
    cell = centre_cell(labels, max_distance=CENTRE_DISTANCE * min(shape))
    return (labels == cell).astype(np.int32) if cell else None


def _disc_diameter(mask: np.ndarray) -> float:
    """The diameter of a disc of ``mask``'s area."""
    return float(2 * np.sqrt(mask.sum() / np.pi))


def _filling_cell(padded, pad, shape, found, cfg, model, device) -> np.ndarray:
    """The cell that fills the frame, of which ``found`` is a part (its nucleus, seen at a smaller scale): the centre
    cell at the first of :data:`FILL_FRACTIONS` of the frame's side where it is :data:`PART_AT_MOST` times as large
    as ``found`` or more, holds most of it and its size agrees with that scale; else ``found``."""
    for fraction in FILL_FRACTIONS:
        diameter = fraction * min(shape)
        whole = _centre_at(padded, pad, shape, diameter, cfg, model, device)
        if whole is None or whole.sum() < PART_AT_MOST * found.sum():
            continue
        agrees = 1 / SCALE_AGREES <= _disc_diameter(whole) / diameter <= SCALE_AGREES
        if agrees and (whole & found).sum() >= 0.8 * found.sum():
            return whole
    return found


def analyze_single_cells(images, names, *, classifier=None, segmenter=None,
                         config: AnalysisConfig = AnalysisConfig(single_cell=True)) -> list:
    """Analyse single-cell images together: each one's cell found alone, all their crops classified in batches.

    Each image's removed background is painted (:func:`clear_background`), its cell found
    (:func:`find_centre_cell`) and cropped (:func:`~.preprocess.crop_cells`); the crops of all images are then
    classified, and explained, ``config.batch_size`` at a time.

    Parameters
    ----------
    images : sequence of (H, W[, C]) arrays
        One cell at the centre of each (sizes may differ).
    names : sequence of str
        The images' names, for messages and summaries.
    classifier, segmenter : path or loaded model, optional
        As for :func:`~.pipeline.iter_analyze_smear`.
    config : AnalysisConfig

    Returns
    -------
    list of SmearResult or ImageError
        One per image, in order: its result (one cell; the cell table's ``found_by`` and the summary's ``found_by``
        say how it was found), or the error that refused it (an image of nothing but a removed background, or one
        that is not a colour image).
    """
    from .pipeline import build_result, cell_table, load_models, segmenter_label
    from .predict import feature_opinion, p_leukemic, predict_logits, probabilities
    from .preprocess import crop_cells

    clf, seg_model, device = load_models(segmenter, classifier, config)
    crop = clf.info.crop
    found = []
    for image, name in zip(images, names):
        t0 = time.perf_counter()
        try:
            image, removed = clear_background(as_rgb8(image, name), name)
            labels, by = find_centre_cell(image, config.segment, model=seg_model, device=str(device), margin=crop.margin)
            crops = crop_cells(image, labels, crop, red_cell_px=_red_cells(image, config, crop, by))
        except ValueError as err:  # ImageError is one
            found.append(err if isinstance(err, ImageError) else ImageError(f"{name}: {err}"))
            continue
        found.append((image, name, labels, by, removed, crops, time.perf_counter() - t0))
    done = [i for i, f in enumerate(found) if not isinstance(f, Exception)]
    if not done:
        return found
    every = np.concatenate([found[i][5].images for i in done])
    t0 = time.perf_counter()
    p_features = feature_opinion(clf, every)
    proba = probabilities(clf, predict_logits(clf, every, batch_size=config.batch_size), p_features)
    p_leuk = p_leukemic(clf, proba)
    timings = {"classify_s": (time.perf_counter() - t0) / len(done)}
    cams = None
    if config.gradcam:
        from .explain import gradcam

        t0 = time.perf_counter()
        cams = gradcam(clf, every, proba.argmax(axis=1), batch_size=config.batch_size)
        timings["gradcam_s"] = (time.perf_counter() - t0) / len(done)
    for k, i in enumerate(done):
        image, name, labels, by, removed, crops, segment_s = found[i]
        cells = cell_table(labels, crops.labels, proba[k : k + 1], p_leuk[k : k + 1], clf.info.classes,
                           clf.info.leukemic, None if p_features is None else p_features[k : k + 1])
        cells["found_by"] = by
        message = "" if by == FOUND_BY[0] else f"{name}: no cell found at the centre; the centred crop was classified"
        found[i] = build_result(
            image, labels, cells, crops, None if cams is None else cams[k : k + 1], clf, name=name,
            segmenter=segmenter_label(seg_model), device=device,
            timings={"segment_s": segment_s, **timings, "total_s": segment_s + sum(timings.values())},
            extra={"single_cell": True, "found_by": by, "removed_background": removed, "message": message})
    return found


def _red_cells(image: np.ndarray, config: AnalysisConfig, crop, found_by: str) -> float | None:
    """The red-cell diameter a fixed-window classifier's crop is scaled by (``None`` for cell-fitted crops): given,
    measured, or, on a centred crop or an image without red cells, the image's shorter side over the window (the
    image is the window, as :func:`~.datasets.crops_for` has it)."""
    from .preprocess import measure_red_cells

    if not crop.window:
        return None
    if config.red_cell_diameter:
        return config.red_cell_diameter
    if found_by == FOUND_BY[0]:
        try:
            return measure_red_cells(image)
        except ValueError:
            pass
    return min(image.shape[:2]) / crop.window
