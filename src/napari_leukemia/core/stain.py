"""Classical stain-based leukocyte segmentation (the baseline, and the source of cellpose training masks).

Wright-Giemsa stains leukocyte nuclei deep blue-violet: in CIE L*a*b* they sit far on the blue side of
the b* axis, where red cells and background never go. The segmenter thresholds b*, groups nuclear lobes
that belong to one cell, and grows each group's convex hull by a rim of cytoplasm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Pixels with CIE b* below this are nuclear stain.
NUCLEUS_B_THRESHOLD = -20.0
#: Leukocyte diameter over the diameter of its nuclear group (a rim of cytoplasm).
CELL_OVER_NUCLEUS = 1.3


def nucleus_mask(image: np.ndarray, lab: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of nuclear stain in an RGB uint8 smear (``lab``: its CIE L*a*b*, if already computed)."""
    if lab is None:
        from skimage import color

        lab = color.rgb2lab(image)
    b = ndi.gaussian_filter(lab[..., 2], 1.0)
    return b < NUCLEUS_B_THRESHOLD


def estimate_diameter(image: np.ndarray, lab: np.ndarray | None = None) -> float | None:
    """Estimate the leukocyte diameter (pixels) of a smear from its largest nuclear groups.

    Returns ``None`` when the image holds no nuclear stain of any size.
    """
    nuc = nucleus_mask(image, lab)
    radius = max(2, int(0.02 * min(image.shape[:2])))
    groups, n = ndi.label(ndi.binary_dilation(nuc, _disk(radius)))
    if n == 0:
        return None
    areas = ndi.sum_labels(nuc, groups, np.arange(1, n + 1))
    big = areas[areas >= 0.25 * areas.max()]
    if big.max() < 100:
        return None
    return float(CELL_OVER_NUCLEUS * 2 * np.sqrt(np.median(big) / np.pi))


def stain_segment(image: np.ndarray, diameter: float | None = None, min_area_fraction: float = 0.15,
                  lab: np.ndarray | None = None) -> np.ndarray:
    """Segment leukocytes by their nuclear stain.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB smear.
    diameter : float, optional
        Expected leukocyte diameter in pixels; estimated from the stain when omitted.
    min_area_fraction : float
        Nuclear groups smaller than this fraction of the expected nucleus area are dropped
        (platelets, stain debris).
    lab : (H, W, 3) ndarray, optional
        The image in CIE L*a*b*, when the caller has it already.

    Returns
    -------
    labels : (H, W) ndarray of int32
        0 is background, 1..N the leukocytes.
    """
    from skimage.measure import regionprops
    from skimage.morphology import convex_hull_image
    from skimage.segmentation import watershed

    if lab is None:
        from skimage import color

        lab = color.rgb2lab(image)
    if diameter is None:
        diameter = estimate_diameter(image, lab)
        if diameter is None:
            return np.zeros(image.shape[:2], np.int32)
    nuc = nucleus_mask(image, lab)
    nuc = ndi.binary_opening(nuc, _disk(max(1, int(diameter * 0.02))))
    # lobes of one nucleus lie within ~15% of a cell diameter of each other
    groups, n = ndi.label(ndi.binary_dilation(nuc, _disk(max(1, int(0.12 * diameter)))))
    groups[~nuc] = 0
    nucleus_area = np.pi / 4 * (diameter / CELL_OVER_NUCLEUS) ** 2
    hulls = np.zeros(image.shape[:2], np.int32)
    rim = max(1, int(round(diameter * (1 - 1 / CELL_OVER_NUCLEUS) / 2)))
    k = 0
    for region in regionprops(groups):
        if region.area < min_area_fraction * nucleus_area:
            continue
        r0, c0, r1, c1 = region.bbox
        r0, c0 = max(0, r0 - rim - 1), max(0, c0 - rim - 1)
        r1, c1 = min(image.shape[0], r1 + rim + 1), min(image.shape[1], c1 + rim + 1)
        local = groups[r0:r1, c0:c1] == region.label
        hull = convex_hull_image(local) if local.sum() >= 3 else local
        k += 1
        view = hulls[r0:r1, c0:c1]
        view[hull & (view == 0)] = k
    if k == 0:
        return hulls
    cells = ndi.binary_dilation(hulls > 0, _disk(rim))
    distance = ndi.distance_transform_edt(hulls == 0)
    return watershed(distance, hulls, mask=cells).astype(np.int32)


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius
