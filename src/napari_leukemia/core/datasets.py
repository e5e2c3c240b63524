"""Training datasets: folders of class sub-folders, CSV tables, or the DeepAPL manifest; splits by group."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import CropConfig, SegmentConfig

#: DeepAPL coarse labels that are leukaemic (see ../shared/data/deepapl/README.md).
DEEPAPL_LEUKEMIC = ("leukemic_blast", "leukemic_or_precursor")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset: its file, class, group (patient or slide) and given split (or "")."""

    path: Path
    label: str
    group: str
    split: str = ""


def read_dataset(source, *, deepapl_labels: str = "binary") -> list[Sample]:
    """Read a dataset description.

    Parameters
    ----------
    source : path
        A folder whose sub-folders are classes (each image its own group), a CSV with columns
        ``path,label[,group][,split]`` (paths relative to the CSV), or DeepAPL's ``manifest.csv``.
    deepapl_labels : {"binary", "cell_class"}
        For the DeepAPL manifest: leukemic/normal, or the pathologist's cell classes.
    """
    source = Path(source)
    if source.is_dir():
        samples = [Sample(f, d.name, f"{d.name}/{f.stem}") for d in sorted(source.iterdir()) if d.is_dir()
                   for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not samples:
            raise ValueError(f"{source}: no class sub-folders with images")
        return samples
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such dataset folder or CSV")
    with open(source, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{source}: the table is empty")
    columns = set(rows[0])
    root = source.parent
    if {"file", "patient_id", "cell_class", "coarse_label", "split"} <= columns:
        if deepapl_labels not in ("binary", "cell_class"):
            raise ValueError(f"deepapl_labels must be 'binary' or 'cell_class', got {deepapl_labels!r}")
        return [
            Sample(root / r["file"],
                   ("leukemic" if r["coarse_label"] in DEEPAPL_LEUKEMIC else "normal") if deepapl_labels == "binary"
                   else r["cell_class"], r["patient_id"], r["split"])
            for r in rows if r.get("duplicate_in_other_class", "0") != "1"
        ]
    if not {"path", "label"} <= columns:
        raise ValueError(f"{source}: needs columns path,label[,group][,split]; has {sorted(columns)}")
    return [Sample(root / r["path"], r["label"], r.get("group") or r["path"], r.get("split") or "") for r in rows]


def split_by_group(samples: list[Sample], fractions=(0.70, 0.15, 0.15), seed: int = 0) -> dict[str, list[Sample]]:
    """Train / val / test splits by group, never by image.

    A split given in the data is kept: ``test`` stays test; groups without a split are drawn into
    train/val/test by ``fractions`` (train/val only, renormalised, when a test split is given).
    """
    given_test = any(s.split == "test" for s in samples)
    out = {"train": [], "val": [], "test": [s for s in samples if s.split == "test"]}
    rest = [s for s in samples if s.split != "test"]
    groups = sorted({s.group for s in rest})
    rng = np.random.default_rng(seed)
    rng.shuffle(groups)
    f = np.asarray(fractions[:2] if given_test else fractions, float)
    f = f / f.sum()
    cuts = np.round(np.cumsum(f) * len(groups)).astype(int)
    names = ["train", "val"] if given_test else ["train", "val", "test"]
    where = {g: names[int(np.searchsorted(cuts, i, side="right"))] for i, g in enumerate(groups)}
    for s in rest:
        out[where[s.group]].append(s)
    return out


def crops_for(samples: list[Sample], crop: CropConfig, *, single_cells: bool = False,
              segment: SegmentConfig = SegmentConfig(), segmenter=None,
              progress: Callable[[int, int], None] | None = None):
    """Crop each sample's cell through the shared preprocessing.

    Whole fields are segmented and their centre cell is cropped; with ``single_cells`` the image is
    already one cell and the whole image is its mask. Unreadable images and fields without a cell are
    skipped and reported.

    Returns
    -------
    images : (N, S, S, 3) ndarray of uint8
    kept : list of Sample
        The samples the crops belong to, in order.
    skipped : list of str
        One message per skipped sample, naming its file.
    """
    from .io import ImageError, read_image
    from .preprocess import centre_cell, crop_cells
    from .segment import segment_leukocytes

    images, kept, skipped = [], [], []
    for i, s in enumerate(samples):
        try:
            image = read_image(s.path)
        except ImageError as err:
            skipped.append(str(err))
            continue
        if single_cells:
            labels = np.ones(image.shape[:2], np.int32)
        else:
            labels = segment_leukocytes(image, segment, model=segmenter)
        cell = centre_cell(labels)
        if cell == 0:
            skipped.append(f"{s.path}: no leukocyte found")
            continue
        images.append(crop_cells(image, labels, crop, ids=[cell]).images[0])
        kept.append(s)
        if progress:
            progress(i + 1, len(samples))
    empty = np.zeros((0, crop.size, crop.size, 3), np.uint8)
    return (np.stack(images) if images else empty), kept, skipped
