"""Dataset -> trained, calibrated classifier: the one training run the CLI, the widget and cross-validation share.

Research use only: not a diagnostic device.

A dataset (class folders, a CSV table, or the DeepAPL manifest; see :func:`~.datasets.read_dataset`) is split
by group (patient, slide; never by image), each image's cell is cropped through the shared preprocessing
(:func:`~.cropstore.iter_crops`), and :func:`fit_classifier` trains on ``train``, selects and calibrates on
``val`` and never touches ``test``. It is a generator that yields plain progress dicts and returns its result.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np

from .classes import check_samples, resolve_classes
from .config import CropConfig, SegmentConfig, TrainConfig
from .cropstore import iter_crops
from .datasets import read_samples, split_by_group, split_digest
from .events import Event
from .train import CropSet, check_details, read_resume_state

#: The finished run's calibrated checkpoint, in the output folder.
FINAL_NAME = "classifier.safetensors"
#: Everything a run writes in its output folder.
RUN_FILES = ("run.json", "best.safetensors", "last.safetensors", "last_state.pt", "history.json", "curves.png",
             FINAL_NAME)




#: Training cells of each class a feature SVM needs (its Platt scaling is fitted on 5 internal folds).
FEATURE_SVM_MIN_CELLS = 5


def fit_classifier(source, out_dir, *, config: TrainConfig = TrainConfig(), size: int | None = None,
                   margin: float | None = None, window: float | None = None, mask_outside: bool | None = None,
                   single_cells: bool = False, deepapl_labels: str = "binary",
                   leukemic=None, init=None, new_head: bool = False, resume: bool = False, overwrite: bool = False,
                   segment: SegmentConfig = SegmentConfig(), segmenter=None, crops_cache=None, command: str = "",
                   should_stop: Callable[[], bool] = lambda: False) -> Generator[Event, None, dict]:
    """Train a classifier (DenseNet201 unless ``config.arch`` says otherwise) on a dataset, step by step: yields
    progress events, returns the result.

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
    margin : float, optional
        :attr:`~.config.CropConfig.margin`, the context around the cell's box on each side (a fraction of the
        box side); default as ``size``.
    window : float, optional
        :attr:`~.config.CropConfig.window` (0: crops fitted to each cell; else a fixed window of this many
        red-cell diameters); default as ``size``.
    mask_outside : bool, optional
        :attr:`~.config.CropConfig.mask_outside` (neighbours outside the cell's mask, grown by the margin, painted
        over with the background colour); default as ``size``.
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
    Event
        ``"crop"`` (files), then ``"data"`` (payload: cells per split and class, skipped files, ``epochs``), then
        ``"epoch"`` per epoch (epochs done of ``config.epochs``; payload: the report of
        :func:`~.train.train_epochs`), then ``"calibrate"``.

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
    from .device import flush_denormals, resolve_device
    from .model import ARCHITECTURE, ClassifierInfo, load_classifier

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
    if resume:
        read_resume_state(out)  # a damaged state or history is refused now, not after the cropping
    samples = read_samples(source, deepapl_labels)
    check_samples(samples)
    check_details([s.detail for s in samples], config.sampling)  # before the cropping, not after it
    base, base_name, init_clf = None, "", None
    if resume:
        base_name = str(out / "last.safetensors")
        base = load_classifier(base_name, "cpu").info
    elif init:
        init_clf = load_classifier(init, "cpu")
        base, base_name = init_clf.info, str(init)
    classes, leuk = resolve_classes([s.label for s in samples], leukemic=leukemic,
                                    base=None if new_head else base, base_name=base_name)
    asked = {name: value for name, value in (("size", size or None), ("margin", margin), ("window", window),
                                             ("mask_outside", mask_outside)) if value is not None}
    if resume:
        if dataclasses.replace(base.crop, **asked) != base.crop:
            raise ValueError(f"{base_name} was trained on crops {_crop_text(base.crop)}; resume with those (not "
                             f"{_crop_text(dataclasses.replace(base.crop, **asked))})")
        crop = base.crop
    else:
        crop = dataclasses.replace(base.crop if init_clf is not None else CropConfig(), **asked)
    architecture = base.architecture if base is not None else config.arch or ARCHITECTURE
    if config.arch and config.arch != architecture:
        raise ValueError(f"{base_name} is a {architecture}; it cannot continue as a {config.arch} (leave the "
                         "architecture out to keep the checkpoint's, or start a new run)")
    splits = split_by_group(samples, seed=config.seed)
    digest = split_digest(splits)
    earlier = _read_run_description(out / "run.json") if resume and (out / "run.json").is_file() else {}
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
               "split": digest, "start": _start_description(config, init, earlier.get("start", "") if resume else None,
                                                        architecture, new_head)}
    yield Event("data", 0, config.epochs, payload={**summary, "epochs": config.epochs})

    if not resume:
        for name in RUN_FILES:  # only with overwrite (check_out_dir); a resumed run keeps its files
            (out / name).unlink(missing_ok=True)
    from .io import write_json

    commands = earlier.get("commands", []) + [command]
    write_json(out / "run.json", {**summary, "source": str(source) if not isinstance(source, (list, tuple))
                                  else "samples", "crop": crop.to_dict(), "commands": commands})
    info = ClassifierInfo(classes=classes, leukemic=leuk, crop=crop, architecture=architecture,
                          **({"hidden": base.hidden, "dropout": base.dropout} if base is not None else {}))
    if new_head:
        from .model import with_new_head

        init_clf = with_new_head(init_clf, info)
    if config.feature_svm and len(classes) != 2:
        raise ValueError(f"a feature SVM (--feature-svm) gives one leukaemic probability: it needs two classes, "
                         f"not {list(classes)}")
    if config.feature_svm and min(counts["train"].values()) < FEATURE_SVM_MIN_CELLS:
        raise ValueError(f"a feature SVM (--feature-svm) needs at least {FEATURE_SVM_MIN_CELLS} training cells of "
                         f"each class (its probabilities are calibrated on 5 internal folds); this split has "
                         f"{counts['train']}")
    from .train import train_epochs

    epochs = train_epochs(train, val, info, config, out, resume=resume, init=init_clf, should_stop=should_stop)
    del init_clf
    report: dict = {}
    while True:
        try:
            report = next(epochs)
        except StopIteration:
            break
        yield Event("epoch", report["epoch"], config.epochs, payload=report)
    history = json.loads((out / "history.json").read_text()) if (out / "history.json").is_file() else []
    if history:
        from .evaluate import plot_curves

        plot_curves(history, out / "curves.png")
    result = {"stopped": bool(report.get("stopped")), "out_dir": str(out), "history": history,
              "skipped": crops.skipped, "checkpoint": str(out / "last.safetensors")}
    if result["stopped"]:
        return result
    feature_svm = None
    if config.feature_svm:
        feature_svm = yield from _fit_feature_svm(train, info, config.seed, should_stop)
        if feature_svm is None:
            return {**result, "stopped": True}
    yield Event("calibrate", message="calibrating on the validation split")
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
        "train_cpu_seconds": round(sum(h.get("cpu_seconds", 0.0) for h in history), 1),
        "epochs_run": len(history),
        "best_epoch": min(history, key=lambda h: h["val_loss"])["epoch"],
    }
    if feature_svm is not None:
        provenance["feature_svm"] = {"fit_on": "the training split's cells", "support_vectors":
                                     len(feature_svm.support_vectors)}
    final = finalize_run(out, val, config, provenance, feature_svm)
    return {**result, **final}


def _fit_feature_svm(train: CropSet, info, seed: int, should_stop) -> Generator[Event, None, object]:
    """Hand-made features of the training crops, a few at a time (a stop is honoured between them; 10-40 ms a
    cell), then the feature SVM (:func:`~.classical.fit_feature_svm`, about 10 s for 10,000 cells, not
    interruptible); None when stopped."""
    from .classical import crop_features, fit_feature_svm

    chunk, parts = 32, []
    for start in range(0, len(train), chunk):
        if should_stop():
            return None
        parts.append(crop_features(train.images[start : start + chunk], info.crop.margin))
        done = min(start + chunk, len(train))
        yield Event("features", done, len(train), f"hand-made features of the training cells: {done} of {len(train)}")
    yield Event("features", len(train), len(train), "fitting the feature SVM")
    leukemic = [info.classes.index(c) for c in info.leukemic]
    return fit_feature_svm(np.concatenate(parts), np.isin(train.targets, leukemic), margin=info.crop.margin, seed=seed)


def finalize_run(out: Path, val: CropSet, config: TrainConfig, provenance: dict, feature_svm=None) -> dict:
    """Calibrate ``out/best.safetensors`` on validation (temperature) and write :data:`FINAL_NAME` with provenance
    (and ``feature_svm``, whose pool with the network the validation figures then measure)."""
    import torch

    from .device import hardware, package_version, resolve_device
    from .evaluate import binary_metrics, expected_calibration_error, fit_temperature
    from .model import load_classifier, save_classifier
    from .predict import feature_opinion, p_leukemic, predict_logits, probabilities

    device = resolve_device(config.device)
    best = load_classifier(out / "best.safetensors", str(device))
    logits = predict_logits(best, val.images, batch_size=max(config.batch_size, 64), fast=config.fast)
    temperature = fit_temperature(logits, val.targets)
    best.info = dataclasses.replace(best.info, temperature=temperature)
    if feature_svm is not None:  # else the one a fine-tuned checkpoint carried (kept in best.safetensors), if any
        best.feature_svm = feature_svm
    elif best.feature_svm is not None:
        provenance = {**provenance, "feature_svm": "kept from the checkpoint this run started from"}
    proba = probabilities(best, logits, feature_opinion(best, val.images))
    p = p_leukemic(best, proba)
    y = np.isin(val.targets, best.leukemic_index()).astype(int)
    metrics = {**binary_metrics(y, p), "ece": expected_calibration_error(y, p),
               "class_accuracy": float((proba.argmax(1) == val.targets).mean())}
    provenance = {**provenance, "temperature": temperature, "val_metrics": metrics, "hardware": hardware(device),
                  "software": {"napari_leukemia": package_version(), "torch": torch.__version__},
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


def _read_run_description(path: Path) -> dict:
    """The ``run.json`` of a run being resumed (its split, start and commands), refused with its name if damaged."""
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # not JSON or not UTF-8
        earlier = str(err)
    if not (isinstance(earlier, dict) and isinstance(earlier.get("commands", []), list)
            and isinstance(earlier.get("start", ""), str)):
        raise ValueError(f"{path}: damaged, not the description of a training run ({str(earlier)[:80]}); "
                         "delete it to resume without the earlier commands and split check, or start again with --overwrite")
    return earlier


def _start_description(config: TrainConfig, init, resumed: str | None, architecture: str,
                       new_head: bool = False) -> str:
    if resumed is not None:
        return resumed if resumed.startswith("resumed") else f"resumed; first started from {resumed or 'unknown'}"
    if init:
        return f"features of {init}, new head" if new_head else f"fine-tuned from {init}"
    from .model import find_imagenet_weights

    weights = find_imagenet_weights(architecture) if config.imagenet == "auto" else config.imagenet
    return f"ImageNet weights {weights}" if weights else "random weights (no ImageNet weights found)"


def _crop_text(crop: CropConfig) -> str:
    """The crop settings a resumed run must keep, in words."""
    return f"of {crop.size} px, margin {crop.margin:g}, window {crop.window:g}, masked {crop.mask_outside}"
