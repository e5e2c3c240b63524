"""npe2 reader of whole slides: pyramidal TIFF / OME-TIFF / SVS / NDPI and OME-Zarr as one multiscale image layer.

Conservative on purpose. napari matches readers by file name alone, and its builtin reader claims every TIFF and
Zarr name: a reader of ours on ``*.tif`` would make napari ask which reader to use for every smear dropped on it.
So the manifest names only slide formats (``*.ome.tif``, ``*.ome.tiff``, ``*.ome.btf``, ``*.svs``, ``*.ndpi``,
``*.ptif``, ``*.ptiff``, ``*.ome.zarr``), where napari asks, and the builtin reader would decode the whole full
resolution level into memory; and of those, :func:`get_reader` takes only pyramidal files and OME-Zarr images
(:func:`~napari_leukemia.core.slide.is_pyramidal`). A pyramidal file by another name opens from the console:
``viewer.add_image(open_slide(path).levels, rgb=True, multiscale=True)``.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..core.slide import is_pyramidal, open_slide
from .layers import META_KEY

_SUFFIX = re.compile(r"(\.ome)?\.(tiff?|svs|ndpi|btf|tf8|tf2|zarr)$", re.IGNORECASE)


def get_reader(path):
    """npe2 reader hook: :func:`read_slide` for one pyramidal file or OME-Zarr image, else None."""
    if isinstance(path, list) or not is_pyramidal(path):
        return None
    return read_slide


def read_slide(path) -> list[tuple]:
    """Open a slide lazily as one multiscale RGB image layer.

    Returns
    -------
    list of (data, add_kwargs, "image")
        ``data`` is the list of the slide's levels, (Y, X, 3) dask arrays of uint8, largest first; the layer's
        ``metadata['napari_leukemia']`` holds the file's path, the levels' downsample factors and the pixel size
        in µm (or None).
    """
    path = Path(path[0] if isinstance(path, list) else path)
    slide = open_slide(path)
    meta = {"role": "slide", "path": str(path), "downsamples": slide.downsamples,
            "pixel_size_um": list(slide.pixel_size) if slide.pixel_size else None}
    kwargs = {"name": _SUFFIX.sub("", path.name.rstrip("/")), "rgb": True, "multiscale": True, "metadata": {META_KEY: meta}}
    return [(slide.levels, kwargs, "image")]
