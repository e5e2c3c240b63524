"""Review cells, the files part: save and load ``<image>.review/`` folders, add hand-called cells to a training set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.review import ReviewError
from ..core.slide_analysis import SLIDE_REVIEW_CSV
from .layers import META_KEY, SINGLE_IMAGES_ONLY
from .review_io import review_layer, review_of, source_image


class ReviewFiles:
    """Save / Load / Add to training set of :class:`~.review.ReviewWidget` (which holds the layer under review,
    its widgets and ``_image``, ``_classifier_path``, ``table``, ``classes``)."""

    # --- save / load -----------------------------------------------------------------------------------
    def _source_file(self) -> str:
        """The file the source image layer was opened from, else the layer name."""
        name = self._layer.metadata["summary"].get("image", "image")
        source = self._viewer.layers[name].source.path if name in self._viewer.layers else None
        return str(source or name)

    def _default_review_path(self) -> Path:
        from ..core.review import review_path

        source = Path(self._source_file())
        return review_path(source if source.is_absolute() else Path.home() / source.name)

    def save(self, path=None):
        """Save the review of the cells layer to ``path`` (asked for when None); asks before replacing one."""
        from qtpy.QtWidgets import QFileDialog

        from ..core.review import REVIEW_SUFFIX, save_review

        if self._layer is None:
            self._status.value = "No cells layer to save."
            return None
        if self._layer.multiscale:
            return self._save_slide_calls(path)
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self.native, "Save review", str(self._default_review_path()),
                                                  f"napari-leukemia review (*{REVIEW_SUFFIX})")
            if not path:
                return None
        path = Path(path)
        if path.suffix != REVIEW_SUFFIX:
            path = path.with_name(path.name + REVIEW_SUFFIX)
        overwrite = path.exists()
        if overwrite and not self._ask(f"{path} exists. Replace it with this review?"):
            self._status.value = f"not saved: {path} was kept"
            return None
        try:
            image = self._image()
        except ReviewError:
            image = None  # saved without re-hashing: the hash the layer came with is kept
        layer = self._layer
        try:
            review = review_of(layer.name, layer.data, layer.features, layer.metadata, translate=layer.translate,
                               scale=layer.scale, image=image)
            save_review(path, review, overwrite=overwrite)
        except (ReviewError, OSError) as err:
            self._on_error(err)
            return None
        info = layer.metadata.get(META_KEY)
        if isinstance(info, dict):
            info.update(review=str(path), image_sha256=review.info["image_sha256"])
        self._status.value = f"saved {path}"
        return path

    def _save_slide_calls(self, path=None):
        """A whole slide's review: its cell table with the calls, as ``cells_reviewed.csv`` in the slide's result
        folder (or ``path``); asks before replacing one. Returns the path, or None."""
        from ..core.io import atomic_path

        info = self._layer.metadata.get(META_KEY, {})
        if path is None and not info.get("folder"):
            self._status.value = "not saved: this slide's result folder is not known (analyse the slide again)"
            return None
        path = Path(path or Path(info["folder"]) / SLIDE_REVIEW_CSV)
        if path.exists() and not self._ask(f"{path} exists. Replace it with this review?"):
            self._status.value = f"not saved: {path} was kept"
            return None
        try:
            with atomic_path(path) as tmp:
                self.table.to_csv(tmp, index=False)
        except OSError as err:
            self._on_error(err)
            return None
        self._status.value = f"saved {path}"
        return path

    def _ask(self, question: str) -> bool:
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self.native, "napari-leukemia", question,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def load(self, path=None):
        """Add a saved review's cells layer to the viewer and review it; returns the layer (None on error)."""
        from napari.utils.notifications import show_warning
        from qtpy.QtWidgets import QFileDialog

        from ..core.review import load_review, source_problem

        if path is None:
            path = QFileDialog.getExistingDirectory(self.native, "Load review (a .review folder)")
            if not path:
                return None
        try:
            review = load_review(path)
        except ReviewError as err:
            self._on_error(err)
            return None
        data, kwargs, _ = review_layer(review, path)
        layer = self._viewer.add_labels(data, **kwargs)
        self._cells.value = layer
        problem = source_problem(review.info, source_image(self._viewer, review.info.get("image", "")))
        self._status.value = f"loaded {path}" + (f"; warning: {problem}" if problem else "")
        if problem:
            show_warning(f"napari-leukemia: {path}: {problem}")
        return layer

    # --- training set ---------------------------------------------------------------------------------
    def export(self, folder=None):
        """Add the hand-called cells to the training set folder, in a worker; returns the worker (or None)."""
        from ..core.pipeline import get_classifier
        from ..core.training_set import export_training_set

        folder = str(folder or self._dataset.value or "").strip()
        if self._layer is None or self._worker is not None:
            return self._worker
        if self._layer.multiscale:
            self._status.value = SINGLE_IMAGES_ONLY.format(what="Exporting cells for training")
            return None
        if folder in ("", "."):
            self._status.value = "Choose a training set folder first."
            return None
        try:
            image = self._image()
        except ReviewError as err:
            self._status.value = f"Cannot export: {err}"
            return None
        layer, source = self._layer, self._source_file()
        labels, cells = np.array(layer.data, copy=True), self.table
        path, device, group, confirmed = self._classifier_path(), self._device.value, self._group.value, self._confirmed.value
        classes, red = self.classes, layer.metadata["summary"].get("red_cell_diameter")

        def work():
            crop = get_classifier(path, device).info.crop
            return export_training_set(folder, image, labels, cells, crop, source_image=source, group=group,
                                       classes=classes, include_confirmed=confirmed, red_cell_px=red)

        return self._start(work, "exporting cells...", returned=self._exported)

    def _exported(self, report):
        from . import docked
        from .train_widget import CORRECTIONS, TrainWidget

        trainers = docked(self._viewer, TrainWidget)
        for widget in trainers:
            widget.use_corrections(report.csv, self._classifier_path())
        skipped = f"; skipped: {'; '.join(report.skipped)}" if report.skipped else ""
        where = "set in Train classifier" if trainers else f"fine-tune in Train classifier (dataset: {CORRECTIONS})"
        self._status.value = (f"{report.added} cells added, {report.replaced} replaced, {report.removed} removed "
                              f"in {report.csv}; {where}{skipped}")
