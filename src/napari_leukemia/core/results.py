"""Writing one analysis to a folder: the result bundle every caller shares (command line, widget, console).

Research use only: not a diagnostic device.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

#: The files of one analysed image, in its result folder.
OUTPUT_FILES = ("labels.tif", "cells.csv", "summary.json", "overlay.png")


def save_result(result, folder, image, *, overwrite: bool = False, extra: dict | None = None) -> list[Path]:
    """Write ``labels.tif``, ``cells.csv``, ``summary.json`` and ``overlay.png`` of an analysis to ``folder``.

    All four are written to temporary files beside their targets and moved into place only once all are
    written (``summary.json`` last), so a failure leaves the folder as it was.

    Parameters
    ----------
    result : SmearResult
        What :func:`~.pipeline.analyze_smear` returned.
    folder : path
        Created when missing.
    image : (H, W[, C]) array
        The analysed image (for the outlines of ``overlay.png``).
    overwrite : bool
        Replace results already in ``folder``; without it they are refused.
    extra : dict, optional
        Added to ``summary.json`` (e.g. the image's path and the settings).

    Raises
    ------
    FileExistsError
        ``folder`` is a file, or holds results and ``overwrite`` is off.

    Examples
    --------
    >>> from napari_leukemia import analyze_smear, read_image  # doctest: +SKIP
    >>> image = read_image("smear.jpg")  # doctest: +SKIP
    >>> save_result(analyze_smear(image), "results/smear", image)  # doctest: +SKIP
    """
    import tifffile
    from PIL import Image

    from .io import atomic_path, write_json
    from .render import overlay

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"cannot write results: {folder} exists and is not a folder")
    existing = [folder / f for f in OUTPUT_FILES if (folder / f).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass --overwrite to replace it")
    summary = {**result.summary, **(extra or {})}
    picture = overlay(image, result.labels, result.cells, summary["classes"], summary["leukemic_classes"])
    with contextlib.ExitStack() as stack:
        tmp = {name: stack.enter_context(atomic_path(folder / name)) for name in reversed(OUTPUT_FILES)}
        tifffile.imwrite(tmp["labels.tif"], np.asarray(result.labels, np.int32), compression="zlib")
        result.cells.to_csv(tmp["cells.csv"], index=False)
        Image.fromarray(picture).save(tmp["overlay.png"], format="PNG")
        write_json(tmp["summary.json"], summary)
    return [folder / f for f in OUTPUT_FILES]


def is_complete(folder) -> bool:
    """Whether ``folder`` holds a whole result bundle with a readable ``summary.json``."""
    import json

    folder = Path(folder)
    if not all((folder / f).is_file() for f in OUTPUT_FILES):
        return False
    try:
        return isinstance(json.loads((folder / "summary.json").read_text()), dict)
    except (OSError, ValueError):
        return False


def remove_result(folder) -> None:
    """Delete the result files of ``folder`` (and the folder when nothing else is left in it)."""
    folder = Path(folder)
    for f in OUTPUT_FILES:
        (folder / f).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when empty: files the user put there stay


def remove_partial_files(folder, names) -> list[Path]:
    """Delete the temporary files that :func:`~.io.atomic_path` leaves for ``names`` when a run is killed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for name in names:
            for tmp in folder.glob(f".{name}.*"):
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp)
    return removed
