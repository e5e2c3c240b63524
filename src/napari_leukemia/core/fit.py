"""Dataset -> trained, calibrated classifier, and dataset -> metrics: the one home the CLI and the widget share.

Research use only: not a diagnostic device.

A dataset (class folders, a CSV table, or the DeepAPL manifest; see :func:`~.datasets.read_dataset`) is split
by group (patient, slide; never by image), each image's cell is cropped through the shared preprocessing,
and :func:`fit_classifier` trains on ``train``, selects and calibrates on ``val`` and never touches
``test``; :func:`evaluate_dataset` scores a checkpoint on one split. Both are generators that yield plain
progress dicts and return their result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import time
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import CropConfig, SegmentConfig, TrainConfig
from .datasets import IMMATURE_GRANULOCYTES, Sample, crops_for, hold_out, read_dataset, split_by_group
from .train import CropSet

#: The finished run's calibrated checkpoint, in the output folder.
FINAL_NAME = "classifier.safetensors"
#: Everything a run writes in its output folder.
RUN_FILES = ("run.json", "best.safetensors", "last.safetensors", "last_state.pt", "history.json", "curves.png",
             FINAL_NAME)
#: The class list of a leukaemic-vs-normal dataset (the shipped model's order).
BINARY_CLASSES = ("normal", "leukemic")
#: Parts of class names taken as leukaemic when the caller names no leukaemic classes (any case).
LEUKEMIC_WORDS = ("leukem", "leukaem", "blast", "promyelocyte", "promonocyte")
#: Whole class names taken as leukaemic (any case).
LEUKEMIC_NAMES = ("all", "aml", "apl", "cll", "cml")
#: Files cropped per step; progress is reported and a stop request is honoured between steps.
CROP_CHUNK = 8

Event = dict


def default_leukemic(classes) -> tuple[str, ...]:
    """The classes taken as leukaemic when none are named.

    A class is leukaemic when its name (any case) contains ``leukem``, ``leukaem``, ``blast``,
    ``promyelocyte`` or ``promonocyte``, or is one of ``ALL, AML, APL, CLL, CML``, and does not start with
    ``non`` / ``not_``. For DeepAPL's cell classes this gives exactly its leukaemic ones (blasts,
    promyelocytes, promonocytes).
    """
    def leukemic(name: str) -> bool:
        name = name.lower()
        if re.match(r"non|not[\W_]", name):
            return False
        return name in LEUKEMIC_NAMES or any(w in name for w in LEUKEMIC_WORDS)

    return tuple(c for c in classes if leukemic(c))


def class_order(labels) -> tuple[str, ...]:
    """``("normal", "leukemic")`` for a binary dataset with those labels, else the labels sorted."""
    labels = set(labels)
    return BINARY_CLASSES if labels == set(BINARY_CLASSES) else tuple(sorted(labels))


def resolve_classes(labels, *, leukemic=None, base=None, base_name: str = "") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The class list (logit order) and leukaemic classes of a training run.

    Parameters
    ----------
    labels : iterable of str
        The dataset's labels.
    leukemic : sequence of str, optional
        The leukaemic classes; default: those of ``base``, else :func:`default_leukemic`.
    base : ClassifierInfo, optional
        Of the checkpoint a run starts from (fine-tuning or resuming): its class list is kept and must be
        the dataset's.
    base_name : str
        Names ``base`` in messages.
    """
    found = set(labels)
    if base is not None:
        if set(base.classes) != found:
            raise ValueError(f"{base_name}: the checkpoint was trained for classes {list(base.classes)}, the dataset "
                             f"has {sorted(found)}; a run can only continue from a checkpoint of the same class list "
                             "(start from ImageNet or random weights instead)")
        classes = tuple(base.classes)
        leukemic = base.leukemic if leukemic is None else leukemic
    else:
        classes = class_order(found)
    leukemic = default_leukemic(classes) if leukemic is None else tuple(leukemic)
    unknown = [c for c in leukemic if c not in classes]
    if unknown:
        raise ValueError(f"leukaemic classes {unknown} are not classes of the dataset {list(classes)}")
    if not leukemic:
        raise ValueError(f"no class of {list(classes)} looks leukaemic; name the leukaemic classes "
                         "(--leukemic-classes)")
    if set(leukemic) == set(classes):
        raise ValueError(f"every class {list(classes)} is leukaemic; name the leukaemic classes (--leukemic-classes)")
    return classes, leukemic


