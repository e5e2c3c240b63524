"""Bundled sample smears (no network): one BCCD field and one DeepAPL blast field."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
SAMPLES = {
    "bccd": ("bccd_smear.jpg", "BCCD smear (normal blood)"),
    "deepapl": ("deepapl_blast.jpg", "DeepAPL field (blast)"),
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
