"""Build a pyramidal OME-TIFF "slide": an N x N mosaic of real smear fields, written tile by tile.

    python scripts/make_slide.py --side 20000 --out /tmp/slide_20k.ome.tif
    python scripts/make_slide.py --side 40000 --source deepapl --blank 0.3 --out /tmp/slide_40k.ome.tif

For the whole-slide memory benchmarks (10k, 20k, 40k pixels a side; issue 19). The mosaic is a grid of cells, each
a real field: BCCD fields (../shared/data/bccd, 640 x 480 smears, whole) or DeepAPL fields (../shared/data/deepapl,
one CellaVision leukocyte each, centre-cropped to 352 x 352). A pool of ``--fields`` fields, drawn at random (seeded),
is decoded once with all its pyramid levels; each grid cell shows one of them, or the pool's background colour
with probability ``--blank`` (empty glass, for checking that background tiles are skipped).

Memory is bounded by the pool and one tile, never the mosaic: tifffile writes each level from an iterator of
tiles. Cell sizes are multiples of 32, so level k (k <= 5) of the mosaic is the grid of the fields shrunk 2**k
times by area averaging, exactly what shrinking the whole mosaic would give. Levels go in SubIFDs (OME-TIFF's
pyramid), as napari, QuPath and tifffile read them.

Beside the slide, ``<out>.json`` records the layout: the source, cell size, the pool's files (relative to the data
folder) and the grid of pool indices (-1: blank), so every cell's field (and its DeepAPL class or BCCD boxes) is
known.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile

#: Cell (field) size per source, (height, width): multiples of 2**MAX_LEVEL.
CELL = {"bccd": (480, 640), "deepapl": (352, 352)}
MAX_LEVEL = 5


def field_files(data: Path, source: str) -> list[Path]:
    """Every usable field of ``source`` under ``data``."""
    if source == "bccd":
        return sorted((data / "bccd" / "JPEGImages").glob("*.jpg"))
    with open(data / "deepapl" / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["decode_ok"] == "1"]
    return [data / "deepapl" / r["file"] for r in rows]


def load_pool(files: list[Path], cell: tuple[int, int], levels: int) -> list[list[np.ndarray]]:
    """Each file centre-cropped to ``cell`` as RGB uint8, with its ``levels`` pyramid levels (INTER_AREA halvings)."""
    pool = []
    for path in files:
        image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        (h, w), (ch, cw) = image.shape[:2], cell
        if h < ch or w < cw:
            raise SystemExit(f"{path}: {w} x {h} is smaller than the {cw} x {ch} cell")
        y, x = (h - ch) // 2, (w - cw) // 2
        pyramid = [np.ascontiguousarray(image[y : y + ch, x : x + cw])]
        for k in range(1, levels):
            pyramid.append(cv2.resize(pyramid[0], (cw >> k, ch >> k), interpolation=cv2.INTER_AREA))
        pool.append(pyramid)
    return pool


def background(pool: list[list[np.ndarray]]) -> np.ndarray:
    """The pool's glass colour: the median of each field's brightest quarter of pixels."""
    bright = []
    for pyramid in pool:
        px = pyramid[-1].reshape(-1, 3)
        bright.append(px[px.sum(1) >= np.quantile(px.sum(1), 0.75)])
    return np.median(np.concatenate(bright), axis=0).astype(np.uint8)


def level_tiles(grid, pool, blank, cell, level: int, shape, tile: int):
    """Yield the tiles of one level, row by row, each (tile, tile, 3) uint8 (zero beyond the edge)."""
    ch, cw = cell[0] >> level, cell[1] >> level
    empty = np.broadcast_to(blank, (ch, cw, 3))
    height, width = shape
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            out = np.zeros((tile, tile, 3), np.uint8)
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            for ci in range(y0 // ch, (y1 - 1) // ch + 1):
                ya, yb = max(y0, ci * ch), min(y1, (ci + 1) * ch)
                for cj in range(x0 // cw, (x1 - 1) // cw + 1):
                    xa, xb = max(x0, cj * cw), min(x1, (cj + 1) * cw)
                    k = grid[ci, cj]
                    src = empty if k < 0 else pool[k][level]
                    out[ya - y0 : yb - y0, xa - x0 : xb - x0] = src[ya - ci * ch : yb - ci * ch, xa - cj * cw : xb - cj * cw]
            yield out


def make_slide(out: Path, side: int, *, data: Path, source: str = "bccd", fields: int = 96, blank: float = 0.0,
               smear: float = 1.0, tile: int = 512, compression: str = "jpeg", pixel_size: float | None = None, seed: int = 0,
               workers: int = 1) -> dict:
    """Write the mosaic slide to ``out`` (and its layout to ``out + '.json'``); return the layout.

    Parameters
    ----------
    out : Path
        The .ome.tif to write.
    side : int
        Height and width of level 0 in pixels.
    data : Path
        The shared data folder (holding ``bccd/`` and ``deepapl/``).
    source : {"bccd", "deepapl"}
    fields : int
        Size of the pool of distinct fields.
    blank : float
        Probability that a cell is empty glass.
    smear : float
        Fraction of the grid's columns (from the left) that hold the smear; the rest is empty glass, as beside the
        smear of a scanned slide.
    tile : int
        TIFF tile size (a multiple of 16).
    compression : {"jpeg", "zlib", "none"}
    pixel_size : float, optional
        Micrometres per level-0 pixel, written as OME PhysicalSizeX/Y and resolution tags.
    seed : int
    workers : int
        Threads tifffile compresses tiles with.
    """
    cell = CELL[source]
    levels = 1
    while levels <= MAX_LEVEL and -(-side // 2**levels) >= 256:
        levels += 1
    rng = np.random.default_rng(seed)
    files = field_files(data, source)
    chosen = sorted(rng.choice(len(files), size=min(fields, len(files)), replace=False))
    pool = load_pool([files[i] for i in chosen], cell, levels)
    rows, cols = -(-side // cell[0]), -(-side // cell[1])
    grid = rng.integers(0, len(pool), (rows, cols)).astype(np.int32)
    grid[rng.random((rows, cols)) < blank] = -1
    grid[:, max(1, round(smear * cols)) :] = -1
    glass = background(pool)

    options = {"tile": (tile, tile), "photometric": "rgb", "dtype": np.uint8, "maxworkers": workers,
               "compression": None if compression == "none" else compression}
    if compression == "jpeg":
        options["compressionargs"] = {"level": 90}
    metadata = {"axes": "YXS", "Name": f"mosaic of {source} fields"}
    resolution = {}
    if pixel_size:
        metadata.update(PhysicalSizeX=pixel_size, PhysicalSizeY=pixel_size)
        resolution = {"resolution": (1e4 / pixel_size, 1e4 / pixel_size), "resolutionunit": "CENTIMETER"}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tifffile.TiffWriter(partial, bigtiff=True, ome=True) as tif:
        for level in range(levels):
            shape = (-(-side // 2**level),) * 2
            tiles = level_tiles(grid, pool, glass, cell, level, shape, tile)
            if level == 0:
                tif.write(tiles, shape=(*shape, 3), subifds=levels - 1, metadata=metadata, **resolution, **options)
            else:
                scaled = {"resolution": tuple(r / 2**level for r in resolution["resolution"]),
                          "resolutionunit": "CENTIMETER"} if resolution else {}
                tif.write(tiles, shape=(*shape, 3), subfiletype=1, metadata=None, **scaled, **options)
    partial.replace(out)
    layout = {"source": source, "side": side, "cell": list(cell), "levels": levels, "tile": tile,
              "compression": compression, "pixel_size_um": pixel_size, "seed": seed, "blank": blank, "smear": smear,
              "background": glass.tolist(), "fields": [str(files[i].relative_to(data)) for i in chosen],
              "grid": grid.tolist()}
    Path(f"{out}.json").write_text(json.dumps(layout))
    return layout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=10_000, help="height and width of the slide in pixels")
    ap.add_argument("--out", type=Path, required=True, help="the .ome.tif to write")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--source", choices=sorted(CELL), default="bccd")
    ap.add_argument("--fields", type=int, default=96, help="distinct fields in the pool (memory: ~1 MB each)")
    ap.add_argument("--blank", type=float, default=0.0, help="fraction of cells left as empty glass")
    ap.add_argument("--smear", type=float, default=1.0,
                    help="fraction of the columns holding the smear (the rest is empty glass)")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--compression", choices=("jpeg", "zlib", "none"), default="jpeg")
    ap.add_argument("--pixel-size", type=float, default=None, help="micrometres per pixel, written in the metadata")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="compression threads")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    layout = make_slide(args.out, args.side, data=args.data, source=args.source, fields=args.fields, blank=args.blank,
                        smear=args.smear, tile=args.tile, compression=args.compression, pixel_size=args.pixel_size,
                        seed=args.seed, workers=args.workers)
    size = args.out.stat().st_size / 2**20
    print(f"{args.out}: {args.side} x {args.side}, {layout['levels']} levels, {size:.1f} MiB, "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