def check_samples(samples: list[Sample], when: str = "") -> None:
    """Refuse a dataset that cannot train a classifier: one class, or a class with a single image."""
    counts = Counter(s.label for s in samples)
    if len(counts) < 2:
        raise ValueError(f"the dataset has {'no class' if not counts else f'one class ({next(iter(counts))})'}{when}; "
                         "a classifier needs at least two")
    for label, n in sorted(counts.items()):
        if n == 1:
            path = next(s.path for s in samples if s.label == label)
            raise ValueError(f"class {label!r} has a single image ({path}){when}; each class needs at least two "
                             "(one to train on, one to validate on)")


def read_samples(source, deepapl_labels: str = "binary") -> list[Sample]:
    """A dataset's samples: ``source`` is a folder or CSV path (see :func:`~.datasets.read_dataset`) or a list of
    :class:`~.datasets.Sample` (e.g. cells corrected in the viewer)."""
    if isinstance(source, (list, tuple)):
        return list(source)
    return read_dataset(source, deepapl_labels=deepapl_labels)


# ---------------------------------------------------------------------------------------------- cropping


@dataclass
class Crops:
    """Cropped cells: ``images`` (N, S, S, 3) uint8, the samples they belong to, and skipped files (messages)."""

    images: np.ndarray
    samples: list[Sample]
    skipped: list[str]

    def cropset(self, classes) -> CropSet:
        index = {c: i for i, c in enumerate(classes)}
        return CropSet(self.images, np.array([index[s.label] for s in self.samples], np.int64),
                       np.array([s.group for s in self.samples]))


def iter_crops(samples: list[Sample], crop: CropConfig, *, single_cells: bool = False,
               segment: SegmentConfig = SegmentConfig(), segmenter=None, cache=None, device: str = "auto",
               should_stop: Callable[[], bool] = lambda: False) -> Generator[Event, None, Crops | None]:
    """Crop each sample's cell (:func:`~.datasets.crops_for`), yielding ``{"stage": "crop", "done", "total"}``.

    Parameters
    ----------
    segmenter : path, optional
        The cellpose model for whole fields (the shipped one when omitted); loaded only if needed.
    cache : path, optional
        A crops file (``.npz``, :mod:`~.cropstore`): files cropped before with the same settings are read from
        it, the others are cropped and added (also when stopped), so a long cropping is done once.

    Returns
    -------
    Crops, or None when stopped.
    """
    from .cropstore import load_crops, save_crops

    settings = json.loads(json.dumps({"crop": crop.to_dict(), "single_cells": single_cells,
                                      "segment": None if single_cells else segment.to_dict()}))
    done: dict[str, tuple] = {}  # file key -> ("ok", crop) or ("skipped", message)
    if cache and Path(cache).is_file():
        images, table = load_crops(cache)
        stored = table.get("settings") or {}
        try:  # settings added since the file was made take their defaults
            stored["crop"] = json.loads(json.dumps(CropConfig.from_dict(stored["crop"]).to_dict()))
        except (KeyError, TypeError, ValueError):
            pass  # refused below
        if stored != settings:
            raise ValueError(f"{cache}: these crops were made with other settings ({table.get('settings')}, not "
                             f"{settings}); delete the file or choose another crops cache")
        k = 0
        for key, status, message in zip(table["files"], table["status"], table["message"]):
            if status == "ok":
                done[key] = ("ok", images[k])
                k += 1
            else:
                done[key] = ("skipped", message)
    keys = [_file_key(s.path) if cache else str(s.path) for s in samples]  # hashing pays only with a cache
    if crop.window:  # a fixed window's crop depends on the sample's red-cell diameter too
        keys = [f"{k}|red={s.red_cell_px}" for k, s in zip(keys, samples)]
    todo = [i for i, key in enumerate(keys) if key not in done]
    n_cached = len(samples) - len(todo)
    yield {"stage": "crop", "done": n_cached, "total": len(samples), "cached": n_cached}
    model = None
    if segment.method == "cellpose" and any(not (single_cells or samples[i].single_cell) for i in todo):
        from .segment import load_segmenter

        model = load_segmenter(segmenter, device)
    stopped = False
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
            yield {"stage": "crop", "done": n_cached + start + len(chunk), "total": len(samples), "cached": n_cached}
    finally:
        if cache and len(done) > n_cached:
            items = sorted(done.items())
            ok = [v[1] for _, v in items if v[0] == "ok"]
            table = {"settings": settings, "files": [k for k, _ in items], "status": [v[0] for _, v in items],
                     "message": [v[1] if v[0] == "skipped" else "" for _, v in items]}
            save_crops(cache, np.stack(ok) if ok else np.zeros((0, crop.size, crop.size, 3), np.uint8), table)
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


