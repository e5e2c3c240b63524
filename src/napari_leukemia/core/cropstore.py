"""Cell crops of a dataset, cropped once: :func:`iter_crops` and its cache file (JPEG-encoded crops plus a plain
table, no pickling)."""

from __future__ import annotations

import hashlib
import io as _io
import json
import zipfile
import zlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import CropConfig, SegmentConfig
from .datasets import Sample, crops_for
from .events import Event
from .train import CropSet

#: Files cropped per step; progress is reported and a stop request is honoured between steps.
CROP_CHUNK = 8
#: Newly cropped files after which the cache file is written again (so a killed run loses at most these).
CACHE_SAVE_EVERY = 400
_NOT_A_CACHE = "damaged or not a crops cache of napari-leukemia"
_CACHE_FIX = "delete the file (its cells are cropped again) or choose another crops cache"


def save_crops(path, images: np.ndarray, table: dict[str, list], quality: int = 95) -> None:
    """Write uint8 crops ``(N, S, S, 3)`` as JPEG bytes with per-crop columns ``table`` to an ``.npz``.

    Colour is kept at full resolution (4:4:4): chroma subsampling alone about doubles the error on small crops.
    """
    from PIL import Image

    from .io import atomic_path

    blobs = []
    for im in images:
        buf = _io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality, subsampling=0)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, data=np.concatenate(blobs) if blobs else np.zeros(0, np.uint8), offsets=offsets,
                     table=np.frombuffer(json.dumps(table).encode(), np.uint8))


