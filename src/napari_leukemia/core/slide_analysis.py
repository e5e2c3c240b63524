"""Whole slides analysed blockwise, with memory set by the tile size: :func:`iter_analyze_slide`.

Research use only: not a diagnostic device.

The slide is read tile by tile at full resolution (``config.segment.tile_size``, each with a margin of
``tile_margin`` leukocyte diameters) and segmented by the same step and seam rule as a large image in memory
(:func:`~.tiling.segment_window`). Tiles without nuclear stain, judged on a coarse pyramid level, are skipped.
Each tile's cells are cut by :func:`~.preprocess.crop_cells` and classified in batches of ``config.batch_size``
across tiles. Results are streamed into the output folder (:data:`SLIDE_FILES`):

- ``cells.ome.zarr``: OME-Zarr (NGFF 0.4, zarr format 2). ``labels/cells`` is the labels image (ids unique over
  the slide, written tile by tile; levels downsampled 1, 2, ..., 16 times; each cell's class and ``p_leukemic`` in
  its ``image-label`` properties); the root image is ``p_leukemic`` at 1/:data:`PMAP_DOWNSAMPLE` of the resolution
  (each cell's probability painted over its mask, averaged over blocks).
- ``cells.csv``: the smear's cell table (slide coordinates, level-0 pixels) plus ``tile`` and, when the slide
  carries its pixel size, the centroid in micrometres; appended tile by tile.
- ``progress.json``: the tiles finished (a prefix of the row-major tile order), the last cell id and the length of
  ``cells.csv`` they account for, and the tiles begun (``segmented``, recorded before a tile's labels are written);
  rewritten atomically before and after each tile, so a killed run resumes (``resume=True``) with no duplicated or
  half-written rows: later rows are cut off, the labels of tiles begun but not finished cleared, and those redone.
- ``summary.json``: counts, the blast-equivalent percentage with its interval, tiles done and skipped, time;
  written last, atomically.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np

from .config import DISCLAIMER, AnalysisConfig
from .events import Event
from .io import write_json
from .slide_output import PMAP_DOWNSAMPLE, create_result_zarr, finish_result_zarr

RESULT_ZARR, CELLS_CSV, SUMMARY_JSON, PROGRESS_JSON = "cells.ome.zarr", "cells.csv", "summary.json", "progress.json"
#: The files of one analysed slide, in its result folder.
SLIDE_FILES = (RESULT_ZARR, CELLS_CSV, SUMMARY_JSON, PROGRESS_JSON)
#: A slide's cell table with a reviewer's calls (napari's Review panel), beside the result; never removed by overwrite.
SLIDE_REVIEW_CSV = "cells_reviewed.csv"
#: The background test reads the coarsest level on which a leukocyte still spans this many pixels.
BACKGROUND_DETAIL = 16
#: A tile is background when its nuclear-stain pixels (at that level) cover less than this fraction of a nucleus.
MIN_STAIN_FRACTION = 0.1
#: Levels coarser than this never pick the tiles the leukocyte diameter is estimated on.
ESTIMATE_DOWNSAMPLE = 4
#: Settings that must match for a run to be resumed.
_RESUME_KEYS = ("shape", "tile_size", "tile_margin", "method", "segmenter", "classifier", "diameter")
GRADCAM_NOTE = ("Grad-CAM is not computed for every cell of a slide (the gradcam setting is ignored); explain chosen "
                "cells on demand (napari's Review panel, explain.explain_cell_region)")


def iter_analyze_slide(slide, out, *, segmenter=None, classifier=None, config: AnalysisConfig = AnalysisConfig(),
                       resume: bool = False, overwrite: bool = False,
                       should_stop: Callable[[], bool] = lambda: False) -> Generator[Event, None, dict]:
    """Analyse a whole slide tile by tile into ``out``, step by step.

    Parameters
    ----------
    slide : Slide or path
        From :func:`~.slide.open_slide` (a path is opened here and closed at the end).
    out : path
        The result folder (:data:`SLIDE_FILES`); nothing is written outside it.
    segmenter, classifier : path or loaded model, optional
        As for :func:`~.pipeline.iter_analyze_smear`.
    config : AnalysisConfig
        ``segment.tile_size``, ``tile_margin``, ``diameter`` (estimated on up to ``DIAMETER_TILES`` stained tiles
        when None), ``batch_size``, ``device``, ``red_cell_diameter``; ``gradcam`` is ignored (noted in the summary).
    resume : bool
        Continue the run recorded in ``out/progress.json`` (a finished one is returned as it is).
    overwrite : bool
        Delete the earlier result files of ``out`` (:data:`SLIDE_FILES` only) and start again.
    should_stop : callable
        Polled between tiles, after each tile's segmentation and between batches; when it answers True the run
        ends, resumable (a tile not finished is done again).

    Yields
    ------
    Event
        ``"load"`` once; ``"diameter"`` per tile read for the diameter estimate (when not given nor resumed);
        per tile ``"segment"`` once its cells are found (payload ``tile``, ``cells``), then ``"tile"`` (done of
        total), payload ``tile`` (its index), ``cells``, ``skipped`` (background) and ``finished`` (tiles whose
        cells are classified and written); ``"classify"`` per batch. A consumer may stop at any of them (napari's
        Cancel does): no step between two events takes more than one tile's segmentation.

    Returns
    -------
    dict
        The summary (as in ``summary.json``), with ``stopped`` True when ``should_stop`` ended the run early (then
        counts cover the finished tiles only and ``summary.json`` is not written).

    Raises
    ------
    FileExistsError
        ``out`` holds a slide result and neither ``resume`` nor ``overwrite`` is given.
    ValueError
        ``resume`` with a ``progress.json`` of other settings or another slide.
    """
    from .slide import open_slide

    if resume and overwrite:
        raise ValueError("resume keeps the finished tiles and overwrite deletes them: give one")
    opened = not hasattr(slide, "read_region")
    slide = open_slide(slide) if opened else slide
    try:
        return (yield from _run(slide, Path(out), segmenter, classifier, config, resume, overwrite, should_stop))
    finally:
        if opened:
            slide.close()


def analyze_slide(slide, out, **kwargs) -> dict:
    """Analyse a whole slide in one call (the arguments of :func:`iter_analyze_slide`); returns its summary."""
    from . import drain

    return drain(iter_analyze_slide(slide, out, **kwargs))


def _run(slide, out, segmenter, classifier, config, resume, overwrite, should_stop):
    from .pipeline import load_models, model_name, segmenter_label
    from .segment import check_diameter
    from .tiling import iter_diameter_on_tiles, tile_cores, tile_margin_px

    t_start = time.perf_counter()
    state = _prepare(out, resume, overwrite)
    if state.get("finished"):
        return {**_read_json(out / SUMMARY_JSON), "stopped": False}
    cfg = config.segment
    cores = tile_cores(slide.shape, cfg.tile_size)
    yield Event("load", 0, len(cores), "loading models")
    clf, seg_model, device = load_models(segmenter, classifier, config)
    settings = {"shape": list(slide.shape), "tile_size": cfg.tile_size, "tile_margin": cfg.tile_margin,
                "method": cfg.method, "segmenter": segmenter_label(seg_model), "classifier": model_name(clf.path)}
    diameter = cfg.diameter or state.get("diameter")
    if diameter is None:
        stained = [c for c in cores if _stained(slide, c, _level(slide, ESTIMATE_DOWNSAMPLE), 1)]
        diameter = yield from iter_diameter_on_tiles(
            lambda r0, r1, c0, c1: slide.read_region(0, r0, c0, r1 - r0, c1 - c0), stained)
    if diameter is not None:
        check_diameter(diameter, estimated=cfg.diameter is None)
    settings["diameter"] = diameter
    if state:
        _check_resumable(out, state, settings)
    else:
        state = {**settings, "slide": slide.name, "source": slide.source, "tiles": len(cores), "done": 0,
                 "skipped": 0, "segmented": 0, "next_id": 0, "csv_bytes": 0, "seconds": 0.0,
                 "red_cell_px": config.red_cell_diameter, "finished": False}
        write_json(out / PROGRESS_JSON, state)
        create_result_zarr(out / RESULT_ZARR, slide.shape, slide.pixel_size)
    import zarr

    labels = zarr.open_group(str(out / RESULT_ZARR), mode="r+")["labels/cells/0"]
    margin = tile_margin_px(cfg, diameter) if diameter else 0
    _clear_unfinished(labels, cores, state, margin)
    _cut_csv(out / CELLS_CSV, state["csv_bytes"])
    seconds_before, n = state["seconds"], state["next_id"]
    queue: deque = deque()  # tiles segmented whose cells are not all classified yet, in tile order
    stopped = False
    level = _level(slide, diameter / BACKGROUND_DETAIL) if diameter else 0
    min_stain = MIN_STAIN_FRACTION * np.pi / 4 * (diameter / 1.3 / slide.downsamples[level]) ** 2 if diameter else 0
    for i in range(state["done"], len(cores)):
        if should_stop():
            stopped = True
            break
        state["segmented"] = i + 1  # recorded before its labels are written: a resume clears them if unfinished
        write_json(out / PROGRESS_JSON, state)
        tile = (yield from _segment_tile(slide, labels, cores[i], i, len(cores), margin, level, min_stain, diameter,
                                         cfg, seg_model, clf, state, n, should_stop)) if diameter else {
            "index": i, "skipped": True, "ids": np.zeros(0, int)}
        if tile is None:  # stopped between finding the tile's cells and cutting them out: the tile is redone
            stopped = True
            break
        n = tile["last_id"] if len(tile["ids"]) else n
        queue.append(tile)
        stopped = yield from _classify(queue, clf, config.batch_size, should_stop, force=i == len(cores) - 1)
        _finish_tiles(queue, out, clf, slide.pixel_size, state, seconds_before + time.perf_counter() - t_start)
        yield Event("tile", i + 1, len(cores), f"tile {i + 1} of {len(cores)}: " +
                    ("background, skipped" if tile["skipped"] else f"{len(tile['ids'])} cells"),
                    {"tile": i, "cells": len(tile["ids"]), "skipped": tile["skipped"], "finished": state["done"]})
        if stopped:
            break
    seconds = seconds_before + time.perf_counter() - t_start
    summary = _summary(out, slide, clf, state, settings, device, seconds)
    if stopped or state["done"] < len(cores):
        return {**summary, "stopped": True}
    finish_result_zarr(out / RESULT_ZARR, out / CELLS_CSV, slide.shape, cfg.tile_size)
    summary["timings"]["total_s"] = round(seconds_before + time.perf_counter() - t_start, 3)
    write_json(out / SUMMARY_JSON, summary)
    write_json(out / PROGRESS_JSON, {**state, "finished": True, "seconds": summary["timings"]["total_s"]})
    return {**summary, "stopped": False}


def _prepare(out: Path, resume: bool, overwrite: bool) -> dict:
    """The recorded progress to resume from ({} for a new run), after refusing or clearing earlier results."""
    from .results import remove_partial_files

    if out.exists() and not out.is_dir():
        raise FileExistsError(f"cannot write results: {out} exists and is not a folder")
    remove_partial_files(out, SLIDE_FILES)  # temporary files of a killed run
    existing = [out / name for name in SLIDE_FILES if (out / name).exists()]
    if existing and overwrite:
        remove_slide_result(out)
    elif existing and resume:
        if not (out / PROGRESS_JSON).is_file():
            raise FileExistsError(f"{existing[0]} exists but {out / PROGRESS_JSON} does not: nothing to resume; "
                                  "pass overwrite to start again")
        return _read_json(out / PROGRESS_JSON)
    elif existing:
        raise FileExistsError(f"{existing[0]} exists; pass --resume to continue that run, --overwrite to replace it, "
                              "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return {}


def read_slide_result(folder):
    """A finished slide analysis from its folder, lazily, as a :class:`~.pipeline.SmearResult` for viewers.

    ``labels`` is the list of the labels pyramid's levels (dask arrays, level 0 full resolution), ``probability``
    the ``p_leukemic`` map at 1/``summary["probability_downsample"]`` of the resolution (dask), ``cells`` the
    cell table of ``cells.csv`` (slide coordinates) and ``summary`` that of ``summary.json``; no Grad-CAM.

    Raises
    ------
    FileNotFoundError
        ``folder`` holds no finished slide analysis (no ``summary.json``): resume the run first.
    """
    import dask.array as da
    import pandas as pd
    import zarr

    from .pipeline import SmearResult
    from .slide_output import LABEL_LEVELS

    folder = Path(folder)
    if not (folder / SUMMARY_JSON).is_file():
        raise FileNotFoundError(f"{folder}: no {SUMMARY_JSON}, so no finished slide analysis (resume it first)")
    summary = _read_json(folder / SUMMARY_JSON)
    group = zarr.open_group(str(folder / RESULT_ZARR), mode="r")
    levels = [da.from_zarr(group[f"labels/cells/{k}"]) for k in range(LABEL_LEVELS)]
    cells = pd.read_csv(folder / CELLS_CSV) if (folder / CELLS_CSV).stat().st_size else pd.DataFrame()
    return SmearResult(labels=levels, cells=cells, probability=da.from_zarr(group["0"]), gradcam=None, summary=summary)


def remove_slide_result(folder) -> None:
    """Delete a slide's result files (:data:`SLIDE_FILES`) in ``folder``; other files stay."""
    folder = Path(folder)
    shutil.rmtree(folder / RESULT_ZARR, ignore_errors=True)
    for name in SLIDE_FILES[1:]:
        (folder / name).unlink(missing_ok=True)


