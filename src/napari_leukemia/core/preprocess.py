"""THE shared preprocessing: one crop per cell, identical for training and inference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import CropConfig


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
        Cell label image (0 = background).
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
    """
    import cv2
    from scipy import ndimage as ndi

    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} does not match image shape {image.shape[:2]}")
    all_ids = np.unique(labels)
    all_ids = all_ids[all_ids > 0]
    ids = all_ids if ids is None else np.asarray(ids, int)
    fixed_half = None
    if cfg.window and len(ids):
        red_cell_px = red_cell_px or measure_red_cells(image)
        fixed_half = max(1, int(round(cfg.window * red_cell_px / 2)))
    slices = ndi.find_objects(labels.astype(np.int32, copy=False), max_label=int(ids.max()) if len(ids) else 0)
    out = np.empty((len(ids), cfg.size, cfg.size, 3), np.uint8)
    windows = np.empty((len(ids), 4), int)
    fill = np.median(image.reshape(-1, 3), axis=0)
    for i, cell in enumerate(ids):
        sl = slices[cell - 1]
        if sl is None:
            raise ValueError(f"label {cell} is not in the label image")
        (r0, r1), (c0, c1) = (sl[0].start, sl[0].stop), (sl[1].start, sl[1].stop)
        side = max(r1 - r0, c1 - c0)
        half = fixed_half or int(round(side * (0.5 + cfg.margin)))
        cy, cx = (r0 + r1) // 2, (c0 + c1) // 2
        w = (cy - half, cx - half, cy + half, cx + half)
        windows[i] = w
        patch = _window(image, w, fill)
        if cfg.mask_outside:
            inside = _window(labels == cell, w, 0).astype(np.uint8)
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


def centre_cell(labels: np.ndarray) -> int:
    """Label of the cell at the centre of a single-cell field (or nearest to it); 0 if there is none."""
    h, w = labels.shape
    at_centre = int(labels[h // 2, w // 2])
    if at_centre:
        return at_centre
    rows, cols = np.nonzero(labels)
    if len(rows) == 0:
        return 0
    k = np.argmin((rows - h / 2) ** 2 + (cols - w / 2) ** 2)
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
