"""THE shared preprocessing: one crop per cell, identical for training and inference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import CropConfig

#: Largest cell label id: label images are analysed and stored (``labels.tif``) as int32.
MAX_LABEL = int(np.iinfo(np.int32).max)


def label_ids(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """The cell ids of a label image (ascending, 0 left out), checked: never wrapped or cut to fit.

    Parameters
    ----------
    labels : (H, W) array of int
        Any integer dtype; ids may have gaps.
    name : str
        Named in errors.

    Returns
    -------
    (N,) ndarray of int64

    Raises
    ------
    ValueError
        When the labels are not integers, are negative, or an id exceeds :data:`MAX_LABEL` (renumber the
        cells 1..N first, e.g. with ``skimage.segmentation.relabel_sequential``, keeping its map).
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got {labels.dtype}")
    ids = np.unique(labels)
    if len(ids) and ids[0] < 0:
        raise ValueError(f"{name} must not be negative, got {ids[0]}")
    if len(ids) and ids[-1] > MAX_LABEL:
        raise ValueError(f"{name}: cell id {ids[-1]} exceeds {MAX_LABEL} (2**31 - 1), the largest that labels.tif and "
                         "the cell table hold; renumber the cells 1..N first (skimage.segmentation.relabel_sequential)")
    return ids[ids > 0].astype(np.int64)


@dataclass
class CellCrops:
    """Crops of the cells of one image.

    Attributes
    ----------
    labels : (N,) ndarray of int
        Label id of each crop's cell.
    images : (N, S, S, 3) ndarray of uint8
        The crops, before normalisation.
    windows : (N, 4) ndarray of int
        ``row0, col0, row1, col1`` of each crop's square window in the source image (may reach
        beyond the image; those pixels are padded).
    red_cell_px : float or None
        The red-cell diameter a fixed window was scaled by (given or measured); None for cell-fitted crops.
    """

    labels: np.ndarray
    images: np.ndarray
    windows: np.ndarray
    red_cell_px: float | None = None


def crop_cells(image: np.ndarray, labels: np.ndarray, cfg: CropConfig = CropConfig(), *, ids=None,
               red_cell_px: float | None = None) -> CellCrops:
    """Cut one square crop per cell, centred on its bounding box: the box with a context margin, or a fixed
    window of ``cfg.window`` red-cell diameters.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
    labels : (H, W) ndarray of int
        Cell label image (0 = background); ids up to :data:`MAX_LABEL`, gaps allowed.
    cfg : CropConfig
        Crop size, margin and masking; stored in every classifier checkpoint.
    ids : sequence of int, optional
        Crop only these labels (default: every label present, ascending).
    red_cell_px : float, optional
        Red-cell diameter in pixels, for a fixed window (``cfg.window > 0``); measured on the image
        (:func:`~.stain.red_cell_diameter`) when omitted.

    Returns
    -------
    CellCrops

    Raises
    ------
    ValueError
        When the labels do not match the image, are refused by :func:`label_ids`, or lack a cell of ``ids``.
    """
    import cv2
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential

    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} does not match image shape {image.shape[:2]}")
    all_ids = label_ids(labels)
    ids = all_ids if ids is None else np.asarray(ids)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"cell ids must be integers, got {ids.dtype}")
    ids = ids.astype(np.int64).reshape(-1)
    where = np.searchsorted(all_ids, ids)  # the cells' places among all ids: their slice in the renumbered labels
    for cell, k in zip(ids, where):
        if k == len(all_ids) or all_ids[k] != cell:
            raise ValueError(f"label {cell} is not in the label image")
    fixed_half = None
    if cfg.window and len(ids):
        red_cell_px = red_cell_px or measure_red_cells(image)
        fixed_half = max(1, int(round(cfg.window * red_cell_px / 2)))
    slices = ndi.find_objects(relabel_sequential(labels)[0].astype(np.int32)) if len(ids) else []
    out = np.empty((len(ids), cfg.size, cfg.size, 3), np.uint8)
    windows = np.empty((len(ids), 4), int)
    fill = np.median(image.reshape(-1, 3), axis=0)
    for i, (cell, k) in enumerate(zip(ids, where)):
        sl = slices[k]
        (r0, r1), (c0, c1) = (sl[0].start, sl[0].stop), (sl[1].start, sl[1].stop)
        side = max(r1 - r0, c1 - c0)
        half = fixed_half or int(round(side * (0.5 + cfg.margin)))
        cy, cx = (r0 + r1) // 2, (c0 + c1) // 2
        w = (cy - half, cx - half, cy + half, cx + half)
        windows[i] = w
        patch = _window(image, w, fill)
        if cfg.mask_outside:
            inside = (_window(labels, w, 0) == cell).astype(np.uint8)
            grow = max(1, int(side * cfg.margin))
            inside = cv2.dilate(inside, np.ones((3, 3), np.uint8), iterations=grow).astype(bool)
            patch[~inside] = fill.astype(np.uint8)
        shrink = patch.shape[0] > cfg.size
        out[i] = cv2.resize(patch, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return CellCrops(labels=ids, images=out, windows=windows, red_cell_px=red_cell_px if fixed_half else None)


def measure_red_cells(image: np.ndarray) -> float:
    """The red-cell diameter of a smear in pixels (:func:`~.stain.red_cell_diameter` on its central 768 px,
    red cells up to 200 px wide).

    Raises
    ------
    ValueError
        When no red cells are found (give the diameter instead).
    """
    from skimage import color

    from .stain import red_cell_diameter

    h, w = image.shape[:2]
    centre = image[max(0, h // 2 - 384) : h // 2 + 384, max(0, w // 2 - 384) : w // 2 + 384]
    d = red_cell_diameter(centre, color.rgb2lab(centre), largest=min(200, min(centre.shape[:2]) // 2))
    if d is None:
        raise ValueError("no red cells found to scale the cell crops by; give the red-cell diameter in pixels")
    return d


def _window(array: np.ndarray, window, fill) -> np.ndarray:
    """``array[r0:r1, c0:c1]`` with pixels outside the array set to ``fill``."""
    r0, c0, r1, c1 = window
    h, w = array.shape[:2]
    out = np.empty((r1 - r0, c1 - c0) + array.shape[2:], array.dtype)
    out[...] = fill
    rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
    if rr1 > rr0 and cc1 > cc0:
        out[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = array[rr0:rr1, cc0:cc1]
    return out


def centre_cell(labels: np.ndarray, max_distance: float | None = None) -> int:
    """Label of the cell at the centre of a single-cell field (or nearest to it); 0 if there is none.

    Parameters
    ----------
    labels : (H, W) ndarray of int
    max_distance : float, optional
        A cell that does not cover the centre counts only when one of its pixels lies within this many pixels
        of it (default: any distance).
    """
    h, w = labels.shape
    at_centre = int(labels[h // 2, w // 2])
    if at_centre:
        return at_centre
    rows, cols = np.nonzero(labels)
    if len(rows) == 0:
        return 0
    d2 = (rows - h / 2) ** 2 + (cols - w / 2) ** 2
    k = np.argmin(d2)
    if max_distance is not None and d2[k] > max_distance**2:
        return 0
    return int(labels[rows[k], cols[k]])


def to_tensor(images: np.ndarray, cfg: CropConfig):
    """Normalise uint8 crops ``(N, S, S, 3)`` into a float tensor ``(N, 3, S, S)``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return normalize(x, cfg)


def normalize(x, cfg: CropConfig):
    """Normalise a float tensor ``(N, 3, S, S)`` in [0, 1] by the crop config's mean and std."""
    import torch

    mean = torch.tensor(cfg.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
