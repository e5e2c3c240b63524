"""Whole slides read lazily: pyramidal TIFF / OME-TIFF / SVS / NDPI (tifffile's zarr store), OME-Zarr, arrays.

A :class:`Slide` holds a slide's pyramid as dask arrays of shape ``(Y, X, 3)`` and dtype uint8, largest first;
nothing is decoded until a region is asked for (``read_region``) or a level is computed. Files are opened by
:func:`open_slide`; :func:`is_slide` tells, from the header alone, whether a file should be handled as a slide
(pyramidal, an OME-Zarr image, or larger than :data:`SLIDE_SIDE` on a side) rather than read whole with
:func:`napari_leukemia.core.io.read_image`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .io import ImageError

#: An image with a side longer than this (pixels) is a slide, read lazily, even when it has one level.
SLIDE_SIDE = 8000
#: File name endings :func:`open_slide` reads through tifffile.
TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf8", ".tf2")
#: Chunk size (pixels) of arrays given from the console that are not dask arrays already.
ARRAY_CHUNK = 2048
#: Micrometres per unit of the OME-Zarr axis units understood for the pixel size.
_UM_PER = {"micrometer": 1.0, "micron": 1.0, "µm": 1.0, "um": 1.0, "nanometer": 1e-3, "nm": 1e-3,
           "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "cm": 1e4, "meter": 1e6, "m": 1e6}


class SlideError(ImageError):
    """A slide that cannot be read or is not a colour smear; the message names the source and the problem."""


@dataclass
class Slide:
    """A slide's pyramid, read lazily.

    Attributes
    ----------
    levels : list of (Y, X, 3) dask arrays of uint8
        Level 0 is full resolution; each next level is smaller.
    downsamples : list of float
        Level 0's size over each level's (1.0 for level 0), the mean of the Y and X ratios.
    pixel_size : (float, float) or None
        Size of a level-0 pixel in micrometres (Y, X), when the file carries it.
    name : str
        The file (or ``"array"``), used in messages and as a layer name.
    source : str
        The path the slide was opened from ("" for arrays): workers that open their own copy use it.
    """

    levels: list
    downsamples: list[float]
    pixel_size: tuple[float, float] | None = None
    name: str = "array"
    source: str = ""
    _close: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of level 0 in pixels."""
        return tuple(int(n) for n in self.levels[0].shape[:2])

    def read_region(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Decode a rectangle of one level.

        Parameters
        ----------
        level : int
            Pyramid level (0: full resolution).
        y0, x0 : int
            Top-left corner, in that level's pixels.
        h, w : int
            Height and width; the rectangle is clipped to the level (a tile at the edge comes back smaller).

        Returns
        -------
        (h, w, 3) ndarray of uint8

        Raises
        ------
        SlideError
            If the level does not exist, or the rectangle has no pixel inside the level.
        """
        if not 0 <= level < len(self.levels):
            raise SlideError(f"{self.name}: no level {level} (the slide has {len(self.levels)})")
        arr = self.levels[level]
        height, width = arr.shape[:2]
        ya, xa, yb, xb = max(int(y0), 0), max(int(x0), 0), min(int(y0) + int(h), height), min(int(x0) + int(w), width)
        if h <= 0 or w <= 0 or ya >= yb or xa >= xb:
            raise SlideError(f"{self.name}: region y={y0}, x={x0}, {h} x {w} lies outside level {level} "
                             f"({height} x {width})")
        try:
            return np.ascontiguousarray(arr[ya:yb, xa:xb].compute(scheduler="synchronous"))
        except Exception as exc:  # a corrupt tile: name the file
            raise SlideError(f"{self.name}: cannot decode level {level} at y={ya}, x={xa}: {exc}") from exc

    def close(self) -> None:
        """Close the file (the arrays cannot be read afterwards)."""
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_slide(source, *, name: str | None = None) -> Slide:
    """Open a whole slide lazily.

    Parameters
    ----------
    source : str, Path, array or list of arrays
        A TIFF-based file (pyramidal or tiled TIFF, OME-TIFF, SVS, NDPI), an OME-Zarr image folder, or from the
        console a numpy / dask / zarr array ``(Y, X, 3)`` or ``(3, Y, X)`` (RGBA: alpha dropped), or a list of
        them, largest first (a napari multiscale layer's ``data``).
    name : str, optional
        Name for messages; default the file's name, or ``"array"``.

    Returns
    -------
    Slide
        Close it (or use it in a ``with`` block) when done with a file.

    Raises
    ------
    SlideError
        If the file is missing, unreadable or corrupt, or the image is not a 2-D colour (RGB) image: grayscale,
        several planes (Z, time), or a sample type other than unsigned integers.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or path.name
        if not path.exists():
            raise SlideError(f"{name}: no such file or folder ({path})")
        if path.is_dir() or path.suffix.lower() == ".zarr":
            return _open_ome_zarr(path, name)
        return _open_tiff(path, name)
    arrays = list(source) if isinstance(source, (list, tuple)) else [source]
    name = name or "array"
    if not arrays:
        raise SlideError(f"{name}: no levels given")
    levels = [_as_rgb_level(_as_dask(a), None, name) for a in arrays]
    return Slide(levels, _downsamples(levels), None, name)


def is_slide(path, *, side: int = SLIDE_SIDE) -> bool:
    """Whether ``path`` should be read lazily as a slide: an OME-Zarr image, a pyramidal TIFF-based file, or one
    with a side longer than ``side`` pixels. Reads the header only; False for anything it cannot read."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".zarr":
        return _ome_zarr_multiscales(path) is not None
    if not path.is_file() or not path.name.lower().endswith(TIFF_SUFFIXES):
        return False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = [n for n, axis in zip(series.shape, series.axes) if axis in "YX"]
            return len(series.levels) > 1 or max(shape, default=0) > side
    except Exception:
        return False


def is_pyramidal(path) -> bool:
    """Whether ``path`` is an OME-Zarr image or a TIFF-based file with more than one level (the files the napari
    reader claims). Reads the header only; False for anything it cannot read."""
    return is_slide(path, side=2**62)


# --- TIFF through tifffile's zarr store -----------------------------------------------------------------------


def _open_tiff(path: Path, name: str) -> Slide:
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise SlideError(f"{name}: not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    try:
        if not tif.series:
            raise SlideError(f"{name}: no image found in the TIFF (a corrupt or truncated file?)")
        series = tif.series[0]
        axes = series.axes
        store = series.aszarr()
        node = zarr.open(store, mode="r")
        if hasattr(node, "shape"):  # one level: the store is an array
            arrays = [node]
        else:
            arrays = [node[str(i)] for i in range(len(series.levels))]
        levels = [_as_rgb_level(_as_dask(a), axes, name) for a in arrays]
        pixel_size = _tiff_pixel_size(tif)
    except SlideError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise SlideError(f"{name}: cannot read the TIFF ({type(exc).__name__}: {exc})") from exc

    def close():
        store.close()
        tif.close()

    return Slide(levels, _downsamples(levels), pixel_size, name, str(path), close)


def _tiff_pixel_size(tif) -> tuple[float, float] | None:
    """Micrometres per pixel (Y, X) from OME-XML, an Aperio (SVS) description, or resolution tags in centimetres
    (NDPI and most scanners; inch units are ignored: 72 or 96 dpi is a writer's default, not a measurement)."""
    import tifffile

    if tif.is_ome:
        try:
            pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            pixels = (pixels[0] if isinstance(pixels, list) else pixels)["Pixels"]
            sizes = [pixels.get(f"PhysicalSize{a}") for a in "YX"]
            units = [pixels.get(f"PhysicalSize{a}Unit", "µm") for a in "YX"]
            if all(sizes) and all(u in _UM_PER for u in units):
                return tuple(float(s) * _UM_PER[u] for s, u in zip(sizes, units))
        except Exception:
            pass
    page = tif.pages.first
    mpp = re.search(r"\bMPP\s*=\s*([0-9.]+)", page.description or "") if tif.is_svs else None
    if mpp:
        return (float(mpp.group(1)),) * 2
    if 282 in page.tags and page.tags.valueof(296, default=2) == 3:
        x, y = page.get_resolution(unit="MICROMETER")
        if x > 0 and y > 0 and (x, y) != (1, 1):
            return (1 / y, 1 / x)
    return None


# --- OME-Zarr ----------------------------------------------------------------------------------------------------


def _ome_zarr_multiscales(path: Path) -> dict | None:
    """The first ``multiscales`` entry of an OME-Zarr image folder (NGFF 0.1-0.5), or None."""
    for meta in ("zarr.json", ".zattrs"):
        try:
            attrs = json.loads((Path(path) / meta).read_text())
        except (OSError, ValueError):
            continue
        attrs = attrs.get("attributes", attrs) if meta == "zarr.json" else attrs
        attrs = attrs.get("ome", attrs)
        multiscales = attrs.get("multiscales") if isinstance(attrs, dict) else None
        if isinstance(multiscales, list) and multiscales and multiscales[0].get("datasets"):
            return multiscales[0]
    return None


def _open_ome_zarr(path: Path, name: str) -> Slide:
    import zarr

    multiscales = _ome_zarr_multiscales(path)
    if multiscales is None:
        raise SlideError(f"{name}: not an OME-Zarr image (no 'multiscales' metadata in {path})")
    axes_meta = multiscales.get("axes", [])
    names = [a["name"] if isinstance(a, dict) else a for a in axes_meta]
    axes = "".join({"y": "Y", "x": "X", "c": "C"}.get(str(n).lower(), "Q") for n in names)
    try:
        group = zarr.open_group(str(path), mode="r")
        arrays = [group[d["path"]] for d in multiscales["datasets"]]
    except Exception as exc:
        raise SlideError(f"{name}: cannot open the OME-Zarr image ({type(exc).__name__}: {exc})") from exc
    if len(axes) != arrays[0].ndim:  # NGFF 0.1-0.3 without axes: the last three are taken as C, Y, X
        axes = "Q" * (arrays[0].ndim - 3) + "CYX"
    levels = [_as_rgb_level(_as_dask(a), axes, name) for a in arrays]
    return Slide(levels, _downsamples(levels), _ome_zarr_pixel_size(multiscales, names), name, str(path))


def _ome_zarr_pixel_size(multiscales: dict, names: list) -> tuple[float, float] | None:
    try:
        scale = next(t["scale"] for t in multiscales["datasets"][0]["coordinateTransformations"] if t["type"] == "scale")
        units = {a["name"]: a.get("unit") for a in multiscales["axes"] if isinstance(a, dict)}
        iy, ix = names.index("y"), names.index("x")
        if units.get("y") in _UM_PER and units.get("x") in _UM_PER:
            return (float(scale[iy]) * _UM_PER[units["y"]], float(scale[ix]) * _UM_PER[units["x"]])
    except (KeyError, ValueError, StopIteration, TypeError, IndexError):
        pass
    return None


# --- arrays ------------------------------------------------------------------------------------------------------


def _as_dask(array):
    import dask.array as da

    if isinstance(array, da.Array):
        return array
    chunks = getattr(array, "chunks", None)
    if isinstance(chunks, tuple) and all(isinstance(c, int) for c in chunks):  # a zarr array: keep its chunks
        return da.from_array(array, chunks=chunks)
    array = array if hasattr(array, "shape") and hasattr(array, "dtype") else np.asarray(array)
    return da.from_array(array, chunks=tuple(ARRAY_CHUNK if n > 4 else n for n in array.shape))


def _as_rgb_level(arr, axes: str | None, name: str):
    """A level as (Y, X, 3) uint8: singleton axes dropped, the colour axis ('S' or 'C') last, alpha dropped,
    unsigned integers wider than 8 bits scaled by their type's maximum."""
    if axes is None:  # console arrays: (Y, X, C) or (C, Y, X)
        if arr.ndim == 3 and arr.shape[-1] not in (3, 4) and arr.shape[0] in (3, 4):
            axes = "CYX"
        else:
            axes = "YXC"[: arr.ndim] if arr.ndim <= 3 else "Q" * (arr.ndim - 3) + "YXC"
    axes = axes.replace("S", "C")
    if len(axes) != arr.ndim:
        raise SlideError(f"{name}: axes {axes!r} do not match the array's shape {arr.shape}")
    keep = [i for i, a in enumerate(axes) if a in "YXC" or arr.shape[i] != 1]
    extra = [f"{axes[i]}={arr.shape[i]}" for i in keep if axes[i] not in "YXC"]
    if extra:
        raise SlideError(f"{name}: a 2-D colour image is needed, this one has more planes ({', '.join(extra)})")
    arr = arr[tuple(slice(None) if i in keep else 0 for i in range(arr.ndim))]
    axes = "".join(axes[i] for i in keep)
    colours = arr.shape[axes.index("C")] if "C" in axes else 1
    if colours not in (3, 4) or sorted(axes) != ["C", "X", "Y"]:
        raise SlideError(f"{name}: grayscale or not a colour image (axes {axes}, shape {tuple(arr.shape)}); the "
                         "analysis needs an RGB Wright-Giemsa / MGG stained smear")
    arr = arr.transpose([axes.index(a) for a in "YXC"])[..., :3]
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind != "u":
        raise SlideError(f"{name}: samples of type {arr.dtype} are not supported for slides (unsigned integers are)")
    scale = 255 / np.iinfo(arr.dtype).max
    return (arr * scale + 0.5).astype(np.uint8)


def _downsamples(levels) -> list[float]:
    h0, w0 = levels[0].shape[:2]
    return [float((h0 / lv.shape[0] + w0 / lv.shape[1]) / 2) for lv in levels]