def _read_json(path: Path) -> dict:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not readable ({err}); pass overwrite to start again") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a napari-leukemia slide record; pass overwrite to start again")
    return data


def _check_resumable(out: Path, state: dict, settings: dict) -> None:
    for key in _RESUME_KEYS:
        if state.get(key) != settings.get(key):
            raise ValueError(f"{out / PROGRESS_JSON}: recorded with {key} = {state.get(key)!r}, this run has "
                             f"{settings.get(key)!r}; resume with the same slide and settings, or overwrite")


def _clear_unfinished(labels, cores, state: dict, margin: int) -> None:
    """Erase the cells of tiles begun but not finished by a killed run (ids above ``next_id``)."""
    from .tiling import tile_window

    for i in range(state["done"], min(state["segmented"], len(cores))):
        R0, R1, C0, C1 = tile_window(cores[i], margin, labels.shape)
        window = labels[R0:R1, C0:C1]
        stale = window > state["next_id"]
        if stale.any():
            window[stale] = 0
            labels[R0:R1, C0:C1] = window


def _cut_csv(path: Path, size: int) -> None:
    """Cut ``cells.csv`` back to the rows of the finished tiles (a killed run's later rows are dropped)."""
    if path.is_file() and path.stat().st_size != size:
        with open(path, "r+b") as fh:
            fh.truncate(size)


