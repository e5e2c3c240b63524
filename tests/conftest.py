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
def mosaic_smear(bccd_image, deepapl_image):
    """A 2 x 3 mosaic of the two bundled real fields, turned and flipped: six leukocytes, three of them blasts.

    Returns the image and a function: (row, col) of a pixel -> the truth of its tile ("leukemic" or "normal").
    """
    h, w = bccd_image.shape[:2]
    blast = np.empty_like(bccd_image)
    blast[:] = np.median(deepapl_image.reshape(-1, 3), axis=0).astype(np.uint8)
    dh, dw = deepapl_image.shape[:2]
    blast[(h - dh) // 2 : (h - dh) // 2 + dh, (w - dw) // 2 : (w - dw) // 2 + dw] = deepapl_image
    tiles = [[bccd_image, blast, bccd_image[:, ::-1]], [blast[::-1], bccd_image[::-1], blast[::-1, ::-1]]]
    image = np.ascontiguousarray(np.vstack([np.hstack(row) for row in tiles]))

    def truth(row, col):
        return "leukemic" if (int(row) // h + int(col) // w) % 2 else "normal"

    return image, truth
