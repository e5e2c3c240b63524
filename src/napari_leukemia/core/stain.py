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
#: ``split_touching``: touching cells are told apart by peaks of the distance transform of their stain at
#: least this deep (fraction of a cell diameter), each this far above the saddle between them.
SPLIT_MIN_PEAK = 0.15
SPLIT_MIN_DEPTH = 0.07
#: ``estimate_diameter``: nuclear groups cut by ``split_touching`` (seeds this far above their saddle, a
#: fraction of a cell diameter: broad contacts too) count as cells only while the diameter taken from the
#: pieces is at least ``MIN_CELL_OVER_RED`` red-cell diameters (pairs of large leukocytes; a neutrophil's
#: or an eosinophil's lobes come out smaller); at most ``CUT_ROUNDS`` rounds.
CUT_MIN_DEPTH = 0.04
MIN_CELL_OVER_RED = 2.1
CUT_ROUNDS = 3


def nucleus_mask(image: np.ndarray, lab: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of nuclear stain in an RGB uint8 smear (``lab``: its CIE L*a*b*, if already computed)."""
    if lab is None:
        from skimage import color

        lab = color.rgb2lab(image)
    b = ndi.gaussian_filter(lab[..., 2], 1.0)
    return b < NUCLEUS_B_THRESHOLD


def estimate_diameter(image: np.ndarray, lab: np.ndarray | None = None) -> float | None:
    """Estimate the leukocyte diameter (pixels) of a smear from its largest nuclear groups.

    The diameter is ``CELL_OVER_NUCLEUS`` times that of a disk of the median stain area of the largest
    groups (the stain within 2% of the image side of each other). Where leukocytes touch, their stain
    merges into one group and the estimate runs large (a pair: by sqrt(2)). So the groups are cut by
    :func:`split_touching` at the estimate and the estimate is taken again from the pieces, until
    nothing more is cut, as long as the new estimate stays at least ``MIN_CELL_OVER_RED`` red-cell
    diameters (:func:`red_cell_diameter`): a cut below that has split one cell's nuclear lobes.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB smear.
    lab : (H, W, 3) ndarray, optional
        The image in CIE L*a*b*, when the caller has it already.

    Returns
    -------
    float or None
        The diameter; ``None`` when the image holds no nuclear stain of any size.
    """
    if lab is None:
        from skimage import color

        lab = color.rgb2lab(image)
    nuc = nucleus_mask(image, lab)
    radius = max(2, int(0.02 * min(image.shape[:2])))
    zones, n = ndi.label(_dilate(nuc, radius))
    if n == 0:
        return None
    diameter = _group_diameter(nuc, zones)
    if diameter is None:
        return None
    red = None
    for _ in range(CUT_ROUNDS):
        cut = split_touching(nuc, zones, diameter, min_depth=CUT_MIN_DEPTH)
        if cut.max() <= zones.max():
            break
        smaller = _group_diameter(nuc, cut)
        if smaller is None or smaller >= 0.95 * diameter:  # nothing that matters was cut (one pair among many cells)
            break
        red = red or red_cell_diameter(image, lab, nuc, largest=diameter)
        if red is None or smaller < MIN_CELL_OVER_RED * red:
            break
        zones, diameter = cut, smaller
    return diameter


def _group_diameter(nuc: np.ndarray, zones: np.ndarray) -> float | None:
    """Leukocyte diameter from the median stain area of the largest zones (a quarter of the largest or more)."""
    areas = ndi.sum_labels(nuc, zones, np.arange(1, zones.max() + 1))
    big = areas[areas >= 0.25 * areas.max()]
    if big.max() < 100:
        return None
    return float(CELL_OVER_NUCLEUS * 2 * np.sqrt(np.median(big) / np.pi))


def red_cell_diameter(image: np.ndarray, lab: np.ndarray, nuc: np.ndarray | None = None,
                      largest: float | None = None) -> float | None:
    """Typical red-cell diameter (pixels), by granulometry of what is darker than the background.

    Red cells touch and overlap, but an opening by a disk removes a cell only once the disk is wider
    than the cell, so the area lost per disk radius (the pattern spectrum) peaks at the red-cell radius.
    Cells are what is darker than an Otsu threshold on CIE L* outside the nuclear stain; holes
    (the pale centres of red cells) are filled.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB smear.
    lab : (H, W, 3) ndarray
        The image in CIE L*a*b*.
    nuc : (H, W) ndarray of bool, optional
        Its nuclear stain (:func:`nucleus_mask`), when the caller has it already.
    largest : float, optional
        Red cells are taken to be no wider than this (a leukocyte diameter); half the shorter image
        side when omitted. One distance transform of the central window (512 px or 6 x ``largest`` a
        side) is run per pixel of radius up to it.

    Returns
    -------
    float or None
        ``None`` when nothing but stain and background is found.
    """
    from skimage.filters import threshold_otsu

    if nuc is None:
        nuc = nucleus_mask(image, lab)
    if nuc.all():
        return None
    lightness = ndi.gaussian_filter(lab[..., 0], 1.0)
    cells = ndi.binary_fill_holes((lightness < threshold_otsu(lightness[~nuc])) & ~_dilate(nuc, 3))
    largest = largest or 0.5 * min(cells.shape)
    # red cells are everywhere: a central window of 512 px (or 6 leukocytes) a side holds enough of them, and
    # for red cells of 40 px radius or more every step-th pixel is enough
    h, w = cells.shape
    half = int(max(256, 3 * largest))
    cells = cells[max(0, h // 2 - half) : h // 2 + half, max(0, w // 2 - half) : w // 2 + half]
    step = max(1, int(largest // 80))
    cells = cells[::step, ::step]
    radii = np.arange(2, int(largest / (2 * step)) + 2)
    if len(radii) < 2 or not cells.any():
        return None
    depth = ndi.distance_transform_edt(cells)
    # opening by a disk of radius r: the pixels within r of a pixel deeper than r
    area = np.array([(ndi.distance_transform_edt(depth <= r) <= r).sum() for r in radii], float)
    lost = -np.diff(area)
    if lost.max() <= 0:
        return None
    return float(step * (2 * radii[np.argmax(lost)] + 1))


def split_touching(nuc: np.ndarray, zones: np.ndarray, diameter: float, min_peak: float = SPLIT_MIN_PEAK,
                   min_depth: float = SPLIT_MIN_DEPTH) -> np.ndarray:
    """Cut zones of nuclear stain that hold touching cells apart, by a distance-transform watershed.

    Touching cells whose cytoplasm stains blue meet in one blob of stain (a membrane line at most
    between them); the lobes of one nucleus are apart, or joined by a thin strand. So the stain is
    closed over membrane lines, and every peak of its distance transform at least ``min_peak *
    diameter`` deep and ``min_depth * diameter`` above the saddle to its neighbour seeds a cell. A blob
    with two or more seeds is cut between them, and its zone is shared among the pieces (each stain
    pixel of the zone to the nearest piece); blobs with one seed or none stay whole.

    Parameters
    ----------
    nuc : (H, W) ndarray of bool
        Nuclear stain.
    zones : (H, W) ndarray of int
        Connected zones around the stain (the lobes of a cell grouped), 0 outside.
    diameter : float
        Expected leukocyte diameter in pixels.
    min_peak, min_depth : float
        Seed depth, and its height over the saddle, as fractions of ``diameter``.

    Returns
    -------
    (H, W) ndarray of int32
        The zones, those with touching cells cut; numbered 1..N.
    """
    from skimage.morphology import reconstruction
    from skimage.segmentation import relabel_sequential, watershed

    blobs = ndi.binary_fill_holes(ndi.binary_closing(nuc, _disk(max(1, round(0.015 * diameter))), border_value=1))
    distance = ndi.distance_transform_edt(blobs)
    h = min_depth * diameter  # peaks standing h above their surroundings (an h-maxima transform)
    peaks = (distance - reconstruction(distance - h, distance) >= h - 1e-6) & (distance >= min_peak * diameter)
    # a peak is a ridge of pixels, touching diagonally at best: one seed for all within a few pixels
    seeds, n = ndi.label(_dilate(peaks, max(2, round(0.05 * diameter))) & blobs)
    if n < 2:
        return zones.astype(np.int32)
    blob_ids, _ = ndi.label(blobs)
    seeds_per_blob = np.bincount(ndi.maximum(blob_ids, seeds, np.arange(1, n + 1)).astype(int), minlength=blob_ids.max() + 1)
    keep = seeds_per_blob[blob_ids] >= 2
    cut = watershed(-distance, np.where(keep, seeds, 0), mask=keep)
    if cut.max() == 0:
        return zones.astype(np.int32)
    # the rest of a cut zone (lobes, pale stain) joins the nearest piece
    cut_zones = np.unique(zones[cut > 0])
    shared = np.isin(zones, cut_zones) & (zones > 0)
    nearest = ndi.distance_transform_edt(cut == 0, return_distances=False, return_indices=True)
    pieces = cut[nearest[0], nearest[1]]
    out = np.where(shared, pieces, np.where(zones > 0, zones + n, 0))
    return relabel_sequential(out)[0].astype(np.int32)


def stain_segment(image: np.ndarray, diameter: float | None = None, min_area_fraction: float = 0.15,
                  lab: np.ndarray | None = None, split: bool = False) -> np.ndarray:
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
    split : bool
        Cut nuclear groups of touching cells apart (:func:`split_touching`) before taking each
        cell's convex hull (used for the cellpose training masks; it may cut fat nuclear lobes).

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
    groups, n = ndi.label(_dilate(nuc, max(1, int(0.12 * diameter))))
    if split:
        groups = split_touching(nuc, groups, diameter)
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
    cells = _dilate(hulls > 0, rim)
    distance = ndi.distance_transform_edt(hulls == 0)
    return watershed(distance, hulls, mask=cells).astype(np.int32)


def grow_to_cytoplasm(image: np.ndarray, labels: np.ndarray, diameter: float, lab: np.ndarray | None = None,
                      reach: float = 0.3) -> np.ndarray:
    """Grow stain-based cell masks (:func:`stain_segment`) out to the edge of their pale cytoplasm.

    The rim of :func:`stain_segment` is a fixed width and stops short of pale cytoplasm (blasts, monocytes,
    reactive lymphocytes). Here each cell grows by a watershed of the L* and b* gradients from its mask, against
    markers of what is not a leukocyte: background (L* within 4 of the bright plasma between the cells), pixels
    over ``reach`` diameters from every cell, and red cells (the largest disk inside what is dark, outside the
    cells, around each centre at least 0.35 red-cell diameters deep). Appendages thinner than 0.2 diameters
    (crescents of red cells pressed against the cell) are then cut off. Used for segmenter training masks.

    Returns
    -------
    (H, W) ndarray of int32
        The grown cells, with the labels of ``labels``; each contains its input mask.
    """
    from skimage import filters
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    if lab is None:
        from skimage import color

        lab = color.rgb2lab(image)
    n = int(labels.max())
    if n == 0:
        return labels.astype(np.int32)
    lightness = ndi.gaussian_filter(lab[..., 0], 1.0)
    edges = filters.sobel(lightness) + filters.sobel(ndi.gaussian_filter(lab[..., 2], 1.0))
    plasma = np.percentile(lab[..., 0], 90)
    red = red_cell_diameter(image, lab) or 0.45 * diameter
    outside = (ndi.distance_transform_edt(labels == 0) > reach * diameter) | (lightness > plasma - 4)
    dark = (lightness < plasma - 8) & (labels == 0)
    depth = ndi.distance_transform_edt(dark)
    yy, xx = np.ogrid[: labels.shape[0], : labels.shape[1]]
    for r, c in peak_local_max(depth, min_distance=max(1, int(red / 3)), threshold_abs=0.35 * red):
        rad = depth[r, c] - 1.5  # most of that red cell
        r0, r1, c0, c1 = max(0, int(r - rad)), int(r + rad) + 1, max(0, int(c - rad)), int(c + rad) + 1
        outside[r0:r1, c0:c1] |= (yy[r0:r1] - r) ** 2 + (xx[:, c0:c1] - c) ** 2 <= rad * rad
    markers = np.where(ndi.binary_erosion(labels > 0, iterations=2), labels, 0)
    markers[outside & (labels == 0)] = n + 1
    grown = watershed(edges, markers)
    disk = _disk(max(1, int(0.1 * diameter)))
    out = np.zeros(labels.shape, np.int32)
    for k in range(1, n + 1):
        cell = ndi.binary_fill_holes(ndi.binary_opening(grown == k, disk) | (labels == k))
        pieces, m = ndi.label(cell)
        if m > 1:  # the piece holding the input mask
            cell = pieces == np.bincount(pieces[labels == k]).argmax()
        out[cell & (out == 0)] = k
    return out


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disk of ``radius`` (as ``_disk``), through the distance transform: fast for large disks."""
    if not mask.any():
        return mask.copy()
    return ndi.distance_transform_edt(~mask) <= radius


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius
