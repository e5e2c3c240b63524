"""A segmenter against expert masks of whole cells: IoU of the centre cell, and how much nucleus and cytoplasm it keeps.

Research use only: not a diagnostic device.

Each image holds one cell at its centre and has a mask beside it (``NNN.png`` and ``NNN_mask.png`` in one folder, or
the same name in a mask folder). Any non-zero mask value is the cell; where the mask tells nucleus from cytoplasm
(zheng1: 255 nucleus, 128 cytoplasm) the share of each kept by the prediction is reported apart, so a mask that stops
short of pale cytoplasm shows as a low cytoplasm share; and the IoU of each, the predicted cell cut into nucleus and
cytoplasm by the image's nuclear stain.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .datasets import IMAGE_SUFFIXES
from .io import read_image

#: Suffix of a mask's stem beside its image (``001.png`` -> ``001_mask.png``).
MASK_SUFFIX = "_mask"


def mask_pairs(images: list[Path], masks_dir: Path | None = None) -> list[tuple[Path, Path]]:
    """Each image with its mask: ``<stem>_mask.<ext>`` beside it or in ``masks_dir``, else ``<stem>.<ext>`` there.

    Images whose stem ends in :data:`MASK_SUFFIX` are masks, not images.

    Raises
    ------
    FileNotFoundError
        An image without a mask (named), or no image at all.
    """
    pairs = []
    for image in sorted(Path(p) for p in images):
        if image.stem.endswith(MASK_SUFFIX):
            continue
        folder = Path(masks_dir) if masks_dir else image.parent
        candidates = [folder / f"{image.stem}{MASK_SUFFIX}{s}" for s in (image.suffix, *IMAGE_SUFFIXES)]
        if masks_dir:
            candidates += [folder / f"{image.stem}{s}" for s in (image.suffix, *IMAGE_SUFFIXES)]
        mask = next((c for c in candidates if c.is_file()), None)
        if mask is None:
            raise FileNotFoundError(f"{image}: no mask found (looked for {candidates[0].name} in {folder})")
        pairs.append((image, mask))
    if not pairs:
        raise FileNotFoundError("no images to score (only masks, or nothing)")
    return pairs


def read_mask(path) -> np.ndarray:
    """A mask file as ``(H, W)`` uint8 (colour masks: their maximum over channels).

    Raises
    ------
    ValueError
        Unreadable, or empty (no foreground), named with the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mask = np.asarray(im)
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{path}: not a readable mask image ({err})") from err
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if not mask.any():
        raise ValueError(f"{path}: the mask is empty (no pixel above 0)")
    return mask


def score_cell(predicted: np.ndarray, mask: np.ndarray, nucleus: np.ndarray | None = None) -> dict:
    """Compare a predicted cell (bool) with an expert mask (0 outside; 255 nucleus and 128 cytoplasm where given).

    Parameters
    ----------
    predicted, mask : array
    nucleus : array of bool, optional
        The image's nuclear stain (:func:`~.stain.nucleus_mask`): the predicted cell's nucleus is the stain inside
        it, its cytoplasm the rest.

    Returns
    -------
    dict
        ``iou`` of the whole cell, ``kept`` (share of the expert cell inside the prediction), ``spill`` (share
        of the prediction outside it) and, when the mask has two levels, ``nucleus_kept`` and ``cytoplasm_kept``,
        and with ``nucleus`` also ``nucleus_iou`` and ``cytoplasm_iou``.
    """
    cell = mask > 0
    inter, union = np.logical_and(predicted, cell).sum(), np.logical_or(predicted, cell).sum()
    out = {"iou": float(inter / union) if union else 0.0, "kept": float(inter / cell.sum()),
           "spill": float(np.logical_and(predicted, ~cell).sum() / predicted.sum()) if predicted.any() else 0.0}
    levels = np.unique(mask[cell])
    if len(levels) == 2:
        parts = {"nucleus": mask == levels[1], "cytoplasm": mask == levels[0]}
        for name, part in parts.items():
            out[f"{name}_kept"] = float(np.logical_and(predicted, part).sum() / part.sum())
        if nucleus is not None:
            found = {"nucleus": predicted & nucleus, "cytoplasm": predicted & ~nucleus}
            for name, part in parts.items():
                union = np.logical_or(found[name], part).sum()
                out[f"{name}_iou"] = float(np.logical_and(found[name], part).sum() / union) if union else 0.0
    return out


