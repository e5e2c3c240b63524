"""Shared fixtures: real images (bundled samples, tests/data, ../shared when present) and real models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
SHARED = (TESTS.parent.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (CI has it; slow tests need it)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not here")
    return SHARED


@pytest.fixture(scope="session")
def bccd_image():
    from napari_leukemia.samples import load_sample

    return load_sample("bccd")


@pytest.fixture(scope="session")
def bccd_boxes():
    from napari_leukemia.core.boxes import read_voc_boxes

    return read_voc_boxes(DATA / "BloodImage_00023.xml")


@pytest.fixture(scope="session")
def deepapl_image():
    from napari_leukemia.samples import load_sample

    return load_sample("deepapl")


@pytest.fixture(scope="session")
def segmenter_path():
    """The shipped leukocyte cellpose model."""
    from napari_leukemia.core.segment import DEFAULT_SEGMENTER

    assert DEFAULT_SEGMENTER.is_file(), f"shipped segmenter missing: {DEFAULT_SEGMENTER}"
    return DEFAULT_SEGMENTER


@pytest.fixture(scope="session")
def classifier_path():
    """The shipped DenseNet201 classifier."""
    from napari_leukemia.core.model import DEFAULT_CLASSIFIER

    assert DEFAULT_CLASSIFIER.is_file(), f"shipped classifier missing: {DEFAULT_CLASSIFIER}"
    return DEFAULT_CLASSIFIER


@pytest.fixture(scope="session")
def classifier(classifier_path):
    from napari_leukemia.core.model import load_classifier

    return load_classifier(classifier_path, "cpu")


@pytest.fixture(scope="session")
def sample_cells(deepapl_image):
    """Crops of the DeepAPL sample's cells, segmented by the stain baseline (fast, deterministic)."""
    from napari_leukemia.core.config import CropConfig
    from napari_leukemia.core.preprocess import crop_cells
    from napari_leukemia.core.stain import stain_segment

    labels = stain_segment(deepapl_image)
    assert labels.max() >= 1
    return deepapl_image, labels, crop_cells(deepapl_image, labels, CropConfig(size=64))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def cell_dataset(tmp_path_factory, deepapl_image, bccd_image) -> Path:
    """A tiny class-folder dataset of real single-cell crops (64 px PNGs): ``leukemic/`` from the DeepAPL sample's
    blast, ``normal/`` from the BCCD sample's leukocyte, six turns and flips of each (every file its own group)."""
    from PIL import Image

    from napari_leukemia.core.config import CropConfig
    from napari_leukemia.core.preprocess import crop_cells
    from napari_leukemia.core.stain import stain_segment

    root = tmp_path_factory.mktemp("cells")
    for image, label in ((deepapl_image, "leukemic"), (bccd_image, "normal")):
        cell = crop_cells(image, stain_segment(image), CropConfig(size=64)).images[0]
        (root / label).mkdir()
        for k in range(6):
            turned = np.rot90(cell, k % 4)
            Image.fromarray(np.ascontiguousarray(turned[:, ::-1] if k >= 4 else turned)).save(root / label / f"{label}_{k}.png")
    return root


@pytest.fixture(scope="session")
def hand_cells(bccd_image):
    """Four cells on the BCCD field: its leukocyte (stain segmenter, label 1) and three discs drawn by hand (2-4)."""
    from napari_leukemia.core.stain import stain_segment

    labels = stain_segment(bccd_image)
    assert labels.max() == 1
    yy, xx = np.ogrid[: labels.shape[0], : labels.shape[1]]
    for cy, cx in ((60, 80), (400, 90), (420, 560)):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= 38**2) & (labels == 0)] = labels.max() + 1
    return labels


@pytest.fixture(scope="session")
def mosaic_smear():
    """Six real leukocytes, three of them blasts (``samples.mosaic_sample``): the image and ``truth(row, col)``."""
    from napari_leukemia.samples import mosaic_sample

    return mosaic_sample()


@pytest.fixture(scope="session")
def field_folder(tmp_path_factory, shared_data) -> Path:
    """A folder of real fields for folder runs: the two bundled samples, four DeepAPL fields (``split=test``) and a
    file that is not an image (``broken.jpg``)."""
    import csv
    import shutil

    from napari_leukemia.samples import sample_path

    folder = tmp_path_factory.mktemp("fields")
    for name in ("bccd", "deepapl"):
        shutil.copy(sample_path(name), folder / Path(sample_path(name)).name)
    with open(shared_data / "deepapl" / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"][::300][:4]
    for r in rows:
        shutil.copy(shared_data / "deepapl" / r["file"], folder / Path(r["file"]).name)
    (folder / "broken.jpg").write_bytes(b"not a JPEG at all")
    return folder