def _file_key(path) -> str:
    """A file's identity in the crops cache: its path, size and a hash of its bytes (a changed file is cropped
    again; a copied one, with new modification times, is not)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError:
        return f"{path}|missing"
    return f"{path}|{len(data)}|{hashlib.blake2b(data, digest_size=8).hexdigest()}"


def split_digest(splits: dict[str, list[Sample]]) -> str:
    """A short hash of which groups are in which split (to check that evaluation uses training's split)."""
    data = {k: sorted({s.group for s in v}) for k, v in splits.items()}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- training


def fit_classifier(source, out_dir, *, config: TrainConfig = TrainConfig(), size: int | None = None,
                   window: float | None = None, single_cells: bool = False, deepapl_labels: str = "binary",
                   leukemic=None, init=None, new_head: bool = False, resume: bool = False, overwrite: bool = False,
                   segment: SegmentConfig = SegmentConfig(), segmenter=None, crops_cache=None, command: str = "",
                   should_stop: Callable[[], bool] = lambda: False) -> Generator[Event, None, dict]:
    """Train a DenseNet201 on a dataset, step by step: yields progress events, returns the result.

    The dataset is split by group (:func:`~.datasets.split_by_group`, seeded by ``config.seed``); ``train``
    trains, ``val`` chooses the best epoch and fits the temperature, ``test`` is kept aside untouched.
    ``out_dir`` receives ``best.safetensors``, ``last.safetensors``, ``last_state.pt``, ``history.json``
    (every epoch), ``curves.png`` and, when training ends, the calibrated :data:`FINAL_NAME` with its
    provenance (data, settings, command, seconds, hardware, validation metrics).

    Parameters
    ----------
    source : path or list of Sample
        Class folders, a CSV ``path,label[,group][,split]``, the DeepAPL manifest, or samples.
    config : TrainConfig
        Epochs, batch size, learning rate, patience, device, seed, ImageNet initialisation ...
    size : int, optional
        Crop side in pixels; default: the resumed run's, else the ``init`` checkpoint's, else 224.
    window : float, optional
        :attr:`~.config.CropConfig.window` (0: crops fitted to each cell; else a fixed window of this many
        red-cell diameters); default as ``size``.
    single_cells : bool
        The images are single-cell crops already (no segmentation).
    deepapl_labels : {"binary", "cell_class", "cell_type"}
        Labels read from the DeepAPL manifest.
    leukemic : sequence of str, optional
        The classes whose probabilities sum to ``p_leukemic``; default: :func:`default_leukemic` (for
        leukemic/normal data: ``("leukemic",)``), or the ``init`` checkpoint's.
    init : path, optional
        Fine-tune this classifier checkpoint (its class list must be the dataset's, unless ``new_head``).
    new_head : bool
        Keep only the DenseNet201 features of ``init`` and start a new head for the dataset's classes
        (e.g. a cell-type classifier from the leukaemic-vs-normal one).
    resume : bool
        Continue the unfinished run in ``out_dir`` (same data and classes).
    overwrite : bool
        Allow replacing a finished run's :data:`FINAL_NAME`; a fresh start also removes the earlier run's files.
    segment, segmenter
        How whole fields are segmented (the centre cell is cropped), and a cellpose checkpoint.
    crops_cache : path, optional
        See :func:`iter_crops`.
    command : str
        Recorded in the provenance.
    should_stop : callable
        Polled between files and between training steps; when true the run ends cleanly, keeping
        ``last.safetensors`` (resume continues it).

    Yields
    ------
    dict
        ``{"stage": "crop", "done", "total"}``, then ``{"stage": "data", ...}`` (cells per split and class,
        skipped files), then ``{"stage": "epoch", **report}`` per epoch (see :func:`~.train.train_epochs`),
        then ``{"stage": "calibrate"}``.

    Returns
    -------
    dict
        ``stopped``, ``checkpoint`` (the final file, or ``last`` when stopped), ``out_dir``, ``history``,
        ``skipped``, and when finished ``val_metrics`` and ``temperature``.

    Raises
    ------
    FileExistsError
        ``out_dir`` holds a finished run (or an unfinished one, without ``resume``) and ``overwrite`` is off.
    ValueError
        A dataset that cannot train a classifier (one class, a class with one image, a class without training
        cells, no validation cells), or a checkpoint of another class list.
    """
    from .model import ClassifierInfo, load_classifier
    from .predict import flush_denormals
    from .segment import resolve_device

    t_start = time.perf_counter()
    out = Path(out_dir)
    if config.fast:
        flush_denormals(resolve_device(config.device))  # before any torch work, so that its threads inherit it
    if resume and init:
        raise ValueError("resume continues the run in the output folder from its own last checkpoint; "
                         "do not give a checkpoint to fine-tune (init) as well")
    if new_head and not init:
        raise ValueError("a new head needs a checkpoint whose features it starts from (init)")
    check_out_dir(out, resume=resume, overwrite=overwrite)
    samples = read_samples(source, deepapl_labels)
    check_samples(samples)
    base, base_name, init_clf = None, "", None
    if resume:
        base_name = str(out / "last.safetensors")
        base = load_classifier(base_name, "cpu").info
    elif init:
        init_clf = load_classifier(init, "cpu")
        base, base_name = init_clf.info, str(init)
    classes, leuk = resolve_classes([s.label for s in samples], leukemic=leukemic,
                                    base=None if new_head else base, base_name=base_name)
    if resume:
        if (size and size != base.crop.size) or (window is not None and window != base.crop.window):
            raise ValueError(f"{base_name} was trained on {base.crop.size} px crops (window {base.crop.window:g}); "
                             f"resume with those (not {size or base.crop.size} px, window "
                             f"{base.crop.window if window is None else window:g})")
        crop = base.crop
    else:
        crop = base.crop if init_clf is not None else CropConfig()
        crop = dataclasses.replace(crop, size=size or crop.size, window=crop.window if window is None else window)
    splits = split_by_group(samples, seed=config.seed)
    digest = split_digest(splits)
    earlier = json.loads((out / "run.json").read_text()) if resume and (out / "run.json").is_file() else {}
    if earlier:
        if earlier.get("split") != digest:
            raise ValueError(f"{out}: the dataset or seed differs from the run being resumed (its train/val/test "
                             "groups would change); resume with the same data and --seed")
    crops = yield from iter_crops(splits["train"] + splits["val"], crop, single_cells=single_cells, segment=segment,
                                  segmenter=segmenter, cache=crops_cache, device=config.device, should_stop=should_stop)
    if crops is None:
        return {"stopped": True, "checkpoint": None, "out_dir": str(out), "history": [], "skipped": []}
    check_samples(crops.samples, when=" once unusable files are skipped")
    in_val = {id(s) for s in splits["val"]}
    is_val = np.array([id(s) in in_val for s in crops.samples], bool)
    data = crops.cropset(classes)
    train, val = data.subset(~is_val), data.subset(is_val)
    del data
    crops.images = None  # the subsets hold copies
    counts = {name: {c: int((part.targets == i).sum()) for i, c in enumerate(classes)}
              for name, part in (("train", train), ("val", val))}
    counts["test"] = dict(Counter(s.label for s in splits["test"]))
    missing = [c for c, n in counts["train"].items() if n == 0]
    if missing:
        raise ValueError(f"class(es) {missing} have no training cells after the split by group; "
                         "give them images from more groups (patients, slides)")
    if len(val) == 0:
        raise ValueError("the validation split is empty: the dataset needs images from at least two groups per class")
    groups = {name: len({s.group for s in splits[name]}) for name in ("train", "val", "test")}
    summary = {"classes": list(classes), "leukemic": list(leuk), "cells": counts, "groups": groups,
               "files": len(samples), "skipped": crops.skipped, "crop_size": crop.size,
               "split": digest, "start": _start_description(config, init, earlier.get("start", "") if resume else None, new_head)}
    yield {"stage": "data", **summary}

    if not resume:
        for name in RUN_FILES:  # only with overwrite (check_out_dir); a resumed run keeps its files
            (out / name).unlink(missing_ok=True)
    from .io import write_json

    commands = earlier.get("commands", []) + [command]
    write_json(out / "run.json", {**summary, "source": str(source) if not isinstance(source, (list, tuple))
                                  else "samples", "crop": crop.to_dict(), "commands": commands})
    info = ClassifierInfo(classes=classes, leukemic=leuk, crop=crop,
                          **({"hidden": base.hidden, "dropout": base.dropout} if base is not None else {}))
    if new_head:
        from .model import with_new_head

        init_clf = with_new_head(init_clf, info)
    from .train import train_epochs

    epochs = train_epochs(train, val, info, config, out, resume=resume, init=init_clf, should_stop=should_stop)
    del init_clf
    report: dict = {}
    while True:
        try:
            report = next(epochs)
        except StopIteration:
            break
        yield {"stage": "epoch", "epochs": config.epochs, **report}
    history = json.loads((out / "history.json").read_text()) if (out / "history.json").is_file() else []
    if history:
        from .evaluate import plot_curves

        plot_curves(history, out / "curves.png")
    result = {"stopped": bool(report.get("stopped")), "out_dir": str(out), "history": history,
              "skipped": crops.skipped, "checkpoint": str(out / "last.safetensors")}
    if result["stopped"]:
        return result
    yield {"stage": "calibrate"}
    seconds = time.perf_counter() - t_start
    provenance = {
        "data": {"source": str(source) if not isinstance(source, (list, tuple)) else "samples", **summary,
                 "skipped": len(crops.skipped), "single_cells": single_cells, "deepapl_labels": deepapl_labels,
                 "segmentation": None if single_cells else segment.to_dict()},
        "command": command,
        "commands": commands,
        "train_config": config.to_dict(),
        "init": summary["start"],
        "seconds": round(seconds, 1),
        "train_seconds": round(sum(h["seconds"] for h in history), 1),
        "epochs_run": len(history),
        "best_epoch": min(history, key=lambda h: h["val_loss"])["epoch"],
    }
    final = finalize_run(out, val, config, provenance)
    return {**result, **final}


def finalize_run(out: Path, val: CropSet, config: TrainConfig, provenance: dict) -> dict:
    """Calibrate ``out/best.safetensors`` on validation (temperature) and write :data:`FINAL_NAME` with provenance."""
    import torch

    from .. import __version__
    from .evaluate import binary_metrics, expected_calibration_error, fit_temperature
    from .model import load_classifier, save_classifier
    from .predict import p_leukemic, predict_logits, probabilities
    from .segment import resolve_device

    device = resolve_device(config.device)
    best = load_classifier(out / "best.safetensors", str(device))
    logits = predict_logits(best, val.images, batch_size=max(config.batch_size, 64), fast=config.fast)
    temperature = fit_temperature(logits, val.targets)
    best.info = dataclasses.replace(best.info, temperature=temperature)
    proba = probabilities(best, logits)
    p = p_leukemic(best, proba)
    y = np.isin(val.targets, best.leukemic_index()).astype(int)
    metrics = {**binary_metrics(y, p), "ece": expected_calibration_error(y, p),
               "class_accuracy": float((proba.argmax(1) == val.targets).mean())}
    provenance = {**provenance, "temperature": temperature, "val_metrics": metrics, "hardware": hardware(device),
                  "software": {"napari_leukemia": __version__, "torch": torch.__version__},
                  "date": time.strftime("%Y-%m-%d")}
    best.info = dataclasses.replace(best.info, provenance=provenance)
    save_classifier(best, out / FINAL_NAME)
    del best
    return {"checkpoint": str(out / FINAL_NAME), "val_metrics": metrics, "temperature": temperature}


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to replace a finished run without ``overwrite``, or an unfinished one without ``resume``/``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    final = out / FINAL_NAME
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists (a finished run); pass --overwrite to replace it, "
                              "or choose another output folder")
    if resume:
        if not (out / "last_state.pt").is_file() or not (out / "last.safetensors").is_file():
            raise FileNotFoundError(f"{out}: no unfinished run to resume (last.safetensors / last_state.pt missing)")
        return
    earlier = [name for name in RUN_FILES if (out / name).exists()]
    if earlier and not overwrite:
        raise FileExistsError(f"{out} holds an earlier run ({', '.join(earlier)}); pass --resume to continue it, "
                              "--overwrite to start again, or choose another output folder")


