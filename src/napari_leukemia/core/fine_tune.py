"""Fine-tuning on cells corrected in the viewer, with before/after figures on held-out corrections.

Research use only: not a diagnostic device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from pathlib import Path

from .config import FINE_TUNE_LR, HELD_OUT_FRACTION, SegmentConfig, TrainConfig
from .datasets import crops_for, hold_out, read_samples
from .events import Event
from .fit import fit_classifier
from .io import finite
from .scoring import score_cells

#: Fewer groups (slides) than this in the corrections: held out and validated by cell instead of by slide.
MIN_SLIDES = 3
#: Before/after figures of a fine-tuning run, in its output folder.
FINE_TUNE_REPORT = "fine_tune.json"


def fine_tune(corrections, out_dir, *, init, mix=None, mix_single_cells: bool = False, held_out: float = HELD_OUT_FRACTION,
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
        :func:`~.training_set.export_training_set` (its labels must be classes of ``init``).
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

    write_json(Path(out_dir) / FINE_TUNE_REPORT, finite({
        "corrections": str(corrections) if not isinstance(corrections, (list, tuple)) else "samples",
        "mix": (f"{len(mix)} samples" if isinstance(mix, (list, tuple)) else str(mix)) if mix else None,
        "init": str(init), "checkpoint": result["checkpoint"],
        "held_out": result["held_out"], "held_out_by": by, "before": result["before"], "after": result["after"],
    }))
    return result
