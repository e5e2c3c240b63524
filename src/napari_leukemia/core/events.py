"""The progress event that every long operation of core yields (analysis, cropping, training, evaluation,
cross-validation, batches of images); :func:`~napari_leukemia.core.drain` runs such a generator to its end."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    """One step of a long operation: ``done`` of ``total`` in its ``stage``, with a message and stage extras.

    Generators yield events and return their result; widgets and the command line take their progress totals
    from ``done`` and ``total`` and may stop the work between two events.

    Attributes
    ----------
    stage : str
        What is running. :func:`~.pipeline.iter_analyze_smear`: ``"load"``, ``"single_cell"``, ``"segment"``
        (payload ``tile``, ``tiles``), ``"classify"`` and ``"gradcam"`` (payload ``cells_done``, ``cells``),
        ``"finished"``, counting its 3 or 4 steps. :func:`~.tiling.iter_segment_tiled`: ``"diameter"`` per tile read for the
        diameter estimate (when it is not given), then ``"segment"`` per tile.
        :func:`~.batch.analyze_images`: ``"image"`` per image (payload ``image``, ``row``, ``skipped``).
        :func:`~.slide_analysis.iter_analyze_slide`: ``"load"``, ``"diameter"`` per tile read for the
        diameter estimate, then per tile ``"segment"`` once its cells are found (payload ``tile``, ``cells``) and
        ``"tile"`` once done (payload ``tile``, ``cells``, ``skipped``, ``finished``), and ``"classify"`` per batch of
        cells across tiles (payload ``cells``).
        :func:`~.cropstore.iter_crops`: ``"crop"`` per chunk of files (payload ``cached``).
        :func:`~.fit.fit_classifier`: ``"crop"``, ``"data"`` (payload: cells per split and class, skipped files,
        ``epochs``), ``"epoch"`` (payload: the epoch's report, see :func:`~.train.train_epochs`),
        ``"calibrate"``. :func:`~.crossval.cross_validate`: ``"fold"`` (payload ``fold``, ``status``), each
        fold's own events (payload ``fold`` added), ``"other"`` (payload ``fold``, ``name``), ``"report"``.
    done, total : int
        Steps done of ``total`` (0 of 0 where the stage counts nothing).
    message : str
        A line for a status bar or log ("" where the stage has none).
    payload : dict
        Stage-specific extras, as listed under ``stage``.
    """

    stage: str
    done: int = 0
    total: int = 0
    message: str = ""
    payload: dict = field(default_factory=dict)

    def with_payload(self, **extra) -> Event:
        """This event with ``extra`` added to its payload."""
        return dataclasses.replace(self, payload={**self.payload, **extra})