def _start_description(config: TrainConfig, init, resumed: str | None, new_head: bool = False) -> str:
    if resumed is not None:
        return resumed if resumed.startswith("resumed") else f"resumed; first started from {resumed or 'unknown'}"
    if init:
        return f"features of {init}, new head" if new_head else f"fine-tuned from {init}"
    from .model import find_imagenet_weights

    weights = find_imagenet_weights() if config.imagenet == "auto" else config.imagenet
    return f"ImageNet weights {weights}" if weights else "random weights (no ImageNet weights found)"


def hardware(device) -> str:
    """The GPU's name, or the CPU's model and core count."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            name = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


# ---------------------------------------------------------------------------------------------- evaluation


def score_cells(classifier, images: np.ndarray, samples: list[Sample], *, truth_leukemic=None,
                batch_size: int = 64) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of a classifier on labelled cell crops.

    The binary truth is "label is leukaemic": the checkpoint's leukaemic classes when every label is one
    of its classes, else ``truth_leukemic`` (default :func:`default_leukemic` of the labels). ``p_leukemic``
    is summed over the checkpoint's leukaemic classes; a call is ``p_leukemic >= 0.5``.

    Returns
    -------
    report : dict
        ``overall`` (binary metrics and ECE), ``per_class`` (when the labels are the checkpoint's classes:
        precision/recall/F1/support per class, macro-F1, confusion matrix), ``per_label`` (n, fraction called
        leukaemic, mean p_leukemic, and for normal labels the ROC-AUC of the leukaemic cells against them),
        ``hard_pair`` (when immature granulocytes are labelled, :data:`~.datasets.IMMATURE_GRANULOCYTES`: the
        ROC-AUC of the leukaemic cells against them, the hardest look-alikes) and ``per_group`` (n, accuracy,
        mean p_leukemic, fraction called leukaemic, labels).
    y : (N,) ndarray of int
        Binary truth.
    p : (N,) ndarray of float
        ``p_leukemic``.
    """
    from .evaluate import binary_metrics, expected_calibration_error, multiclass_report
    from .pipeline import LEUKEMIC_THRESHOLD
    from .predict import p_leukemic, predict_logits, probabilities

    info = classifier.info
    labels = np.array([s.label for s in samples])
    groups = np.array([s.group for s in samples])
    own = set(labels) <= set(info.classes)
    if own and truth_leukemic is None:
        truth = tuple(info.leukemic)
    else:
        truth = default_leukemic(sorted(set(labels))) if truth_leukemic is None else tuple(truth_leukemic)
        if not set(truth) & set(labels):
            raise ValueError(f"none of the labels {sorted(set(labels))} is taken as leukaemic (leukaemic labels: "
                             f"{list(truth)}); name them (--leukemic-classes)")
    proba = probabilities(classifier, predict_logits(classifier, images, batch_size=batch_size))
    p = p_leukemic(classifier, proba)
    y = np.isin(labels, truth).astype(int)
    called = p >= LEUKEMIC_THRESHOLD
    report = {
        "classifier": classifier.name, "classes": list(info.classes), "leukemic_classes": list(info.leukemic),
        "truth_leukemic_labels": sorted(set(truth) & set(labels)), "threshold": LEUKEMIC_THRESHOLD,
        "n_cells": len(labels),
        "overall": {**binary_metrics(y, p, LEUKEMIC_THRESHOLD), "ece": expected_calibration_error(y, p)},
        "per_class": None,
    }
    pred = proba.argmax(1)
    if own:
        index = {c: i for i, c in enumerate(info.classes)}
        report["per_class"] = multiclass_report([index[x] for x in labels], pred, info.classes)
    report["per_label"] = {lab: {"n": int(m.sum()), "called_leukemic": float(called[m].mean()),
                                 "mean_p_leukemic": float(p[m].mean())}
                           for lab in sorted(set(labels)) for m in [labels == lab]}
    def auc_against(normal_labels) -> float:  # the leukaemic cells against the cells of these normal labels
        m = (y == 1) | np.isin(labels, normal_labels)
        return binary_metrics(y[m], p[m])["roc_auc"]

    for lab, row in report["per_label"].items():
        if lab not in truth:
            row["auc_vs_leukemic"] = auc_against([lab])
    hard = sorted(set(labels) & set(IMMATURE_GRANULOCYTES) - set(truth))
    if hard:
        report["hard_pair"] = {"normal_labels": hard, "n_leukemic": int(y.sum()),
                               "n_normal": int(np.isin(labels, hard).sum()), "roc_auc": auc_against(hard)}
    report["per_group"] = {}
    for g in sorted(set(groups)):
        m = groups == g
        row = {"n": int(m.sum()), "accuracy": float((called[m] == (y[m] == 1)).mean()),
               "mean_p_leukemic": float(p[m].mean()), "called_leukemic": float(called[m].mean()),
               "labels": dict(sorted(Counter(labels[m].tolist()).items()))}
        if own:
            row["class_accuracy"] = float((np.array(info.classes)[pred[m]] == labels[m]).mean())
        report["per_group"][g] = row
    return report, y, p


