"""Many images into one output folder: a result folder per image and ``summary.csv`` kept up to date, resumable.

Research use only: not a diagnostic device.

:func:`analyze_images` analyses images one by one (single-cell images in batches whose crops are classified
together) into ``out/<stem>/`` (:func:`~.results.save_result`) and rewrites ``out/summary.csv`` after every image, so
a killed run leaves the summary of every image it finished; run again with ``resume`` and the images already done are
skipped. Nothing is written outside ``out``: result folders are named from the images' names made safe
(:func:`result_folders`).
Whole slides (:func:`~.slide.is_slide`) are analysed blockwise into their folders
(:func:`~.slide_analysis.analyze_slide`), each resumable tile by tile, before the other images (on a cluster, each
on a worker of its own, beside the other images).
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Callable, Generator
from pathlib import Path

from .events import Event
from .results import OUTPUT_FILES, is_complete, remove_partial_files, remove_result, save_result

SUMMARY_CSV = "summary.csv"
SUMMARY_COLUMNS = ("image", "stem", "status", "leukocytes", "leukemic", "leukemic_fraction", "blast_pct",
                   "blast_pct_low", "blast_pct_high", "too_few_cells", "segmenter", "found_by", "classifier", "seconds",
                   "error")
#: Folder names a result folder must not take (the run's own files).
RESERVED = {SUMMARY_CSV.lower(), "summary"}


def result_folders(images) -> list[str]:
    """A safe folder name per image, unique in the output folder.

    The name is the file's stem with characters other than letters, digits, ``.``, ``_``, ``-`` replaced by
    ``_`` and leading dots dropped (so ``...jpg`` cannot name the parent folder, nor ``.jpg`` a hidden one);
    empty names become ``image``; the run's own names (``summary.csv``) get ``_image``; later images with a
    name already taken (any case) get ``_2``, ``_3``, ...
    """
    used, names = set(), []
    for path in images:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(path).stem).lstrip(".") or "image"
        if stem.lower() in RESERVED:
            stem = f"{stem}_image"
        name, k = stem, 2
        while name.lower() in used:
            name, k = f"{stem}_{k}", k + 1
        used.add(name.lower())
        names.append(name)
    return names


def check_writable(out: Path) -> None:
    """Check, before any image is analysed, that results can be written in ``out`` (nothing is created here).

    An existing folder is tried with a temporary file; a missing one needs its nearest existing parent to be a
    folder this process may write in.
    """
    import os
    import tempfile

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    try:
        if out.is_dir():
            with tempfile.TemporaryFile(dir=out):
                pass
            return
        parent = next(p for p in out.absolute().parents if p.exists())
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(f"{parent} is not writable")
    except OSError as err:
        raise PermissionError(f"cannot write into the output folder {out} ({err.strerror or err})") from err


def read_summary(path: Path) -> list[dict]:
    """The rows of a ``summary.csv`` written before (empty when missing); a damaged one is refused by name."""
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: not a readable summary ({err}); move it away or pass --overwrite") from err
    if rows and not {"image", "stem", "status"} <= set(reader.fieldnames or ()):
        raise ValueError(f"{path}: not a napari-leukemia summary (columns {reader.fieldnames})")
    return rows


def summary_row(path, stem: str, summary: dict | None, seconds: float, error: str = "") -> dict:
    """One ``summary.csv`` row: the image's counts and percentage, or its error."""
    row = dict.fromkeys(SUMMARY_COLUMNS, "")
    row.update(image=str(path), stem=stem, status="failed" if summary is None else "ok", error=error,
               seconds=round(seconds, 2))
    if summary is not None:
        row.update(leukocytes=summary["leukocytes"], leukemic=summary["leukemic"],
                   leukemic_fraction=round(float(summary["leukemic_fraction"]), 6),
                   too_few_cells=int(summary["too_few_cells"]), segmenter=summary["segmenter"],
                   found_by=summary.get("found_by", ""),
                   classifier=summary["classifier"],
                   **{key: "" if summary[key] is None else round(summary[key], 2)
                      for key in ("blast_pct", "blast_pct_low", "blast_pct_high")})
    return row


