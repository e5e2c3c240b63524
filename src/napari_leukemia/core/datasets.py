"""Training datasets: folders of class sub-folders, CSV tables, or the DeepAPL manifest; splits by group."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DEEPAPL_LABELS, SPLIT_FRACTIONS, SPLITS, CropConfig, SegmentConfig

#: DeepAPL cell classes grouped into the cell types of the cell-type classifier: classes with fewer than about
#: 100 training cells join their nearest relatives (band with segmented neutrophils, promonocytes with
#: promyelocytes, myelocytes with metamyelocytes, basophils with plasma cells).
DEEPAPL_CELL_TYPES = {
    "blast_no_lineage_spec": "blast",
    "promyelocyte": "promyelocyte_or_promonocyte",
    "promonocyte": "promyelocyte_or_promonocyte",
    "lymphocyte": "lymphocyte",
    "lymphocyte_variant": "lymphocyte_variant",
    "neutrophil_segmented": "neutrophil",
    "neutrophil_band": "neutrophil",
    "monocyte": "monocyte",
    "myelocyte": "immature_granulocyte",
    "metamyelocyte": "immature_granulocyte",
    "eosinophil": "eosinophil",
    "basophil": "basophil_or_plasma_cell",
    "plasma_cell": "basophil_or_plasma_cell",
}
#: Labels of immature granulocytes (DeepAPL cell classes and cell types): the normal cells most like blasts and
#: promyelocytes, scored apart by :func:`~.scoring.score_cells` (the hard pair).
IMMATURE_GRANULOCYTES = ("myelocyte", "metamyelocyte", "immature_granulocyte")
#: Red-cell diameter of DeepAPL's CellaVision DM96 fields in pixels: the median of
#: :func:`~.preprocess.measure_red_cells` over 120 random fields (quartiles 66 and 74; single fields hold
#: too few red cells to measure each alone). One scanner, so one scale for fixed-window crops.
DEEPAPL_RED_CELL_PX = 70.0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def image_files(folder) -> list[Path]:
    """The image files (:data:`IMAGE_SUFFIXES`) directly in ``folder``, sorted."""
    return sorted(f for f in Path(folder).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class Sample:
    """One image of a dataset: its file, class, group (patient or slide), given split (or ""), whether it is a
    single-cell crop already (not a field to segment), and the context ``margin`` such a crop holds around the
    cell's box (as a fraction of the box side, like :attr:`~.config.CropConfig.margin`; 0: cut at the cell), and
    the red-cell diameter of its image in pixels where known (fixed-window crops; else measured); ``stratum``: what
    its group's cross-validation folds are balanced by (DeepAPL: the patient's diagnosis), and ``detail``: a finer
    label reported apart (DeepAPL: the cell class behind a binary label)."""

    path: Path
    label: str
    group: str
    split: str = ""
    single_cell: bool = False
    margin: float = 0.0
    red_cell_px: float | None = None
    stratum: str = ""
    detail: str = ""


def read_dataset(source, *, deepapl_labels: str = "binary") -> list[Sample]:
    """Read a dataset description.

    Parameters
    ----------
    source : path
        A folder whose sub-folders are classes (each image its own group), a CSV with columns
        ``path,label[,group][,split][,margin][,red_cell_px][,stratum][,detail]`` (paths relative to the CSV), or DeepAPL's
        ``manifest.csv``.
    deepapl_labels : {"binary", "cell_class", "cell_type"}
        For the DeepAPL manifest: blast equivalents (WHO, the manifest's ``blast_equivalent``: myeloblasts,
        promonocytes, promyelocytes of APL patients) as ``leukemic`` against the rest as ``normal``, the
        pathologist's cell classes, or those classes grouped into :data:`DEEPAPL_CELL_TYPES`.
    """
    source = Path(source)
    if source.is_dir():
        folders = [d for d in sorted(source.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        files = {d: [f for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES] for d in folders}
        samples = [Sample(f, d.name, f"{d.name}/{f.stem}") for d in folders for f in files[d]]
        if not samples:
            raise ValueError(f"{source}: no class sub-folders with images ({' '.join(IMAGE_SUFFIXES)})")
        empty = [d.name for d in folders if not files[d]]
        if empty:
            raise ValueError(f"{source}: class folder(s) {', '.join(empty)} hold no images; "
                             "add images or remove the folder")
        return samples
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such dataset folder or CSV")
    try:  # utf-8-sig: spreadsheets' "CSV UTF-8" starts with a byte-order mark
        with open(source, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        text = "\x00"
    if "\x00" in text:
        raise ValueError(f"{source}: not a UTF-8 text table (a binary file such as an image, or text in another "
                         "encoding); give a CSV table saved as UTF-8")
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise ValueError(f"{source}: not a readable CSV table ({err})") from err
    if not rows:
        raise ValueError(f"{source}: the table is empty")
    columns = set(rows[0])
    root = source.parent
    if {"file", "patient_id", "cell_class", "coarse_label", "split"} <= columns:
        if deepapl_labels not in DEEPAPL_LABELS:
            raise ValueError(f"deepapl_labels must be one of {DEEPAPL_LABELS}, got {deepapl_labels!r}")
        unknown = sorted({r["cell_class"] for r in rows} - set(DEEPAPL_CELL_TYPES))
        if deepapl_labels == "cell_type" and unknown:
            raise ValueError(f"{source}: cell classes {unknown} have no cell type (DEEPAPL_CELL_TYPES)")

        if deepapl_labels == "binary" and "blast_equivalent" not in columns:
            raise ValueError(f"{source}: no blast_equivalent column; this is an older DeepAPL manifest, whose "
                             "leukaemic labels counted the promyelocytes of non-APL AML patients (not blast "
                             "equivalents). Use the current manifest")
        bad = sorted({r["blast_equivalent"] for r in rows} - {"0", "1"}) if "blast_equivalent" in columns else []
        if bad:
            raise ValueError(f"{source}: blast_equivalent must be 0 or 1, found {bad[:5]}")

        def label(r):
            if deepapl_labels == "binary":  # WHO blast equivalents (the manifest's column) against the rest
                return "leukemic" if r["blast_equivalent"] == "1" else "normal"
            return r["cell_class"] if deepapl_labels == "cell_class" else DEEPAPL_CELL_TYPES[r["cell_class"]]

        return [Sample(root / r["file"], label(r), r["patient_id"], r["split"], red_cell_px=DEEPAPL_RED_CELL_PX,
                       stratum=r["diagnosis"], detail=r["cell_class"])
                for r in rows if r.get("duplicate_in_other_class", "0") != "1"]
    if columns == {"file", "cell_class", "subclass_code"}:  # PBC (another hospital's normal cells, no donor IDs)
        return _pbc_samples(source, rows, deepapl_labels)
    if not {"path", "label"} <= columns:
        raise ValueError(f"{source}: needs columns path,label[,group][,split][,margin][,red_cell_px]; has {sorted(columns)}")
    blank = [i + 2 for i, r in enumerate(rows) if not (r["label"] or "").strip() or not (r["path"] or "").strip()]
    if blank:
        raise ValueError(f"{source}: empty path or label on line(s) {', '.join(map(str, blank[:10]))}")
    margins, reds = [], []
    for i, r in enumerate(rows):
        margins.append(_number(r.get("margin") or "0"))
        if not 0 <= margins[-1] <= 2:
            raise ValueError(f"{source}: line {i + 2}: margin {r.get('margin')!r} is not a number in [0, 2]")
        reds.append(_number(r["red_cell_px"]) if (r.get("red_cell_px") or "").strip() else None)
        if reds[-1] is not None and not reds[-1] > 0:
            raise ValueError(f"{source}: line {i + 2}: red_cell_px {r.get('red_cell_px')!r} is not a positive number")
    return [Sample(root / r["path"], r["label"].strip(), (r.get("group") or "").strip() or r["path"],
                   (r.get("split") or "").strip(), margin=m, red_cell_px=red, stratum=(r.get("stratum") or "").strip(),
                   detail=(r.get("detail") or "").strip())
            for r, m, red in zip(rows, margins, reds)]


#: PBC cell classes as DeepAPL cell types (erythroblasts are not leukocytes: no cell type).
PBC_CELL_TYPES = {"ig": "immature_granulocyte", "neutrophil": "neutrophil", "monocyte": "monocyte",
                  "eosinophil": "eosinophil", "basophil": "basophil_or_plasma_cell"}


def _pbc_samples(source: Path, rows: list[dict], labels: str) -> list[Sample]:
    """The PBC manifest (healthy donors, CellaVision DM96, MGG): every cell normal, no blast equivalents.

    It has no donor IDs, so each image is its own group (``pbc/<file>``); the stratum is ``PBC`` and the detail the
    subclass (MY, MMY, PMY, ...). ``binary`` labels every cell ``normal``; ``cell_class`` keeps PBC's classes;
    ``cell_type`` maps them with :data:`PBC_CELL_TYPES` and refuses erythroblasts.
    """
    if labels not in DEEPAPL_LABELS:
        raise ValueError(f"labels must be one of {DEEPAPL_LABELS}, got {labels!r}")
    if labels == "cell_type" and any(r["cell_class"] not in PBC_CELL_TYPES for r in rows):
        raise ValueError(f"{source}: PBC classes {sorted({r['cell_class'] for r in rows} - set(PBC_CELL_TYPES))} have "
                         "no cell type; use --labels binary or cell_class")

    def label(r):
        if labels == "binary":
            return "normal"
        return r["cell_class"] if labels == "cell_class" else PBC_CELL_TYPES[r["cell_class"]]

    return [Sample(source.parent / r["file"], label(r), f"pbc/{r['file']}", stratum="PBC",
                   detail=r["subclass_code"] or r["cell_class"]) for r in rows]


def _number(text: str) -> float:
    """``float(text)``, or -1 where it is not a number (callers refuse it by range)."""
    try:
        return float(text.strip())
    except ValueError:
        return -1.0


def split_by_group(samples: list[Sample], fractions=SPLIT_FRACTIONS, seed: int = 0) -> dict[str, list[Sample]]:
    """Train / val / test splits by group (patient, slide), never by image.

    Splits given in the data are kept, for whole groups: ``test`` is never drawn from, and when a ``val``
    split is given every other sample trains. Otherwise the groups without ``val``/``test`` are drawn into
    train / val (and test, when none is given) by ``fractions``, class by class (a group counts for its most
    frequent label) so that every class with two groups or more reaches both train and val.

    Raises
    ------
    ValueError
        An unknown split name, or a group given in two splits.
    """
    given: dict[str, str] = {}
    for s in samples:
        if s.split not in ("", *SPLITS):
            raise ValueError(f"{s.path}: unknown split {s.split!r}; use train, val or test (or leave it empty)")
        if s.split and given.setdefault(s.group, s.split) != s.split:
            raise ValueError(f"group {s.group!r} is given in two splits ({given[s.group]} and {s.split}); "
                             "a group (patient) must stay in one split")
    has_val, has_test = "val" in given.values(), "test" in given.values()
    where = {g: sp for g, sp in given.items() if sp != "train" or has_val}
    names = ["train", "val"] if has_test else ["train", "val", "test"]
    f = np.asarray(fractions[: len(names)], float)
    f = f / f.sum()
    rng = np.random.default_rng(seed)
    for _, groups in sorted(groups_by_class([s for s in samples if s.group not in where]).items()):
        if has_val:  # everything not given as val or test trains
            where.update(dict.fromkeys(groups, "train"))
            continue
        rng.shuffle(groups)
        n = len(groups)
        n_val = max(int(np.round(f[1] * n)), 1 if n >= 2 else 0)
        n_test = int(np.round(f[2] * n)) if len(names) == 3 else 0
        n_test = max(0, min(n_test, n - n_val - 1))
        n_train = n - n_val - n_test
        for i, g in enumerate(groups):
            where[g] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    out = {name: [] for name in SPLITS}
    for s in samples:
        out[where[s.group]].append(s)
    return out


def groups_by_class(samples: list[Sample]) -> dict[str, list[str]]:
    """The groups of each class (a group counts for its most frequent label), each list sorted."""
    labels: dict[str, Counter] = {}
    for s in samples:
        labels.setdefault(s.group, Counter())[s.label] += 1
    strata: dict[str, list[str]] = {}
    for g, counts in sorted(labels.items()):
        strata.setdefault(counts.most_common(1)[0][0], []).append(g)
    return strata


def hold_out(samples: list[Sample], fraction: float, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Set aside ``fraction`` of the groups of each class (:func:`groups_by_class`), seeded.

    A class keeps at least two groups (to train and validate on); one with three or more gives at least one.
    Returns ``(kept, held_out)``.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for _, groups in sorted(groups_by_class(samples).items()):
        rng.shuffle(groups)
        n = len(groups)
        k = min(max(int(np.round(fraction * n)), 1), n - 2) if fraction > 0 and n >= 3 else 0
        held.update(groups[:k])
    return [s for s in samples if s.group not in held], [s for s in samples if s.group in held]


def crops_for(samples: list[Sample], crop: CropConfig, *, single_cells: bool = False,
              segment: SegmentConfig = SegmentConfig(), segmenter=None,
              progress: Callable[[int, int], None] | None = None):
    """Crop each sample's cell through the shared preprocessing.

    Whole fields are segmented and their centre cell is cropped; with ``single_cells`` (or a sample's
    ``single_cell``) the image is already one cell: its box is the image less the sample's ``margin`` (so a
    crop exported with the classifier's own margin is cut again exactly as at inference), and for a fixed
    window (``crop.window``) the image is the window. Unreadable images
    and fields without a cell are skipped and reported. ``progress(done, total)`` is called after every sample.

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
        else:
            whole = single_cells or s.single_cell
            labels = cell_box(image.shape[:2], s.margin) if whole else segment_leukocytes(image, segment, model=segmenter)
            cell = centre_cell(labels)
            if cell == 0:
                skipped.append(f"{s.path}: no leukocyte found")
            else:
                red = min(image.shape[:2]) / crop.window if whole and crop.window else s.red_cell_px
                try:
                    images.append(crop_cells(image, labels, crop, ids=[cell], red_cell_px=red).images[0])
                    kept.append(s)
                except ValueError as err:  # no red cells to scale a fixed window by
                    skipped.append(f"{s.path}: {err}")
        if progress:
            progress(i + 1, len(samples))
    empty = np.zeros((0, crop.size, crop.size, 3), np.uint8)
    return (np.stack(images) if images else empty), kept, skipped


def cell_box(shape, margin: float = 0.0) -> np.ndarray:
    """The label image of a single-cell crop: its central box (label 1), the crop less ``margin`` on each side.

    Of the box sides that round alike, the one whose :func:`~.preprocess.crop_cells` window with this margin is
    the whole crop is taken, so that a crop exported with the classifier's margin is cut again unchanged.
    """
    labels = np.zeros(shape, np.int32)
    box = []
    for n in shape:
        side = max(int(round(n / (1 + 2 * margin))), 1)
        exact = [c for c in (side, side - 1, side + 1)
                 if c >= 1 and (n - c) % 2 == 0 and 2 * int(round(c * (0.5 + margin))) == n]
        side = exact[0] if exact else side
        box.append(slice((n - side) // 2, (n - side) // 2 + side))
    labels[tuple(box)] = 1
    return labels


def read_samples(source, deepapl_labels: str = "binary") -> list[Sample]:
    """A dataset's samples: ``source`` is a folder or CSV path (see :func:`~.datasets.read_dataset`) or a list of
    :class:`~.datasets.Sample` (e.g. cells corrected in the viewer)."""
    if isinstance(source, (list, tuple)):
        return list(source)
    return read_dataset(source, deepapl_labels=deepapl_labels)


def split_digest(splits: dict[str, list[Sample]]) -> str:
    """A short hash of which groups are in which split (to check that evaluation uses training's split)."""
    data = {k: sorted({s.group for s in v}) for k, v in splits.items()}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