def write_evaluation(out_dir, report: dict, y: np.ndarray, p: np.ndarray) -> list[Path]:
    """Write ``metrics.json`` (NaN as null), ``roc.png`` (when both truths occur) and ``confusion.png``."""
    from .evaluate import plot_confusion, plot_roc
    from .io import write_json

    out = Path(out_dir)
    written = [out / "metrics.json"]
    write_json(written[0], _finite(report))
    if len(set(y.tolist())) == 2:
        plot_roc(y, p, out / "roc.png", title=f"{report['classifier']}: leukaemic vs not")
        written.append(out / "roc.png")
    if report["per_class"] is not None:
        plot_confusion(report["per_class"]["confusion_matrix"], report["classes"], out / "confusion.png")
    else:
        plot_confusion(report["overall"]["confusion_matrix"], ["not leukaemic", "leukaemic"], out / "confusion.png")
    written.append(out / "confusion.png")
    return written


def evaluate_dataset(source, classifier, out_dir, *, split: str = "test", single_cells: bool = False,
                     deepapl_labels: str = "binary", truth_leukemic=None, seed: int | None = None,
                     segment: SegmentConfig = SegmentConfig(), segmenter=None, crops_cache=None, device: str = "auto",
                     batch_size: int = 64, should_stop: Callable[[], bool] = lambda: False
                     ) -> Generator[Event, None, dict | None]:
    """Score a classifier on one split of a dataset; writes :func:`write_evaluation`'s files to ``out_dir``.

    The split is :func:`~.datasets.split_by_group`'s with ``seed`` (default: the seed the checkpoint was
    trained with), so ``test`` is the split its training kept aside; ``all`` takes every image. Cells are
    cropped with the checkpoint's own crop settings. Yields crop progress; returns the report (None if stopped),
    with ``skipped`` files and ``split_matches_training`` (None when the checkpoint does not record it).
    """
    from .model import Classifier, load_classifier

    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split must be train, val, test or all, got {split!r}")
    clf = classifier if isinstance(classifier, Classifier) else load_classifier(classifier, device)
    trained = {k: v for k, v in (clf.info.provenance or {}).items() if isinstance(v, dict)}  # older: free text
    if seed is None:
        seed = int(trained.get("train_config", {}).get("seed", 0))
    samples = read_samples(source, deepapl_labels)
    splits = split_by_group(samples, seed=seed)
    chosen = samples if split == "all" else splits[split]
    if not chosen:
        raise ValueError(f"the {split} split of {source} is empty (seed {seed}); choose another --split")
    crops = yield from iter_crops(chosen, clf.info.crop, single_cells=single_cells, segment=segment,
                                  segmenter=segmenter, cache=crops_cache, device=device, should_stop=should_stop)
    if crops is None:
        return None
    if not crops.samples:
        raise ValueError(f"no usable cell in the {split} split ({len(crops.skipped)} files skipped)")
    report, y, p = score_cells(clf, crops.images, crops.samples, truth_leukemic=truth_leukemic, batch_size=batch_size)
    recorded = trained.get("data", {}).get("split")
    report = {"dataset": str(source) if not isinstance(source, (list, tuple)) else "samples", "split": split,
              "seed": seed, "split_matches_training": None if recorded is None else recorded == split_digest(splits),
              "files": len(chosen), "skipped": crops.skipped, **report}
    write_evaluation(out_dir, report, y, p)
    return report