def analyze_images(images, out, *, classifier, segmenter=None, config=None, overwrite: bool = False,
                   resume: bool = False, should_stop: Callable[[], bool] = lambda: False, client=None,
                   ) -> Generator[Event, None, dict]:
    """Analyse each image into ``out/<folder>/`` and keep ``out/summary.csv`` up to date.

    Parameters
    ----------
    images : list of path
    out : path
        The output folder; nothing is written outside it.
    classifier, segmenter, config
        As for :func:`~.pipeline.analyze_smear` (an :class:`~.config.AnalysisConfig`); the models loaded, or their
        files (loaded here when there is no ``client``; on a cluster only its workers load them).
    overwrite : bool
        Replace earlier results (an image that fails now loses its earlier results, which would be stale).
    resume : bool
        Keep the images that ``summary.csv`` lists as done and whose results are complete; analyse the rest.
    should_stop : callable
        Polled between images (every half second on a cluster).
    client : distributed.Client, optional
        Analyse on this cluster's workers (:mod:`~.cluster`; models are loaded there from their files), several
        images at once; the results are the same as here.

    Yields
    ------
    Event
        ``"image"`` after each image, images done of total; ``message`` is the analysis' own note such as "no
        leukocytes found"; payload ``image`` (its path), ``row`` (its summary row) and ``skipped`` (True for one
        done before).

    Returns
    -------
    dict
        ``rows`` (in input order, the images not reached left out) and ``stopped``. Images done before come first
        in the events; on a cluster the others come as they finish.

    Raises
    ------
    FileExistsError
        ``summary.csv`` exists and neither ``resume`` nor ``overwrite`` is given.
    PermissionError
        ``out`` cannot be written (checked before any image is analysed).
    """
    from .config import AnalysisConfig

    config = AnalysisConfig() if config is None else config
    out = Path(out)
    summary_csv = out / SUMMARY_CSV
    if summary_csv.exists() and not (resume or overwrite):
        raise FileExistsError(f"{summary_csv} exists; pass --resume to continue that run, --overwrite to replace it, "
                              "or choose another --out")
    check_writable(out)
    folders = result_folders(images)
    remove_partial_files(out, [SUMMARY_CSV])
    for name in folders:
        remove_partial_files(out / name, OUTPUT_FILES)
    earlier = {(r["image"], r["stem"]): r for r in read_summary(summary_csv)} if resume else {}
    done_before = []
    for path, name in zip(images, folders):
        before = earlier.get((str(path), name))
        done_before.append(before if before is not None and before["status"] == "ok" and is_complete(out / name)
                           else None)
    todo = [(i, path, out / name) for i, (path, name, before) in enumerate(zip(images, folders, done_before))
            if before is None]
    rows = {i: before for i, before in enumerate(done_before) if before is not None}
    for n, i in enumerate(sorted(rows)):
        yield Event("image", n + 1, len(images), payload={"image": str(images[i]), "row": rows[i], "skipped": True})
    if client is None:
        from .slide import is_slide

        classifier, segmenter = _loaded(classifier, segmenter, config.device)
        slides = [t for t in todo if is_slide(t[1])]  # whole slides: blockwise, here, each resumable on its own
        rest = _iter_here([t for t in todo if t not in slides], classifier=classifier, segmenter=segmenter,
                          config=config, overwrite=overwrite or resume, should_stop=should_stop)
        results = _iter_slides(slides, rest, classifier=classifier, segmenter=segmenter, config=config,
                               overwrite=overwrite, resume=resume, should_stop=should_stop)
    else:
        from .cluster import iter_on_cluster

        results = iter_on_cluster(client, todo, classifier=classifier, segmenter=segmenter, config=config,
                                  overwrite=overwrite, resume=resume, should_stop=should_stop)
    while True:
        try:
            i, row, message = next(results)
        except StopIteration as end:
            stopped = bool(end.value)
            break
        rows[i] = row
        write_summary(summary_csv, [rows[k] for k in sorted(rows)])
        yield Event("image", len(rows), len(images), message, {"image": str(images[i]), "row": row, "skipped": False})
    rows = [rows[k] for k in sorted(rows)]
    write_summary(summary_csv, rows)
    return {"rows": rows, "stopped": stopped}


def _loaded(classifier, segmenter, device):
    """The models, loaded from their files where they are paths."""
    if isinstance(classifier, (str, Path)):
        from .model import load_classifier

        classifier = load_classifier(classifier, device)
    if isinstance(segmenter, (str, Path)):
        from .segment import load_segmenter

        segmenter = load_segmenter(segmenter, device)
    return classifier, segmenter


def _iter_slides(slides, rest, *, classifier, segmenter, config, overwrite: bool, resume: bool, should_stop):
    """Analyse the whole slides of ``slides`` (``(index, path, folder)`` each) blockwise
    (:func:`analyze_slide_file`), then yield from ``rest``; like :func:`_iter_here`."""
    for index, path, folder in slides:
        if should_stop():
            return True
        row, message, stopped = analyze_slide_file(path, folder, classifier=classifier, segmenter=segmenter,
                                                    config=config, resume=resume, overwrite=overwrite,
                                                    should_stop=should_stop)
        if stopped:
            return True
        yield index, row, message
    return (yield from rest)