def _level(slide, downsample: float) -> int:
    """The coarsest level of ``slide`` downsampled at most ``downsample`` times (0 at least)."""
    return max(k for k, d in enumerate(slide.downsamples) if d <= max(downsample, 1.0) + 1e-6 or k == 0)


def _stained(slide, window, level: int, min_pixels: float) -> bool:
    """Whether ``window`` (R0, R1, C0, C1 at level 0) holds at least ``min_pixels`` of nuclear stain on ``level``."""
    from .stain import nucleus_mask

    R0, R1, C0, C1 = window
    d = slide.downsamples[level]
    y0, x0 = int(R0 // d), int(C0 // d)
    region = slide.read_region(level, y0, x0, max(1, int(np.ceil(R1 / d)) - y0), max(1, int(np.ceil(C1 / d)) - x0))
    return bool(nucleus_mask(region).sum() >= max(min_pixels, 1))


def _segment_tile(slide, labels, core, index, tiles, margin, level, min_stain, diameter, cfg, model, clf, state, n,
                  should_stop):
    """Segment tile ``index`` of ``tiles`` (unless it is background), write its cells into ``labels``, and cut them
    out, yielding an event ``"segment"`` in between (a caller may stop there). Returns the tile's record, or None
    when ``should_stop`` answered after the segmentation (nothing of the tile written)."""
    from .pipeline import cell_geometry
    from .preprocess import crop_cells, measure_red_cells
    from .tiling import segment_window, tile_window

    R0, R1, C0, C1 = window = tile_window(core, margin, slide.shape)
    if not _stained(slide, window, level, min_stain):
        return {"index": index, "skipped": True, "ids": np.zeros(0, int)}
    pixels = slide.read_region(0, R0, C0, R1 - R0, C1 - C0)
    window_labels = np.asarray(labels[R0:R1, C0:C1])
    last = segment_window(pixels, window_labels, (R0, C0), core, diameter, cfg, model, n)
    ids = np.arange(n + 1, last + 1)
    yield Event("segment", index, tiles, f"tile {index + 1} of {tiles}: {len(ids)} cells found, cutting them out",
                {"tile": index, "cells": len(ids)})
    if should_stop():
        return None
    tile = {"index": index, "skipped": False, "ids": ids, "last_id": last}
    if not len(ids):
        return tile
    labels[R0:R1, C0:C1] = window_labels
    table = cell_geometry(window_labels, ids)
    for col in ("centroid_y", "bbox_y0", "bbox_y1"):
        table[col] += R0
    for col in ("centroid_x", "bbox_x0", "bbox_x1"):
        table[col] += C0
    if clf.info.crop.window and not state["red_cell_px"]:
        state["red_cell_px"] = measure_red_cells(pixels)  # once, on the first tile with cells; kept for a resume
    crops = crop_cells(pixels, window_labels, clf.info.crop, ids=ids, red_cell_px=state["red_cell_px"])
    tile.update(table=table, crops=crops.images, logits=[], p_features=[])
    return tile


def _classify(queue: deque, clf, batch_size: int, should_stop, force: bool):
    """Classify the queued tiles' crops in full batches across tiles (the rest too when ``force``); returns True
    when ``should_stop`` answered between batches."""
    from .predict import feature_opinion, predict_logits

    while True:
        waiting = [(t, len(t["logits"])) for t in queue if "crops" in t and len(t["logits"]) < len(t["ids"])]
        left = sum(len(t["ids"]) - k for t, k in waiting)
        if left == 0 or (left < batch_size and not force):
            return False
        batch, owners = [], []
        for t, k in waiting:
            part = t["crops"][k : k + batch_size - sum(len(b) for b in batch)]
            batch.append(part)
            owners.append((t, len(part)))
            if sum(len(b) for b in batch) == batch_size:
                break
        logits = predict_logits(clf, np.concatenate(batch), batch_size=batch_size)
        opinion = feature_opinion(clf, np.concatenate(batch))
        start = 0
        for t, m in owners:
            t["logits"].extend(logits[start : start + m])
            if opinion is not None:
                t["p_features"].extend(opinion[start : start + m])
            start += m
        if should_stop():
            return True
        yield Event("classify", 0, 0, f"classified a batch of {len(logits)} cells", {"cells": len(logits)})


def _finish_tiles(queue: deque, out: Path, clf, pixel_size, state: dict, seconds: float) -> None:
    """Append the rows of the queue's leading tiles whose cells are all classified to ``cells.csv``, then record
    them in ``progress.json`` (the rows first, so a record never counts rows that are not on disk)."""
    from .pipeline import with_calls
    from .predict import p_leukemic, probabilities

    while queue and len(queue[0].get("logits", ())) == len(queue[0]["ids"]):
        tile = queue.popleft()
        if len(tile["ids"]):
            p_features = np.asarray(tile["p_features"]) if clf.feature_svm is not None else None
            proba = probabilities(clf, np.asarray(tile["logits"]), p_features)
            table = with_calls(tile["table"], proba, p_leukemic(clf, proba), clf.info.classes, clf.info.leukemic,
                               p_features)
            table.insert(1, "tile", tile["index"])
            if pixel_size:
                table["centroid_y_um"] = table["centroid_y"] * pixel_size[0]
                table["centroid_x_um"] = table["centroid_x"] * pixel_size[1]
            with open(out / CELLS_CSV, "a", newline="", encoding="utf-8") as fh:
                table.to_csv(fh, index=False, header=fh.tell() == 0)
                fh.flush()
                os.fsync(fh.fileno())
                state["csv_bytes"] = fh.tell()
            state["next_id"] = int(tile["last_id"])
        state["done"] += 1
        state["skipped"] += int(tile["skipped"])
        state["seconds"] = round(seconds, 3)
        write_json(out / PROGRESS_JSON, state)


def _summary(out: Path, slide, clf, state: dict, settings: dict, device, seconds: float) -> dict:
    """The slide's summary from ``cells.csv`` (the finished tiles' cells)."""
    import pandas as pd

    from .blast_count import call_counts

    path = out / CELLS_CSV
    cells = pd.read_csv(path, usecols=["predicted_class", "leukemic"]) if path.is_file() and path.stat().st_size else \
        pd.DataFrame({"predicted_class": [], "leukemic": []})
    h, w = slide.shape
    return {
        "image": slide.name,
        "source": slide.source,
        "shape": [h, w],
        "pixel_size_um": list(slide.pixel_size) if slide.pixel_size else None,
        **call_counts(cells, clf),
        "segmenter": settings["segmenter"],
        "classifier": settings["classifier"],
        "diameter": settings["diameter"],
        "red_cell_diameter": state.get("red_cell_px"),
        "device": str(device),
        "tiles": state["tiles"],
        "tiles_done": state["done"],
        "tiles_skipped": state["skipped"],
        "tile_size": settings["tile_size"],
        "probability_downsample": PMAP_DOWNSAMPLE,
        "timings": {"total_s": round(seconds, 3)},
        "megapixels_per_s": round(h * w / 1e6 / seconds, 3) if seconds > 0 else None,
        "message": "" if len(cells) else "no leukocytes found in " + slide.name,
        "notes": [GRADCAM_NOTE],
        "files": list(SLIDE_FILES),
        "note": DISCLAIMER,
    }