# ---------------------------------------------------------------------------------------------- fine-tuning

#: Fewer groups (slides) than this in the corrections: held out and validated by cell instead of by slide.
MIN_SLIDES = 3
#: Before/after figures of a fine-tuning run, in its output folder.
FINE_TUNE_REPORT = "fine_tune.json"
#: Adam learning rate for fine-tuning on corrections: 1e-3 (training from scratch) made the BCCD run forget
#: (DeepAPL test balanced accuracy 0.965 -> 0.875; docs/figures/fine_tune_bccd.json), 1e-4 did not.
FINE_TUNE_LR = 1e-4


def fine_tune(corrections, out_dir, *, init, mix=None, mix_single_cells: bool = False, held_out: float = 0.2,
              config: TrainConfig = TrainConfig(lr=FINE_TUNE_LR), deepapl_labels: str = "binary", resume: bool = False,
              overwrite: bool = False, segment: SegmentConfig = SegmentConfig(), segmenter=None, crops_cache=None,
              command: str = "", should_stop: Callable[[], bool] = lambda: False) -> Generator[Event, None, dict]:
    """Fine-tune a classifier on cells corrected in the viewer, with before/after figures on held-out corrections.

    ``held_out`` of the corrections' slides (per class, :func:`~.datasets.hold_out`) never train; they score ``init`` and the new
    checkpoint alike, written to :data:`FINE_TUNE_REPORT`. With corrections from fewer than
    :data:`MIN_SLIDES` slides, cells are held out and validated one by one instead (cells of one slide on both
    sides: the figures are then optimistic, and say so). The rest of the corrections, with the ``mix`` data
    when given (so the model does not forget what it knew), go through :func:`fit_classifier` starting from
    ``init``; ``mix`` keeps its own test split aside.

    Parameters
    ----------
    corrections : path or list of Sample
        Single-cell crops with their calls: the ``dataset.csv`` written by
        :func:`~.review.export_training_set` (its labels must be classes of ``init``).
    init : path
        The classifier the corrections were made on.
    mix : path, optional
        The original training data (class folders, CSV or DeepAPL manifest); ``mix_single_cells`` when its
        images are single-cell crops.
    held_out : float
        Fraction of the corrections' slides (or cells) set aside for the before/after figures.

    Other parameters are :func:`fit_classifier`'s. Yields its events; returns its result plus ``before``,
    ``after`` (:func:`score_cells` overall figures and class accuracy on the held-out cells, None when none
    is held out), ``held_out`` (cells) and ``held_out_by`` (``"slide"`` or ``"cell"``).
    """
    from .model import load_classifier
    from .pipeline import model_name

    if not init:
        raise ValueError("fine-tuning needs the classifier the corrections were made on (init)")
    cells = [dataclasses.replace(s, single_cell=True, split="") for s in read_samples(corrections)]
    by = "slide" if len({s.group for s in cells}) >= MIN_SLIDES else "cell"
    if by == "cell":
        cells = [dataclasses.replace(s, group=f"{s.group}#{i}") for i, s in enumerate(cells)]
    kept, held = hold_out(cells, held_out, seed=config.seed)
    held = [dataclasses.replace(s, split="test") for s in held]
    samples = kept + held
    if mix:
        samples += [dataclasses.replace(s, single_cell=mix_single_cells)
                    for s in read_samples(mix, deepapl_labels)]
    result = yield from fit_classifier(samples, out_dir, config=config, init=None if resume else init,
                                       resume=resume, overwrite=overwrite, segment=segment, segmenter=segmenter,
                                       crops_cache=crops_cache, command=command, should_stop=should_stop)
    result = {**result, "held_out": len(held), "held_out_by": by, "before": None, "after": None}
    if result["stopped"]:
        return result
    if held:
        after = load_classifier(result["checkpoint"], config.device)
        before = load_classifier(init, config.device)
        images, scored, skipped = crops_for(held, after.info.crop)
        if scored:
            for name, clf in (("before", before), ("after", after)):
                report, _, _ = score_cells(clf, images, scored)
                per_class = report["per_class"] or {}
                result[name] = {**report["overall"], "class_accuracy": per_class.get("accuracy"),
                                "classifier": model_name(clf.path)}
        result["skipped_held_out"] = skipped
    from .io import write_json

    write_json(Path(out_dir) / FINE_TUNE_REPORT, _finite({
        "corrections": str(corrections) if not isinstance(corrections, (list, tuple)) else "samples",
        "mix": (f"{len(mix)} samples" if isinstance(mix, (list, tuple)) else str(mix)) if mix else None,
        "init": str(init), "checkpoint": result["checkpoint"],
        "held_out": result["held_out"], "held_out_by": by, "before": result["before"], "after": result["after"],
    }))
    return result


def _finite(obj):
    """``obj`` with NaN and infinities replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
