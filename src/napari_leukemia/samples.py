"""Bundled sample smears (no network): one BCCD field and one DeepAPL blast field."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
#: name -> (file, layer name). Layer names are short: the result layers add " p(leukemic)" and " Grad-CAM" to them,
#: and napari's layer list shows about 30 characters (the old names made 37).
SAMPLES = {
    "bccd": ("bccd_smear.jpg", "BCCD normal"),
    "deepapl": ("deepapl_blast.jpg", "DeepAPL blast"),
}


def sample_path(name: str) -> Path:
    """Path of a bundled sample: ``"bccd"`` or ``"deepapl"``."""
    if name not in SAMPLES:
        raise KeyError(f"no sample {name!r}; choose one of {sorted(SAMPLES)}")
    return DATA / SAMPLES[name][0]


def load_sample(name: str = "bccd"):
    """A bundled sample as an RGB uint8 array."""
    from .core.io import read_image

    return read_image(sample_path(name))


def _layer(name):
    return [(load_sample(name), {"name": SAMPLES[name][1], "rgb": True})]


def bccd_sample():
    """napari sample-data hook: BCCD smear."""
    return _layer("bccd")


def deepapl_sample():
    """napari sample-data hook: DeepAPL blast field."""
    return _layer("deepapl")


def mosaic_layer():
    """napari sample-data hook: the six-leukocyte mosaic of :func:`mosaic_sample`."""
    return [(mosaic_sample()[0], {"name": "6-cell mosaic", "rgb": True})]


def mosaic_sample():
    """A 2 x 3 mosaic of both bundled fields, turned and flipped: six leukocytes, three of them blasts.

    For trying the review loop (and testing it) on more than one cell. Returns the RGB image and a function
    ``truth(row, col) -> "leukemic" | "normal"``: the class of the leukocyte of the tile holding that pixel.
    """
    import numpy as np

    bccd, deepapl = load_sample("bccd"), load_sample("deepapl")
    h, w = bccd.shape[:2]
    blast = np.empty_like(bccd)  # the smaller DeepAPL field, centred on its own background colour
    blast[:] = np.median(deepapl.reshape(-1, 3), axis=0).astype(np.uint8)
    dh, dw = deepapl.shape[:2]
    blast[(h - dh) // 2 : (h - dh) // 2 + dh, (w - dw) // 2 : (w - dw) // 2 + dw] = deepapl
    tiles = [[bccd, blast, bccd[:, ::-1]], [blast[::-1], bccd[::-1], blast[::-1, ::-1]]]
    image = np.ascontiguousarray(np.vstack([np.hstack(row) for row in tiles]))

    def truth(row, col) -> str:
        return "leukemic" if (int(row) // h + int(col) // w) % 2 else "normal"

    return image, truth
