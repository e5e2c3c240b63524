"""Cross-validation by patient: K classifiers, each scored on the patients it never saw, and the per-patient table.

Research use only: not a diagnostic device.

Every recipe and model choice is made on this report, not on one split: :func:`patient_folds` deals the groups
(patients) into K folds balanced by their stratum (DeepAPL: the diagnosis); :func:`cross_validate` trains one
:func:`~.fit.fit_classifier` run per fold on the other folds (its own train / val split by patient) and scores
the fold's patients, fold by fold, resumable; :func:`~.cv_report.cv_report` pools the out-of-fold calls into cell-level
figures and the per-patient blast-equivalent percentages a hematologist reads.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

import numpy as np

from .config import CV_FOLDS, SPLIT_FRACTIONS, SegmentConfig, TrainConfig
from .cropstore import iter_crops
from .cv_report import cv_report, other_data_report, write_cv_report
from .datasets import Sample, read_samples, split_by_group
from .events import Event
from .fit import FINAL_NAME, fit_classifier
from .io import finite, write_json

#: Files of a cross-validation in its output folder (each fold's run is in ``fold_<i>/``).
CV_FILES = ("folds.json", "cv.json", "predictions.csv", "patients.csv", "patients.png")
#: Out-of-fold calls of one fold, in its run folder: written last, so a fold with it is complete.
FOLD_PREDICTIONS = "predictions.csv"
#: Where ``cross_validate(final=True)`` trains the model to use, on every patient.
FINAL_DIR = "final"
#: Columns of the out-of-fold predictions; ``p_network`` and ``p_features`` are filled when the fold's checkpoint
#: carries a feature SVM (``p_leukemic`` is then their mean), so that either part can be reported alone.
PREDICTION_COLUMNS = ("fold", "path", "group", "stratum", "label", "detail", "truth", "p_leukemic", "p_network",
                      "p_features")
MIN_FOLDS = 3


def patient_folds(samples: list[Sample], k: int = CV_FOLDS, seed: int = 0) -> list[list[str]]:
    """Deal the groups (patients) into ``k`` folds, balanced by stratum and by cell count.

    Within each stratum (a group's :attr:`~.datasets.Sample.stratum`, else its most frequent label), groups are
    shuffled (seeded), taken largest first, and each goes to the fold with the fewest groups of that stratum,
    then the fewest cells. Returns the sorted groups of each fold.

    Raises
    ------
    ValueError
        ``k`` below :data:`MIN_FOLDS`, fewer groups than folds, or a dataset without groups (every image its
        own group: no patient IDs, so cells of one patient would land on both sides).
    """
    if k < MIN_FOLDS:
        raise ValueError(f"cross-validation needs at least {MIN_FOLDS} folds, got {k}")
    cells = Counter(s.group for s in samples)
    if len(cells) == len(samples) and len(samples) > 1:
        raise ValueError("every image is its own group: the dataset gives no patient (or slide) IDs, so cells of one "
                         "patient could be trained on and scored; give a group column (CSV: path,label,group)")
    if len(cells) < k:
        raise ValueError(f"{len(cells)} groups (patients) cannot fill {k} folds; use fewer folds")
    strata: dict[str, Counter] = {}
    for s in samples:
        strata.setdefault(s.group, Counter())[s.stratum or s.label] += 1
    by_stratum: dict[str, list[str]] = {}
    for g, counts in sorted(strata.items()):
        by_stratum.setdefault(counts.most_common(1)[0][0], []).append(g)
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    size = [0] * k
    for _, groups in sorted(by_stratum.items()):
        rng.shuffle(groups)
        in_fold = [0] * k
        for g in sorted(groups, key=lambda g: -cells[g]):  # stable: ties keep the shuffled order
            i = min(range(k), key=lambda j: (in_fold[j], size[j]))
            folds[i].append(g)
            in_fold[i] += 1
            size[i] += cells[g]
    return [sorted(f) for f in folds]


def cross_validate(source, out_dir, *, k: int = CV_FOLDS, config: TrainConfig = TrainConfig(), size: int | None = None,
                   margin: float | None = None, window: float | None = None, mask_outside: bool | None = None,
                   single_cells: bool = False, deepapl_labels: str = "binary",
                   leukemic=None, init=None, new_head: bool = False, overwrite: bool = False,
                   segment: SegmentConfig = SegmentConfig(), segmenter=None, crops_cache=None, command: str = "",
                   extra_train=None, score_also: dict | None = None, final: bool = False,
                   only_folds: Sequence[int] | None = None,
                   should_stop: Callable[[], bool] = lambda: False) -> Generator[Event, None, dict]:
    """Train and score one classifier per fold of patients; resumable fold by fold.

    Every group of the dataset takes part, whatever split it is given (DeepAPL's ``train`` and ``test``
    patients alike). Fold ``i`` trains :func:`~.fit.fit_classifier` in ``out_dir/fold_<i>`` on the other
    folds (which it splits by patient into train and val, seeded by ``config.seed``) and then scores its own
    patients into ``fold_<i>/predictions.csv``. Run again with the same arguments, it skips finished folds,
    resumes a stopped one from its last epoch and starts the rest; ``folds.json`` records the folds, and a
    different dataset, seed or K is refused (``overwrite`` starts again). When every fold is done,
    :func:`~.cv_report.cv_report` writes ``cv.json``, ``predictions.csv``, ``patients.csv`` and ``patients.png``.

    Parameters
    ----------
    k : int
        Number of folds (at least :data:`MIN_FOLDS`).
    init : path, optional
        Start every fold from this checkpoint. Its figures are honest only when it never saw the patients of
        the folds (the report records it).
    extra_train : dataset, optional
        Cells of other sources (e.g. another lab's normal cells) added to the training of every fold (never to
        its validation, which stays the fold's own patients, drawn as without them) and never scored; they are
        part of the fold plan.
    score_also : dict of name to dataset, optional
        Data no fold trains on (e.g. other labs' cells, disjoint from ``extra_train``), scored by every fold's
        classifier into ``fold_<i>/other_<name>.csv``; the report's ``other_data`` gives each one's call rate
        per cell class, per fold and averaged over the folds.

    final : bool
        Then train the model to use on every patient (split into train and val only, as a fold's training patients
        are; the ``extra_train`` cells too) in ``out_dir/final``, resumable like a fold. Its
        ``classifier.safetensors`` carries this cross-validation as its measured figures: ``cv_rates`` (so that
        the slide's blast-equivalent interval includes the classifier's error rates) and ``cross_validation``
        (pooled figures, per-patient errors, other data, the report's path).

    only_folds : sequence of int, optional
        Train and score these folds only (0-based; none, with ``final``), so that several processes, one per fold,
        can share a cross-validation (each on its own machine or cores, with the same arguments and output folder);
        the report is written by whichever finds every fold done, and a run without it writes it too, skipping
        finished folds. With ``final``, this process then trains the final model without waiting for the other
        folds; the cross-validation's figures join it when both it and the report exist (added by whichever
        process finds them so). Not with ``overwrite``.

    Other parameters are :func:`~.fit.fit_classifier`'s; one crops cache serves every fold.

    Yields
    ------
    Event
        ``"fold"`` before each fold (folds done of K; payload ``fold``, ``status``), then the fold's own events
        (payload ``fold`` added), ``"other"`` before scoring ``score_also`` data (payload ``fold``, ``name``),
        then ``"report"``.

    Returns
    -------
    dict
        ``stopped``, ``out_dir``, ``folds_done`` and, when finished, ``report`` (see :func:`~.cv_report.cv_report`);
        with ``only_folds``, ``waiting_for`` (the folds not done yet) instead of ``report`` while other folds run;
        ``final`` (the final classifier's path) once it is trained and carries the figures.
    """
    from .model import load_classifier
    from .predict import feature_opinion, network_part, predict_logits, probabilities
    from .scoring import score_cells

    out = Path(out_dir)
    crop = {"size": size, "margin": margin, "window": window, "mask_outside": mask_outside}  # every fold's and the final's
    chosen = set(range(k)) if only_folds is None else set(only_folds)
    if only_folds is not None:
        if not (chosen or final) or not chosen <= set(range(k)):
            raise ValueError(f"folds {sorted(chosen)}: a {k}-fold cross-validation has folds 0 to {k - 1}")
        if overwrite:
            raise ValueError("a run of some folds cannot overwrite the cross-validation; run over every fold for that")
    samples = read_samples(source, deepapl_labels)
    folds = patient_folds(samples, k, seed=config.seed)
    extra = [dataclasses.replace(s, split="") for s in read_samples(extra_train, deepapl_labels)] if extra_train else []
    overlap = {s.group for s in extra} & {s.group for s in samples}
    if overlap:
        raise ValueError(f"extra training data shares groups with the cross-validated data ({sorted(overlap)[:3]}): "
                         "their cells would be trained on and scored")
    plan = {"k": k, "seed": config.seed, "folds": folds, "dataset": _digest(samples),
            **({"extra_train": _digest(extra)} if extra else {})}
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    # Looked at before folds.json: a process starting the same run beside this one (--fold) writes folds.json first.
    held = out.is_dir() and any(out.iterdir())
    earlier = out / "folds.json"
    if earlier.is_file() and not overwrite:
        try:
            recorded = json.loads(earlier.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{earlier}: not readable ({err}); pass --overwrite to start again") from err
        if {key: recorded.get(key) for key in {*plan, "extra_train"}} != {"extra_train": None, **plan}:
            raise ValueError(f"{out} holds a cross-validation of other data, folds or seed ({earlier}); rerun it "
                             "with the same arguments to resume, pass --overwrite to start again, or choose "
                             "another output folder")
    elif overwrite:
        import shutil

        for name in CV_FILES:
            (out / name).unlink(missing_ok=True)
        for i in range(max(k, 64)):
            if (out / f"fold_{i}").is_dir():
                shutil.rmtree(out / f"fold_{i}")
    elif held:
        raise FileExistsError(f"{out} is not empty and holds no cross-validation; choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    commands = (json.loads(earlier.read_text()).get("commands", []) if earlier.is_file() and not overwrite else [])
    write_json(earlier, {**plan, "commands": commands + [command], "init": str(init) if init else None,
                         "extra_train_source": str(extra_train) if extra else None, "train_config": config.to_dict()})

    cleared = [dataclasses.replace(s, split="") for s in samples]
    done = 0
    for i, fold in enumerate(folds):
        run_dir = out / f"fold_{i}"
        if (run_dir / FOLD_PREDICTIONS).is_file():
            done += 1
            if i in chosen:
                yield _fold_event(i, k, done, "done")
            continue
        if i not in chosen:
            continue
        held = set(fold)
        fold_samples = [dataclasses.replace(s, split="test") if s.group in held else s for s in cleared]
        if extra:  # the fold's own patients are split as without them; the extra cells only train
            drawn = {s.group: name for name, part in split_by_group(fold_samples, seed=config.seed).items() for s in part}
            fold_samples = ([dataclasses.replace(s, split=drawn[s.group]) for s in fold_samples]
                            + [dataclasses.replace(s, split="train") for s in extra])
        trained = (run_dir / FINAL_NAME).is_file()
        resume = not trained and (run_dir / "last_state.pt").is_file()
        status = "scoring" if trained else "resuming" if resume else "training"
        yield _fold_event(i, k, done, status)
        if not trained:
            run = fit_classifier(fold_samples, run_dir, config=config, **crop, single_cells=single_cells,
                                 leukemic=leukemic, init=None if resume else init,
                                 new_head=new_head and not resume, resume=resume, overwrite=not resume,
                                 segment=segment, segmenter=segmenter, crops_cache=crops_cache,
                                 command=f"{command} [fold {i} of {k}]", should_stop=should_stop)
            result = yield from _tag(run, i)
            if result["stopped"]:
                return {"stopped": True, "out_dir": str(out), "folds_done": done}
        clf = load_classifier(run_dir / FINAL_NAME, config.device)
        test = [s for s in fold_samples if s.split == "test"]
        crops = yield from _tag(iter_crops(test, clf.info.crop, single_cells=single_cells, segment=segment,
                                           segmenter=segmenter, cache=crops_cache, device=config.device,
                                           should_stop=should_stop), i)
        if crops is None:
            return {"stopped": True, "out_dir": str(out), "folds_done": done}
        if not crops.samples:
            raise ValueError(f"fold {i}: no usable cell among its {len(test)} files")
        p_features = feature_opinion(clf, crops.images)  # once: kept beside the mean it enters
        proba = probabilities(clf, predict_logits(clf, crops.images), p_features)
        report, y, p = score_cells(clf, crops.images, crops.samples, proba=proba)
        write_json(run_dir / "fold_metrics.json", finite({**report, "skipped": crops.skipped}))
        parts = ([{}] * len(p) if p_features is None else
                 [{"p_network": f"{n:.6f}", "p_features": f"{f:.6f}"}
                  for n, f in zip(network_part(p, p_features), p_features)])
        rows = [{"fold": i, "path": str(s.path), "group": s.group, "stratum": s.stratum, "label": s.label,
                 "detail": s.detail, "truth": int(t), "p_leukemic": f"{q:.6f}", **part}
                for s, t, q, part in zip(crops.samples, y, p, parts)]
        _write_rows(run_dir / FOLD_PREDICTIONS, rows)
        del clf, crops
        done += 1
    other = {name: read_samples(data, deepapl_labels) for name, data in (score_also or {}).items()}
    for i in sorted(chosen):
        for name, data in other.items():
            if not _other_csv(out / f"fold_{i}", name).is_file():
                yield Event("other", message=f"fold {i + 1}: scoring {name}", payload={"fold": i, "name": name})
                scored = yield from _score_other(out / f"fold_{i}", i, name, data, config.device, single_cells,
                                                 segment, segmenter, crops_cache, should_stop)
                if not scored:
                    return {"stopped": True, "out_dir": str(out), "folds_done": done}
    waiting = [i for i in range(k) if not (out / f"fold_{i}" / FOLD_PREDICTIONS).is_file()
               or not all(_other_csv(out / f"fold_{i}", name).is_file() for name in other)]
    result = {"stopped": False, "out_dir": str(out), "folds_done": done}
    report = None
    if not waiting:
        yield Event("report", message="writing the cross-validation report")
        rows = [row for i in range(k) for row in _read_rows(out / f"fold_{i}" / FOLD_PREDICTIONS)]
        _write_rows(out / "predictions.csv", rows)
        metrics = [json.loads((out / f"fold_{i}" / "fold_metrics.json").read_text()) for i in range(k)]
        report = cv_report(rows, fold_metrics=metrics)
        if other:
            report["other_data"] = {name: other_data_report([_read_rows(_other_csv(out / f"fold_{i}", name))
                                                             for i in range(k)]) for name in other}
        report = {"k": k, "seed": config.seed, "init": str(init) if init else None, "commands": commands + [command],
                  "extra_train": str(extra_train) if extra else None, "extra_train_cells": len(extra),
                  "train_config": config.to_dict(), **report}
        write_cv_report(out, report)
        result["report"] = report
    else:  # only with only_folds: other processes run those
        result["waiting_for"] = waiting
    run_dir = out / FINAL_DIR
    final_path = run_dir / FINAL_NAME
    if final and not final_path.is_file():
        resume = (run_dir / "last_state.pt").is_file()
        yield Event("final", k, k, f"{'resuming' if resume else 'training'} the final model on every patient "
                                   f"in {run_dir}")
        drawn = split_by_group(cleared, fractions=(*SPLIT_FRACTIONS[:2], 0.0), seed=config.seed)
        final_samples = ([dataclasses.replace(s, split=name) for name, part in drawn.items() for s in part]
                         + [dataclasses.replace(s, split="train") for s in extra])
        trained = yield from fit_classifier(final_samples, run_dir, config=config, **crop, single_cells=single_cells,
                                            leukemic=leukemic, init=None if resume else init, new_head=new_head,
                                            resume=resume, segment=segment, segmenter=segmenter,
                                            crops_cache=crops_cache, command=command, should_stop=should_stop)
        if trained["stopped"]:
            return {**result, "stopped": True}
    if report is None and (out / "cv.json").is_file():  # written meanwhile by the process of the last fold
        report = json.loads((out / "cv.json").read_text())
    if report is not None and final_path.is_file():  # whichever process finds both adds the figures
        _carry_cross_validation(final_path, out, report)
        result["final"] = str(final_path)
    return result


def _carry_cross_validation(path: Path, out: Path, report: dict) -> None:
    """Write the cross-validation's figures into the final classifier's provenance (the file is rewritten)."""
    from .model import load_classifier, save_classifier

    clf = load_classifier(path, "cpu")
    summary = {"report": str(out / "cv.json"), "k": report["k"], "n_patients": report["n_patients"],
               "n_cells": report["n_cells"], "pooled": report["pooled"], "patient_errors": report["patient_errors"],
               "patient_errors_adjusted": report.get("patient_errors_adjusted"),
               "other_data": {name: {"n_cells": d["n_cells"], "called_leukemic": d["called_leukemic"]}
                              for name, d in report.get("other_data", {}).items()}}
    carried = {"cv_rates": report["cv_rates"], "cross_validation": summary}
    if all(clf.info.provenance.get(key) == value for key, value in carried.items()):
        return  # carried already (by the process that trained it, or an earlier run)
    clf.info = dataclasses.replace(clf.info, provenance={**clf.info.provenance, **carried})
    save_classifier(clf, path)


def _score_other(run_dir: Path, fold: int, name: str, samples, device, single_cells, segment, segmenter,
                 crops_cache, should_stop) -> Generator[Event, None, bool]:
    """Score data no fold trained on with fold ``fold``'s classifier into ``run_dir/other_<name>.csv``."""
    from .model import load_classifier
    from .predict import classify_crops, p_leukemic

    clf = load_classifier(run_dir / FINAL_NAME, device)
    crops = yield from _tag(iter_crops(samples, clf.info.crop, single_cells=single_cells, segment=segment,
                                       segmenter=segmenter, cache=crops_cache, device=device,
                                       should_stop=should_stop), fold)
    if crops is None:
        return False
    p = p_leukemic(clf, classify_crops(clf, crops.images)) if crops.samples else []
    rows = [{"fold": fold, "path": str(s.path), "group": s.group, "stratum": s.stratum, "label": s.label,
             "detail": s.detail, "truth": int(s.label in clf.info.leukemic), "p_leukemic": f"{q:.6f}"}
            for s, q in zip(crops.samples, p)]
    _write_rows(_other_csv(run_dir, name), rows)
    return True


def _other_csv(run_dir: Path, name: str) -> Path:
    """Where a fold scores the data set ``name`` that no fold trained on (``score_also``)."""
    return run_dir / f"other_{name}.csv"


def _digest(samples) -> str:
    return hashlib.sha256(json.dumps(sorted([str(s.path), s.label, s.group] for s in samples)).encode()).hexdigest()[:16]


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _tag(gen, fold: int):
    """Re-yield a generator's events with ``fold`` added to their payload; return its value."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        yield event.with_payload(fold=fold)


def _fold_event(fold: int, k: int, done: int, status: str) -> Event:
    return Event("fold", done, k, f"fold {fold + 1}/{k}: {status}", {"fold": fold, "status": status})


def _write_rows(path: Path, rows: list[dict]) -> None:
    from .io import write_csv

    write_csv(path, rows, PREDICTION_COLUMNS)