def load_crops(path) -> tuple[np.ndarray, dict[str, list]]:
    """Read what :func:`save_crops` wrote: ``(images, table)``.

    Raises
    ------
    ValueError
        A damaged file or not one of ours (named, with the advice to delete it or choose another).
    """
    from PIL import Image

    with open(path, "rb") as fh:  # a missing or unreadable file fails as itself
        try:
            with np.load(fh, allow_pickle=False) as z:
                data, offsets, table = z["data"], z["offsets"], json.loads(z["table"].tobytes())
            images = [np.asarray(Image.open(_io.BytesIO(data[a:b].tobytes())).convert("RGB"))
                      for a, b in zip(offsets[:-1], offsets[1:])]
            images = np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
        except (ValueError, KeyError, IndexError, TypeError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            # from None: numpy's message would suggest allow_pickle=True, which can run any code
            raise ValueError(f"{path}: {_NOT_A_CACHE} (unreadable: {type(err).__name__}); {_CACHE_FIX}") from None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: {_NOT_A_CACHE} (its table is not a mapping); {_CACHE_FIX}")
    return images, table


@dataclass
class Crops:
    """Cropped cells: ``images`` (N, S, S, 3) uint8, the samples they belong to, and skipped files (messages)."""

    images: np.ndarray
    samples: list[Sample]
    skipped: list[str]

    def cropset(self, classes) -> CropSet:
        index = {c: i for i, c in enumerate(classes)}
        return CropSet(self.images, np.array([index[s.label] for s in self.samples], np.int64),
                       np.array([s.group for s in self.samples]), np.array([s.detail for s in self.samples], str))


def iter_crops(samples: list[Sample], crop: CropConfig, *, single_cells: bool = False,
               segment: SegmentConfig = SegmentConfig(), segmenter=None, cache=None, device: str = "auto",
               should_stop: Callable[[], bool] = lambda: False) -> Generator[Event, None, Crops | None]:
    """Crop each sample's cell (:func:`~.datasets.crops_for`), yielding :class:`~.events.Event` ``"crop"`` (files
    done of total; payload ``cached``: how many were read from the cache).

    Parameters
    ----------
    segmenter : path, optional
        The cellpose model for whole fields (the shipped one when omitted); loaded only if needed. The cache records
        its name and version, and refuses crops cut around cells another segmenter found.
    cache : path, optional
        A crops file (``.npz``, :mod:`~.cropstore`): files cropped before with the same settings are read from
        it, the others are cropped and added (every :data:`CACHE_SAVE_EVERY` files and when stopped), so a long
        cropping is done once.

    Returns
    -------
    Crops, or None when stopped.
    """
    segment_settings = None if single_cells else segment.to_dict()
    if segment_settings and segment.method == "cellpose":  # crops are only as good as the cells found
        from .pipeline import model_name
        from .segment import DEFAULT_SEGMENTER

        segment_settings["segmenter"] = model_name(segmenter or DEFAULT_SEGMENTER)
    settings = json.loads(json.dumps({"crop": crop.to_dict(), "single_cells": single_cells,
                                      "segment": segment_settings}))
    done = _read_cache(cache, settings, crop.size) if cache and Path(cache).is_file() else {}
    keys = [file_key(s.path) if cache else str(s.path) for s in samples]  # hashing pays only with a cache
    if crop.window:  # a fixed window's crop depends on the sample's red-cell diameter too
        keys = [f"{k}|red={s.red_cell_px}" for k, s in zip(keys, samples)]
    todo = [i for i, key in enumerate(keys) if key not in done]
    n_cached = len(samples) - len(todo)
    yield _crop_event(n_cached, len(samples), n_cached)
    model = None
    if segment.method == "cellpose" and any(not (single_cells or samples[i].single_cell) for i in todo):
        from .segment import load_segmenter

        model = load_segmenter(segmenter, device)
    stopped = False
    saved = len(done)

    def save():  # the whole cache, atomically: a run killed later keeps what was cropped up to here
        nonlocal saved
        items = sorted(done.items())
        ok = [v[1] for _, v in items if v[0] == "ok"]
        table = {"settings": settings, "files": [k for k, _ in items], "status": [v[0] for _, v in items],
                 "message": [v[1] if v[0] == "skipped" else "" for _, v in items]}
        save_crops(cache, np.stack(ok) if ok else np.zeros((0, crop.size, crop.size, 3), np.uint8), table)
        saved = len(done)

    try:
        for start in range(0, len(todo), CROP_CHUNK):
            if should_stop():
                stopped = True
                break
            chunk = todo[start : start + CROP_CHUNK]
            for i in chunk:
                images, kept, skipped = crops_for([samples[i]], crop, single_cells=single_cells, segment=segment,
                                                  segmenter=model)
                done[keys[i]] = ("ok", images[0]) if kept else ("skipped", skipped[0])
            if cache and len(done) - saved >= CACHE_SAVE_EVERY:
                save()
            yield _crop_event(n_cached + start + len(chunk), len(samples), n_cached)
    finally:
        if cache and len(done) > saved:
            save()
    if stopped:
        return None
    out, kept, skipped = [], [], []
    for s, key in zip(samples, keys):
        status, value = done[key]
        if status == "ok":
            out.append(value)
            kept.append(s)
        else:
            skipped.append(value)
    images = np.stack(out) if out else np.zeros((0, crop.size, crop.size, 3), np.uint8)
    return Crops(images, kept, skipped)


def _crop_event(done: int, total: int, cached: int) -> Event:
    return Event("crop", done, total, f"cropping cells: {done} of {total} files", {"cached": cached})


def _read_cache(cache, settings: dict, size: int) -> dict[str, tuple]:
    """The crops cache as ``{file key: ("ok", crop) or ("skipped", message)}``, checked against ``settings``."""
    images, table = load_crops(cache)
    stored = table.get("settings") or {}
    try:  # settings added since the file was made take their defaults
        stored["crop"] = json.loads(json.dumps(CropConfig.from_dict(stored["crop"]).to_dict()))
    except (KeyError, TypeError, ValueError):
        pass  # refused below
    found_by = [_segmenter_of(d) for d in (stored, settings)]
    if found_by[1] and found_by[0] != found_by[1]:
        raise ValueError(f"{cache}: these crops were cut around cells found by "
                         f"{found_by[0] or 'a segmenter it did not record'}, not by {found_by[1]}; delete the file "
                         "(its cells are cropped again) or choose another crops cache")
    if stored != settings:
        raise ValueError(f"{cache}: these crops were made with other settings ({table.get('settings')}, not "
                         f"{settings}); delete the file or choose another crops cache")
    files, status, message = (table.get(k) for k in ("files", "status", "message"))
    if not (all(isinstance(c, list) and all(isinstance(v, str) for v in c) for c in (files, status, message))
            and len(files) == len(status) == len(message) and set(status) <= {"ok", "skipped"}
            and status.count("ok") == len(images) and (len(images) == 0 or images.shape[1:] == (size, size, 3))):
        raise ValueError(f"{cache}: {_NOT_A_CACHE} (its table does not match its {len(images)} crops); {_CACHE_FIX}")
    ok = iter(images)
    return {key: ("ok", next(ok)) if st == "ok" else ("skipped", text) for key, st, text in zip(files, status, message)}


def _segmenter_of(settings) -> str | None:
    segment = settings.get("segment") if isinstance(settings, dict) else None
    return segment.get("segmenter") if isinstance(segment, dict) else None


def file_key(path) -> str:
    """A file's identity in the crops cache: its path, size and a hash of its bytes (a changed file is cropped
    again; a copied one, with new modification times, is not)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError:
        return f"{path}|missing"
    return f"{path}|{len(data)}|{hashlib.blake2b(data, digest_size=8).hexdigest()}"
