"""Large images and slides segmented tile by tile: tile geometry, the diameter estimated on tiles, and the seam rule.

Each tile is segmented with a margin and keeps the cells whose box centre lies inside it, so a cell crossing a seam
is found once, whole (:func:`segment_window`, the step of every tiled segmentation: :func:`iter_segment_tiled` for an
image in memory, :mod:`.slide_analysis` for a slide read lazily).
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from .config import SegmentConfig
from .events import Event
from .segment import check_diameter, load_segmenter, segment_at

#: How many tiles :func:`segment_tiled` estimates the leukocyte diameter on (each estimate takes about a second).
DIAMETER_TILES = 9


def segment_tiled(image: np.ndarray, cfg: SegmentConfig = SegmentConfig(), *, model=None, device: str = "auto",
                  progress=None) -> np.ndarray:
    """Segment a large image in tiles (:func:`iter_segment_tiled` run to its end); ``progress(done, total)`` after
    each tile."""
    from . import drain

    on_event = None if progress is None else (lambda e: progress(e.done, e.total))
    return drain(iter_segment_tiled(image, cfg, model=model, device=device), on_event)


def iter_segment_tiled(image: np.ndarray, cfg: SegmentConfig = SegmentConfig(), *, model=None, device: str = "auto"
                       ) -> Generator[Event, None, np.ndarray]:
    """Segment a large image in tiles of ``cfg.tile_size`` with bounded memory, step by step.

    Each tile is segmented with a margin of ``cfg.tile_margin`` leukocyte diameters and keeps the
    cells whose centre lies inside it, so a cell crossing a seam is found whole, once. The diameter,
    unless given, is the median of the stain estimates of up to ``DIAMETER_TILES`` tiles spread over the image
    (at half resolution). Yields an :class:`~.events.Event` ``"segment"`` (tiles done of total) after each tile
    (a caller may stop between tiles) and returns the ``(H, W)`` int32 labels.
    """
    h, w = image.shape[:2]
    cores = tile_cores((h, w), cfg.tile_size)
    diameter = cfg.diameter
    if diameter is None:
        diameter = yield from iter_diameter_on_tiles(lambda r0, r1, c0, c1: image[r0:r1, c0:c1], cores)
        if diameter is None:
            return np.zeros((h, w), np.int32)
    check_diameter(diameter, estimated=cfg.diameter is None)
    if cfg.method == "cellpose":
        model = model or load_segmenter(None, device)
    margin = tile_margin_px(cfg, diameter)
    out = np.zeros((h, w), np.int32)
    n = 0
    for i, core in enumerate(cores):
        R0, R1, C0, C1 = tile_window(core, margin, (h, w))
        n = segment_window(image[R0:R1, C0:C1], out[R0:R1, C0:C1], (R0, C0), core, diameter, cfg, model, n)
        yield Event("segment", i + 1, len(cores), f"tile {i + 1} of {len(cores)}")
    return out


def tile_cores(shape, step: int) -> list[tuple[int, int, int, int]]:
    """The tiles of an image of ``shape``, row by row: ``(r0, r1, c0, c1)`` cores of ``step`` px (less at the edges)."""
    h, w = shape[:2]
    return [(r, min(r + step, h), c, min(c + step, w)) for r in range(0, h, step) for c in range(0, w, step)]


def tile_margin_px(cfg: SegmentConfig, diameter: float) -> int:
    """The margin (pixels) read around each tile core: ``cfg.tile_margin`` leukocyte diameters."""
    return int(np.ceil(cfg.tile_margin * diameter))


def tile_window(core, margin: int, shape) -> tuple[int, int, int, int]:
    """A tile core grown by ``margin`` on each side, clipped to the image: ``(R0, R1, C0, C1)``."""
    (r0, r1, c0, c1), (h, w) = core, shape[:2]
    return max(r0 - margin, 0), min(r1 + margin, h), max(c0 - margin, 0), min(c1 + margin, w)


def iter_diameter_on_tiles(read, cores) -> Generator[Event, None, float | None]:
    """The median of the stain estimates of up to ``DIAMETER_TILES`` of ``cores`` spread over the list, each read by
    ``read(r0, r1, c0, c1)`` at full resolution and estimated at half, step by step: an :class:`~.events.Event`
    ``"diameter"`` after each tile (a caller may stop there). Returns ``None`` when no tile holds nuclear stain."""
    import cv2

    from .stain import estimate_diameter

    estimates = []
    chosen = cores[:: -(-len(cores) // DIAMETER_TILES)] if cores else []
    for i, core in enumerate(chosen):
        tile = read(*core)
        h, w = tile.shape[:2]
        half = cv2.resize(tile, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA)
        d = estimate_diameter(half)
        if d is not None:
            estimates.append(2 * d)
        yield Event("diameter", i + 1, len(chosen), f"estimating the leukocyte diameter: tile {i + 1} of {len(chosen)}")
    return float(np.median(estimates)) if estimates else None


def segment_window(tile: np.ndarray, out: np.ndarray, origin, core, diameter: float, cfg: SegmentConfig, model,
                   n: int) -> int:
    """Segment one tile read with its margin (``tile``: the pixels of :func:`tile_window`, origin ``(R0, C0)``) and
    paste into ``out`` (the window's labels so far, (h, w) int32, changed in place) its cells whose box centre lies in
    ``core`` (image coordinates): the seam rule, so a cell crossing a seam is found once, whole. New cells take the
    free pixels with ids ``n + 1, n + 2, ...``; returns the last id. The step of every tiled segmentation."""
    from skimage import color

    R0, C0 = origin
    r0, r1, c0, c1 = core
    labels = segment_at(tile, color.rgb2lab(tile), diameter, cfg, model)
    return _paste_centred(out, labels, (r0 - R0, r1 - R0, c0 - C0, c1 - C0), n)


def _paste_centred(out: np.ndarray, labels: np.ndarray, core, n: int) -> int:
    """Copy into ``out`` the cells of ``labels`` (same frame) whose box centre lies in ``core``; returns the last id."""
    from scipy import ndimage as ndi

    r0, r1, c0, c1 = core
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None or not (r0 <= (sl[0].start + sl[0].stop - 1) / 2 < r1 and c0 <= (sl[1].start + sl[1].stop - 1) / 2 < c1):
            continue
        free = (labels[sl] == k) & (out[sl] == 0)
        if free.any():
            n += 1
            out[sl][free] = n
    return n