def score_masks(pairs: list[tuple[Path, Path]], segment: Callable[[np.ndarray], np.ndarray], *,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Segment each image and score its centre cell against the expert mask.

    Parameters
    ----------
    pairs : list of (image, mask)
        See :func:`mask_pairs`.
    segment : callable
        ``labels = segment(rgb)``, e.g. :func:`~.segment.segment_leukocytes` with its settings.

    Returns
    -------
    dict
        ``images``, ``found`` (share with a centre cell), mean and median of every :func:`score_cell` figure
        (a missed cell counts as IoU 0), ``per_image`` rows (``image``, ``found`` and the figures) and ``errors``
        (files that could not be read or segmented, named; they are left out of the figures).
    """
    from .preprocess import centre_cell
    from .stain import nucleus_mask

    rows, errors = [], []
    for i, (image_path, mask_path) in enumerate(pairs):
        try:
            image, mask = read_image(image_path), read_mask(mask_path)
            if mask.shape != image.shape[:2]:
                raise ValueError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image "
                                 f"{image.shape[1]}x{image.shape[0]}")
            labels = segment(image)
        except (OSError, ValueError) as err:
            errors.append(f"{image_path}: {err}" if str(image_path) not in str(err) else str(err))
        else:
            cell = centre_cell(labels, max_distance=0.1 * min(labels.shape))
            predicted = labels == cell if cell else np.zeros(labels.shape, bool)
            rows.append({"image": str(image_path), "found": bool(cell),
                         **score_cell(predicted, mask, nucleus_mask(image))})
        if progress:
            progress(i + 1, len(pairs))
    report: dict = {"images": len(rows), "found": float(np.mean([r["found"] for r in rows])) if rows else 0.0}
    for key in ("iou", "kept", "spill", "nucleus_kept", "cytoplasm_kept", "nucleus_iou", "cytoplasm_iou"):
        values = [r[key] for r in rows if key in r]
        if values:
            report[f"mean_{key}"], report[f"median_{key}"] = float(np.mean(values)), float(np.median(values))
    return {**report, "per_image": rows, "errors": errors}


def plot_worst(report: dict, pairs: dict, segment: Callable[[np.ndarray], np.ndarray], path, n: int = 12) -> None:
    """The ``n`` cells of lowest IoU: each image with the expert outline (green) and the prediction's (magenta).

    ``pairs`` maps each image path (str) to its mask path.
    """
    from matplotlib.figure import Figure
    from skimage.segmentation import find_boundaries

    from .evaluate import _save
    from .preprocess import centre_cell

    worst = sorted(report["per_image"], key=lambda r: r["iou"])[:n]
    cols = min(len(worst), 6) or 1
    fig = Figure(figsize=(2.2 * cols, 2.4 * ((len(worst) + cols - 1) // cols or 1)), dpi=110)
    for k, row in enumerate(worst):
        image, mask = read_image(row["image"]), read_mask(pairs[row["image"]])
        labels = segment(image)
        cell = centre_cell(labels, max_distance=0.1 * min(labels.shape))
        shown = image.copy()
        shown[find_boundaries(mask > 0)] = (0, 200, 0)
        if cell:
            shown[find_boundaries(labels == cell)] = (230, 0, 230)
        ax = fig.add_subplot((len(worst) + cols - 1) // cols, cols, k + 1)
        ax.imshow(shown)
        ax.set_title(f"{Path(row['image']).name}: IoU {row['iou']:.2f}", fontsize=7)
        ax.axis("off")
    fig.suptitle("lowest IoU: expert (green) vs segmenter (magenta)", fontsize=9)
    _save(fig, path)
