"""Grad-CAM heat maps of the classifier's ``cam_layer`` (DenseNet201: its last feature block): of crops, of cells of
an image (painted inside their masks), and of one cell of a slide too large to hold."""

from __future__ import annotations

import copy

import numpy as np

from .device import flush_denormals
from .model import Classifier
from .preprocess import to_tensor


def gradcam(classifier: Classifier, crops: np.ndarray, targets, *, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM of each crop for its target class.

    Parameters
    ----------
    crops : (N, S, S, 3) ndarray of uint8
    targets : (N,) sequence of int
        Class index explained for each crop (usually the predicted class).

    Returns
    -------
    (N, S, S) ndarray of float32 in [0, 1]
    """
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = classifier.net
    if not hasattr(net, "parameters"):
        raise TypeError(f"Grad-CAM needs the torch network, and {classifier.name} is run by ONNX Runtime")
    if net.training:  # GradCAM puts what it is given in eval mode: never hand it a model being trained
        net = copy.deepcopy(net)
    net.float().to(memory_format=torch.contiguous_format)
    device = next(net.parameters()).device
    out = np.zeros((len(crops), crops.shape[1], crops.shape[2]), np.float32)
    flush_denormals(device)
    with GradCAM(model=net, target_layers=[net.cam_layer]) as cam:
        for start in range(0, len(crops), batch_size):
            x = to_tensor(crops[start : start + batch_size], classifier.info.crop).to(device)
            t = [ClassifierOutputTarget(int(k)) for k in targets[start : start + len(x)]]
            out[start : start + len(x)] = cam(input_tensor=x, targets=t)
    return out


def paint_maps_in_cells(labels: np.ndarray, crops, maps: np.ndarray) -> np.ndarray:
    """Float image with each crop's map (e.g. Grad-CAM) resized to its window and kept inside its cell, 0 elsewhere."""
    canvas = np.zeros(labels.shape, np.float32)
    for cell, window, m in zip(crops.labels, crops.windows, maps):
        rows, cols, part = _window_view(labels.shape, window, m)
        inside = labels[rows, cols] == cell
        canvas[rows, cols][inside] = part[inside]
    return canvas


def explain_cells(image: np.ndarray, labels: np.ndarray, classifier, ids, targets, *,
                  red_cell_px: float | None = None) -> np.ndarray:
    """Grad-CAM of some cells, on demand (e.g. the one under review), painted inside their masks.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
    labels : (H, W) ndarray of int
    classifier : Classifier
    ids : sequence of int
        The cells to explain.
    targets : sequence of int
        The class index explained for each of ``ids`` (usually its predicted class).
    red_cell_px : float, optional
        As for :func:`~.pipeline.classify_cells`.

    Returns
    -------
    (H, W) ndarray of float32
        Each cell's map (0-1) inside its mask, 0 elsewhere.
    """
    from .io import as_rgb8
    from .preprocess import crop_cells

    crops = crop_cells(as_rgb8(image), labels, classifier.info.crop, ids=ids, red_cell_px=red_cell_px)
    target = dict(zip((int(i) for i in ids), (int(t) for t in targets)))
    maps = gradcam(classifier, crops.images, [target[int(i)] for i in crops.labels]) if len(crops.labels) else []
    return paint_maps_in_cells(labels, crops, maps)


def explain_cell_region(image, labels, classifier, label: int, target: int, bbox, *,
                        red_cell_px: float | None = None) -> tuple[np.ndarray, tuple[int, int], float]:
    """Grad-CAM of one cell of an image too large to hold (a whole slide's level 0), from the region around it.

    Parameters
    ----------
    image : (H, W, 3) array
        numpy, dask or zarr: only the region around the cell is read.
    labels : (H, W) array
        The cells, likewise read around the cell only.
    label, target : int
        The cell and the class index explained.
    bbox : (y0, x0, y1, x1)
        The cell's box (level-0 pixels), e.g. from its row of the cell table.
    red_cell_px : float, optional
        As for :func:`~.pipeline.classify_cells` (fixed-window crops).

    Returns
    -------
    heat : (h, w) ndarray of float32
        The map inside the cell's mask, 0 elsewhere, over the region read.
    origin : (int, int)
        The region's top-left corner in the image.
    mean : float
        The mean heat inside the cell.
    """
    y0, x0, y1, x1 = (int(v) for v in bbox)
    crop = classifier.info.crop
    half = max(y1 - y0, x1 - x0) * (0.5 + crop.margin)
    if crop.window:
        half = max(half, crop.window * (red_cell_px or 0) / 2)
    pad = int(np.ceil(half)) + 2  # the crop window about the box's centre, and a little more
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    h, w = labels.shape[:2]
    ry0, rx0, ry1, rx1 = max(cy - pad, 0), max(cx - pad, 0), min(cy + pad, h), min(cx + pad, w)
    region = np.asarray(labels[ry0:ry1, rx0:rx1])
    heat = explain_cells(np.asarray(image[ry0:ry1, rx0:rx1]), region, classifier, [label], [target],
                         red_cell_px=red_cell_px)
    inside = region == label
    return heat, (ry0, rx0), float(heat[inside].mean()) if inside.any() else 0.0


def _window_view(shape, window, m: np.ndarray):
    """``m`` resized to ``window`` (``r0, c0, r1, c1``, may reach beyond ``shape``) and clipped to the image:
    the image's row and column slices and the clipped map."""
    import cv2

    r0, c0, r1, c1 = (int(v) for v in window)
    resized = cv2.resize(m, (c1 - c0, r1 - r0), interpolation=cv2.INTER_LINEAR)
    rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r1, shape[0]), min(c1, shape[1])
    return slice(rr0, rr1), slice(cc0, cc1), resized[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
