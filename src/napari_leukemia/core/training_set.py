"""Corrected cells as a training set: PNG crops through the classifier's own preprocessing plus ``dataset.csv``.

Research use only: not a diagnostic device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import CropConfig
from .io import as_rgb8, atomic_path, write_csv
from .review import EXCLUDE, ReviewError, image_sha256, with_annotations

DATASET_CSV = "dataset.csv"
DATASET_COLUMNS = ("path", "label", "group", "source_image", "source_sha256", "cell_id", "margin")

@dataclass
class Export:
    """What :func:`export_training_set` wrote: the CSV, counts, and the cells it left out (with reasons)."""

    csv: Path
    added: int
    replaced: int
    removed: int
    skipped: list[str]


def export_training_set(folder, image, labels, cells, crop: CropConfig, *, source_image: str, group: str = "",
                        classes=None, include_confirmed: bool = True, red_cell_px: float | None = None) -> Export:
    """Add a smear's hand-called cells to a training set: PNG crops plus ``dataset.csv``.

    Each crop is the classifier's own input for the cell: :func:`~.preprocess.crop_cells` with its ``crop``
    settings, context margin included (recorded in the ``margin`` column, so that single-cell training cuts it
    exactly as at inference; see :func:`~.datasets.crops_for`). ``dataset.csv`` has columns
    :data:`DATASET_COLUMNS` (paths relative to it) and reads with :func:`~.datasets.read_dataset`. Re-exporting
    a cell (same image sha256 and cell id) replaces its row and crop; cells now called :data:`EXCLUDE` are removed from the set.

    Parameters
    ----------
    folder : path
        The dataset folder (created if needed); crops go to ``folder/crops/``.
    image, labels, cells
        The smear, its cells and their table with the annotation columns.
    crop : CropConfig
        The classifier's crop settings.
    source_image : str
        Image file or layer name, recorded per row; its stem is the default ``group``.
    group : str
        Patient or slide id (cells of a group stay in one split when training).
    classes : sequence of str, optional
        Valid class names (default: the categories of ``predicted_class``).
    include_confirmed : bool
        Also export cells whose manual call agrees with the prediction (else only corrections).
    red_cell_px : float, optional
        The red-cell diameter the analysis used, for fixed-window crops (measured when omitted).
    """
    import csv

    from PIL import Image

    from .preprocess import crop_cells, label_ids

    folder, csv_path = Path(folder), Path(folder) / DATASET_CSV
    image = as_rgb8(image, source_image)
    sha = image_sha256(image)
    group = group.strip() or Path(source_image).stem
    cells = with_annotations(cells)
    classes = list(classes if classes is not None else cells["predicted_class"].astype("category").cat.categories)
    manual = cells["annotation"]
    chosen = manual.isin(classes) & (include_confirmed | (manual != cells["predicted_class"].astype(str)))
    present = set(np.unique(labels).tolist())
    skipped = [f"cell {i}: no mask in the labels (press Update)" for i in cells.loc[chosen, "label"] if i not in present]
    chosen &= cells["label"].isin(present)
    excluded = set(cells.loc[manual == EXCLUDE, "label"].astype(int).astype(str))

    fieldnames, rows = list(DATASET_COLUMNS), []
    if csv_path.exists():
        try:
            with open(csv_path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                rows, fieldnames = list(reader), list(reader.fieldnames or [])
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise ReviewError(f"{csv_path}: cannot be read as a dataset table ({err})") from err
        if not {"path", "label"} <= set(fieldnames):
            raise ReviewError(f"{csv_path}: not a dataset table (needs columns path,label; has {fieldnames})")
        fieldnames += [c for c in DATASET_COLUMNS if c not in fieldnames]

    ids = cells.loc[chosen, "label"].to_numpy(int)
    new_rows = []
    label_ids(labels, "cells layer")  # ids beyond int32 are refused, never wrapped
    crops = crop_cells(image, np.asarray(labels).astype(np.int32, copy=False), crop, ids=ids, red_cell_px=red_cell_px)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source_image).stem) or "image"
    for cell, picture, call in zip(crops.labels, crops.images, manual[chosen]):
        rel = f"crops/{stem}_{sha[:12]}_cell{int(cell)}.png"
        with atomic_path(folder / rel) as tmp:
            Image.fromarray(picture).save(tmp, format="PNG")
        new_rows.append({"path": rel, "label": call, "group": group, "source_image": str(source_image),
                         "source_sha256": sha, "cell_id": str(int(cell)), "margin": f"{crop.margin:g}"})
    new_keys = {(sha, r["cell_id"]) for r in new_rows}
    key = lambda r: (r.get("source_sha256", ""), r.get("cell_id", ""))  # noqa: E731
    replaced = sum(key(r) in new_keys for r in rows)
    dropped = [r for r in rows if r.get("source_sha256") == sha and r.get("cell_id") in excluded]
    rows = [r for r in rows if key(r) not in new_keys and r not in dropped] + new_rows
    write_csv(csv_path, rows, fieldnames)
    for r in dropped:  # only crops this function wrote
        if r["path"].startswith("crops/"):
            (folder / r["path"]).unlink(missing_ok=True)
    return Export(csv=csv_path, added=len(new_rows) - replaced, replaced=replaced, removed=len(dropped), skipped=skipped)