def analyze_slide_file(path, folder, *, classifier, segmenter=None, config, resume: bool = False,
                       overwrite: bool = False, should_stop=lambda: False) -> tuple[dict | None, str, bool]:
    """One slide of a folder run (:func:`~.slide_analysis.analyze_slide`): ``(summary.csv row or None, message,
    stopped)``.

    The row is None when the run was stopped (the slide stays resumable); an error becomes the row's ``error``,
    naming the file, and with ``overwrite`` the slide's stale results are removed.
    """
    from .slide_analysis import analyze_slide, remove_slide_result

    t0 = time.perf_counter()
    try:
        summary = analyze_slide(path, folder, segmenter=segmenter, classifier=classifier, config=config,
                                resume=resume, overwrite=overwrite, should_stop=should_stop)
    except Exception as err:  # noqa: BLE001 -- one bad slide must not stop the others; reported in its row
        message = str(err) if Path(path).name in str(err) or str(folder) in str(err) else f"{path}: {err}"
        if overwrite and not isinstance(err, FileExistsError):
            remove_slide_result(folder)
        return summary_row(path, Path(folder).name, None, time.perf_counter() - t0, error=message), "", False
    if summary["stopped"]:
        return None, "", True
    return summary_row(path, Path(folder).name, summary, summary["timings"]["total_s"]), summary["message"], False


def _iter_here(todo, *, classifier, segmenter, config, overwrite: bool, should_stop) -> Generator[tuple, None, bool]:
    """Analyse ``todo`` (``(index, path, folder)`` each) in this process, in order: yields ``(index, row, message)``
    per image; returns True when ``should_stop`` (polled between images) stopped it."""
    analyses = iter_analyses([path for _, path, _ in todo], classifier=classifier, segmenter=segmenter, config=config)
    for index, path, folder in todo:
        if should_stop():
            return True
        image, result, seconds = next(analyses)
        yield (index, *finish_image(path, folder, image, result, seconds, config=config, overwrite=overwrite))
    return False


def finish_image(path, folder, image, result, seconds: float, *, config, overwrite: bool) -> tuple[dict, str]:
    """Save one image's result in ``folder`` and make its ``summary.csv`` row: ``(row, message)``.

    ``result`` is the image's :class:`~.pipeline.SmearResult`, or the exception that stopped its analysis; any error
    (reading, analysing, saving) becomes the row's ``error``, naming the file, and the message is empty. With
    ``overwrite``, a failed image's earlier results are removed (they would be stale).
    """
    folder = Path(folder)
    t0 = time.perf_counter()
    try:
        if isinstance(result, Exception):
            raise result
        extra = {"image_path": str(Path(path).resolve()), "config": config.to_dict()}
        save_result(result, folder, image, overwrite=overwrite, extra=extra)
        return summary_row(path, folder.name, result.summary, seconds + time.perf_counter() - t0), \
            result.summary.get("message", "")
    except Exception as err:  # noqa: BLE001 -- one bad image must not stop the others; reported in its row
        message = str(err)
        if str(path) not in message and Path(path).name not in message:
            message = f"{path}: {message}"
        if not isinstance(err, (ValueError, OSError)):  # ImageError, CheckpointError are ValueErrors
            message = f"{message} ({type(err).__name__})"
        if overwrite and not isinstance(err, FileExistsError):
            remove_result(folder)  # results of an earlier run of this image would be stale
        return summary_row(path, folder.name, None, seconds + time.perf_counter() - t0, error=message), ""


def iter_analyses(paths, *, classifier, segmenter, config) -> Generator[tuple, None, None]:
    """Read and analyse each image, lazily: yields ``(image, result or exception, seconds)`` per path, in order.

    Smears are analysed one at a time (:func:`~.pipeline.analyze_smear`); single-cell images
    (``config.single_cell``) ``config.batch_size`` at a time, their crops classified together
    (:func:`~.single_cell.analyze_single_cells`), each image's seconds its share of the batch's.
    """
    from .io import read_image
    from .pipeline import analyze_smear
    from .single_cell import analyze_single_cells

    step = config.batch_size if config.single_cell else 1
    for start in range(0, len(paths), step):
        t0 = time.perf_counter()
        chunk, images = paths[start : start + step], []
        for path in chunk:
            try:
                if Path(path).is_dir():
                    raise ValueError(f"{path} is a folder holding no images")
                images.append(read_image(path))
            except Exception as err:  # noqa: BLE001 -- reported in the image's row
                images.append(err)
        readable = [k for k, image in enumerate(images) if not isinstance(image, Exception)]
        results = list(images)
        try:
            if config.single_cell:
                analysed = analyze_single_cells([images[k] for k in readable], [Path(chunk[k]).name for k in readable],
                                                classifier=classifier, segmenter=segmenter, config=config)
            else:
                analysed = [analyze_smear(images[k], segmenter=segmenter, classifier=classifier, config=config,
                                          name=Path(chunk[k]).name) for k in readable]
        except Exception as err:  # noqa: BLE001 -- reported in the rows of the images it stopped
            analysed = [err] * len(readable)
        for k, result in zip(readable, analysed):
            results[k] = result
        seconds = (time.perf_counter() - t0) / len(chunk)
        for image, result in zip(images, results):
            yield (None if isinstance(image, Exception) else image), result, seconds


def write_summary(path: Path, rows: list[dict]) -> None:
    """Write ``summary.csv`` atomically."""
    from .io import write_csv

    write_csv(path, rows, SUMMARY_COLUMNS)
