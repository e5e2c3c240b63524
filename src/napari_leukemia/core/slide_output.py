"""The OME-Zarr result of a slide analysis (``cells.ome.zarr``, NGFF 0.4 in zarr format 2), written without an
OME-Zarr library: the metadata is plain JSON (``.zattrs``), written atomically.

::

    cells.ome.zarr/
      .zattrs            multiscales: the image "p_leukemic", one level at 1/PMAP_DOWNSAMPLE resolution
      0/                 (Y/16, X/16) float32
      labels/.zattrs     {"labels": ["cells"]}
      labels/cells/      multiscales: levels 0..LABEL_LEVELS-1 (downsampled 1, 2, 4, ... times), image-label
        0/ 1/ ...        (Y, X) int32 ... (level 0 written tile by tile during the analysis)

Each level's ``coordinateTransformations`` scale is its downsample (times the pixel size in micrometres when the
slide carries it), so napari-ome-zarr and other NGFF readers overlay the labels and the map on the slide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import write_json

NGFF_VERSION = "0.4"
#: The probability map's downsample from the slide's full resolution.
PMAP_DOWNSAMPLE = 16
#: Levels of the labels pyramid (downsampled 1, 2, 4, 8, 16 times).
LABEL_LEVELS = 5
#: Chunk side of every array (pixels).
CHUNK = 512


def _multiscale(name: str, scales: list[float], pixel_size) -> dict:
    unit = {"unit": "micrometer"} if pixel_size else {}
    py, px = pixel_size or (1.0, 1.0)
    return {
        "version": NGFF_VERSION,
        "name": name,
        "axes": [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
        "datasets": [{"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [py * s, px * s]}]}
                     for k, s in enumerate(scales)],
    }


def create_result_zarr(path, shape, pixel_size=None) -> None:
    """Create the empty arrays and the NGFF metadata of ``cells.ome.zarr`` for a slide of ``shape`` (H, W)."""
    import zarr

    path = Path(path)
    h, w = shape
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    small = (-(-h // PMAP_DOWNSAMPLE), -(-w // PMAP_DOWNSAMPLE))
    group.create_array("0", shape=small, chunks=(CHUNK, CHUNK), dtype="float32", fill_value=0)
    for k in range(LABEL_LEVELS):
        group.create_array(f"labels/cells/{k}", shape=(-(-h // 2**k), -(-w // 2**k)), chunks=(CHUNK, CHUNK),
                           dtype="int32", fill_value=0)
    write_json(path / ".zattrs", {"multiscales": [_multiscale("p_leukemic", [PMAP_DOWNSAMPLE], pixel_size)]})
    write_json(path / "labels" / ".zattrs", {"labels": ["cells"]})
    write_json(path / "labels" / "cells" / ".zattrs", {
        "multiscales": [_multiscale("cells", [2**k for k in range(LABEL_LEVELS)], pixel_size)],
        "image-label": {"version": NGFF_VERSION, "source": {"image": "../../"}},
    })


def finish_result_zarr(path, cells_csv, shape, block: int) -> None:
    """After the last tile: the coarser label levels, the probability map and each cell's properties.

    Reads level 0 back in blocks of about ``block`` pixels a side (a multiple of ``2**(LABEL_LEVELS-1)`` and of
    :data:`PMAP_DOWNSAMPLE`), so memory stays bounded; the probability map is each cell's ``p_leukemic`` painted
    over its mask, averaged over ``PMAP_DOWNSAMPLE`` x ``PMAP_DOWNSAMPLE`` blocks (0 where there is no cell).
    Running it again gives the same arrays (a resumed run may).
    """
    import json

    import pandas as pd
    import zarr

    path = Path(path)
    group = zarr.open_group(str(path), mode="r+")
    levels = [group[f"labels/cells/{k}"] for k in range(LABEL_LEVELS)]
    pmap = group["0"]
    has_rows = Path(cells_csv).is_file() and Path(cells_csv).stat().st_size
    cells = pd.read_csv(cells_csv) if has_rows else pd.DataFrame({"label": [], "p_leukemic": [], "predicted_class": []})
    ids = cells["label"].to_numpy(np.int64)
    order = np.argsort(ids)
    ids, p = ids[order], cells["p_leukemic"].to_numpy(np.float32)[order]
    step = max(PMAP_DOWNSAMPLE, 2 ** (LABEL_LEVELS - 1))
    block = max(step, block // step * step)
    h, w = shape
    for r in range(0, h, block):
        for c in range(0, w, block):
            lab = np.asarray(levels[0][r : r + block, c : c + block])
            for k in range(1, LABEL_LEVELS):
                f = 2**k
                levels[k][r // f : r // f + -(-lab.shape[0] // f), c // f : c // f + -(-lab.shape[1] // f)] = lab[::f, ::f]
            painted = np.zeros(lab.shape, np.float32)
            if len(ids):
                where = np.clip(np.searchsorted(ids, lab), 0, len(ids) - 1)
                painted = np.where(ids[where] == lab, p[where], 0).astype(np.float32)
            pmap[r // PMAP_DOWNSAMPLE : (r + lab.shape[0] - 1) // PMAP_DOWNSAMPLE + 1,
                 c // PMAP_DOWNSAMPLE : (c + lab.shape[1] - 1) // PMAP_DOWNSAMPLE + 1] = _block_mean(painted)
    attrs_path = path / "labels" / "cells" / ".zattrs"
    attrs = json.loads(attrs_path.read_text())
    attrs["image-label"]["properties"] = [
        {"label-value": int(row.label), "class": str(row.predicted_class), "p_leukemic": round(float(row.p_leukemic), 6)}
        for row in cells.itertuples()]
    write_json(attrs_path, attrs)


def _block_mean(image: np.ndarray) -> np.ndarray:
    """Mean of each ``PMAP_DOWNSAMPLE`` square block (blocks cut by the edge: the mean of their pixels)."""
    d = PMAP_DOWNSAMPLE
    h, w = image.shape
    H, W = -(-h // d), -(-w // d)
    padded = np.zeros((H * d, W * d), np.float32)
    padded[:h, :w] = image
    counts = np.zeros((H * d, W * d), np.float32)
    counts[:h, :w] = 1
    return padded.reshape(H, d, W, d).sum((1, 3)) / counts.reshape(H, d, W, d).sum((1, 3))
