"""Dock widgets. Each forwards to the same core functions the console and the CLI call."""

from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, Label, PushButton, create_widget
from qtpy.QtCore import Qt

from ..core.config import DEVICE_CHOICES, DISCLAIMER, LEUKEMIC_THRESHOLD, SEGMENTER_CHOICES, AnalysisConfig
from . import docked
from .layers import META_KEY, our_layers, show_result
from .worker_widget import WorkerWidget, chosen_path

#: The Analyze widget's settings at start: the core's defaults, with Grad-CAM off (slow on a CPU; Review cells makes
#: the heat map of one cell on demand).
WIDGET_DEFAULTS = AnalysisConfig(gradcam=False)


def analyze_widgets(viewer) -> list["AnalyzeWidget"]:
    """The Analyze widgets docked in ``viewer`` (:func:`~napari_leukemia._napari.docked`)."""
    return docked(viewer, AnalyzeWidget)


class AnalyzeWidget(WorkerWidget):
    """Analyze smear: segment, classify and explain every leukocyte of an image layer.

    Runs in a worker thread with a napari progress bar; Cancel stops it at the next step.
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, labels=True)
        d = WIDGET_DEFAULTS
        self._image = create_widget(annotation=napari.layers.Image, label="image")
        self._method = ComboBox(choices=list(SEGMENTER_CHOICES), value=d.segment.method, label="segmenter")
        self._segmenter = FileEdit(mode="r", filter="*.safetensors", label="cellpose model", value="")
        from ..core.model import SHIPPED_CLASSIFIERS

        self._shipped = ComboBox(choices=list(SHIPPED_CLASSIFIERS), value="leukemic", label="shipped classifier",
                                 tooltip="leukemic: leukaemic vs normal; cell_type: the DeepAPL cell types "
                                         "(cells coloured by type). A checkpoint file below replaces it.")
        self._classifier = FileEdit(mode="r", filter="*.safetensors", label="classifier file", value="")
        self._diameter = FloatSpinBox(value=d.segment.diameter or 0, min=0, max=2000, step=5, label="cell diameter (px)",
                                      tooltip="Expected leukocyte diameter in pixels; 0 estimates it from the stain")
        self._red_cell = FloatSpinBox(value=d.red_cell_diameter or 0, min=0, max=500, step=1, label="red-cell diameter (px)",
                                      tooltip="Scale of cell-type crops (a fixed window of red cells); 0 measures it "
                                              "on the image. Unused by the leukaemic-vs-normal classifier")
        self._device = ComboBox(choices=list(DEVICE_CHOICES), value=d.device, label="device")
        self._gradcam = CheckBox(value=d.gradcam, text="Grad-CAM heat map of every cell (slower)",
                                 tooltip="where the classifier looked; Review cells makes it for one cell on demand")
        self._use_cells = CheckBox(value=False, text="re-classify my edited cells (no re-segmentation)")
        self._single = CheckBox(value=d.single_cell, text="one cell at the centre (single-cell image, any magnification)",
                                tooltip="CellaVision exports and single-cell sets: only the centre cell is reported, "
                                        "found by segmentation or else taken as a centred crop (found_by)")
        self._more = self._more_settings("segmenter, model files, cell sizes, device", [
            self._method, self._segmenter, self._classifier, self._diameter, self._red_cell, self._device])
        self._run_button = PushButton(text="Analyze")
        self._cancel_button = PushButton(text="Cancel", enabled=False)
        self._save_folder = FileEdit(mode="d", label="save to folder", value="",
                                     tooltip="results go to <folder>/<image name>/: labels.tif, cells.csv, summary.json, "
                                             "overlay.png (the analysis as computed; corrected calls are saved from "
                                             "Review cells)")
        self._save_button = PushButton(text="Save results", enabled=False)
        self._status = Label(value="")
        self._legend = Label(value="", tooltip="the cells layer's colours, and how many cells have each call")
        self._legend.native.setTextFormat(Qt.TextFormat.RichText)
        self._summary = Label(value="")
        self._disclaimer = Label(value=DISCLAIMER)
        self._segmenter.native.setToolTip("empty: the shipped leukocyte model")
        self._classifier.native.setToolTip("empty: the shipped classifier chosen above")
        self._run_button.changed.connect(self.run)
        self._cancel_button.changed.connect(self.cancel)
        self._save_button.changed.connect(self.save)
        self._last = None  # (result, image, name) of the last analysis shown
        self._slide_folder = None  # where the running slide analysis writes
        self._body.extend([
            self._image, self._shipped, self._more, self._method, self._segmenter, self._classifier, self._diameter,
            self._red_cell, self._device, self._gradcam, self._single, self._use_cells, self._run_button,
            self._cancel_button,
            self._save_folder, self._save_button, self._bar, self._status, self._legend, self._summary, self._disclaimer,
        ])
        self._fit_dock()
        viewer.layers.events.inserted.connect(self._image.reset_choices)
        viewer.layers.events.removed.connect(self._image.reset_choices)

    @property
    def classifier(self) -> str:
        """The chosen classifier checkpoint file, else the name of the chosen shipped one."""
        return chosen_path(self._classifier, file=True) or self._shipped.value

    def use_classifier(self, path) -> None:
        """Select a classifier checkpoint for the next analysis (e.g. one just trained), shown under more settings."""
        self._classifier.value = str(path)
        self._more.value = True
        self._status.value = f"classifier: {Path(path).name}"

    # --- settings -> core -------------------------------------------------------------------------
    def _config(self):
        from ..core.config import SegmentConfig

        seg = SegmentConfig(method=self._method.value, diameter=self._diameter.value or None)
        return AnalysisConfig(device=self._device.value, gradcam=self._gradcam.value, segment=seg,
                              red_cell_diameter=self._red_cell.value or None, single_cell=self._single.value)

    def run(self):
        """Start the analysis of the selected image layer in a worker; returns the worker."""
        from ..core.pipeline import iter_analyze_smear

        layer = self._image.value
        if layer is None:
            self._status.value = "Open a smear image first (File > Open, or File > Open Sample > napari-leukemia)."
            return None
        if self._worker is not None:
            return self._worker
        if layer.multiscale:  # before anything reads the layer's (or its cells') pixels
            return self._run_slide(layer)
        labels = calls = None
        if self._use_cells.value:
            cells = our_layers(self._viewer, layer.name).get("cells")
            if cells is None:
                self._status.value = f"No cells layer of {layer.name!r} to re-classify; run Analyze first."
                return None
            labels, calls = np.array(cells.data, copy=True), cells.features.copy()
        data = np.asarray(layer.data)
        gen = iter_analyze_smear(data, segmenter=chosen_path(self._segmenter, file=True), classifier=self.classifier,
                                 config=self._config(), labels=labels, name=layer.name)
        return self._start(gen, "starting", yielded=self._on_progress, progress=f"Analyzing {layer.name}",
                           returned=lambda result: self._show(result, layer, calls, data))

    def _run_slide(self, layer):
        """Analyse a multiscale layer (a whole slide) tile by tile into ``<save folder>/<layer name>/``
        (:func:`~..core.slide_analysis.iter_analyze_slide`): memory stays bounded, a result found there is
        resumed (a cancelled run continues where it stopped) and never replaced."""
        from ..core.batch import result_folders
        from ..core.slide import open_slide
        from ..core.slide_analysis import PROGRESS_JSON, iter_analyze_slide

        folder = str(self._save_folder.value or "").strip()
        if folder in ("", "."):
            self._status.value = (f"{layer.name} is a whole slide (multiscale): its results are written as it goes. "
                                  "Choose 'save to folder' first.")
            return None
        if self._use_cells.value:
            self._status.value = "Re-classifying edited cells works on single images, not on whole slides."
            return None
        target = Path(folder) / result_folders([layer.name])[0]
        path = layer.metadata.get(META_KEY, {}).get("path")  # opened by our reader: the file carries the pixel size
        slide = path if path and Path(path).is_file() else open_slide(list(layer.data), name=layer.name)
        self._slide_folder = target
        gen = iter_analyze_slide(slide, target, segmenter=chosen_path(self._segmenter, file=True), classifier=self.classifier,
                                 config=self._config(), resume=(target / PROGRESS_JSON).is_file())
        return self._start(gen, "starting", yielded=self._on_progress, progress=f"Analyzing {layer.name} tile by tile",
                           returned=lambda summary: self._show_slide(summary, layer, target))

    def _show_slide(self, summary, layer, folder):
        """Show a finished slide analysis from ``folder`` as multiscale layers; a stopped one says how to go on."""
        from ..core.slide_analysis import read_slide_result

        if summary.get("stopped"):
            self._status.value = (f"stopped after {summary['tiles_done']} of {summary['tiles']} tiles; "
                                  f"Analyze again continues from there ({folder})")
            return
        result = read_slide_result(folder)
        classes, leukemic = result.summary["classes"], result.summary["leukemic_classes"]
        shown = show_result(self._viewer, result, layer.name, classes, leukemic, translate=tuple(layer.translate)[-2:],
                            scale=tuple(layer.scale)[-2:], map_downsample=result.summary["probability_downsample"])
        shown[-1].metadata[META_KEY]["folder"] = str(folder)  # where Review saves the calls
        self._legend.value = format_legend(classes, leukemic, result.summary.get("per_class", {}))
        self._summary.value = format_summary(result.summary)
        self._status.value = result.summary["message"] or f"done: results in {folder}"
        self._last = None  # already saved, as it went
        self._save_button.enabled = False

    def cancel(self):
        """Ask the running analysis to stop at its next step; nothing is added to the viewer."""
        if self._worker is not None:
            self._worker.quit()
            self._status.value = "cancelling..."

    # --- worker callbacks (main thread) ---------------------------------------------------------
    def _show(self, result, layer, calls=None, image=None):
        """Show a result; ``calls``: the re-classified cells layer's table, whose manual calls are carried over."""
        if calls is not None:
            from dataclasses import replace

            from ..core.review import carry_annotations

            result = replace(result, cells=carry_annotations(result.cells, calls))
        classes = result.summary["classes"]
        leukemic = result.summary["leukemic_classes"]
        show_result(self._viewer, result, layer.name, classes, leukemic,
                    translate=tuple(layer.translate)[-2:], scale=tuple(layer.scale)[-2:])
        self._legend.value = format_legend(classes, leukemic, result.summary.get("per_class", {}))
        self._summary.value = format_summary(result.summary)
        self._status.value = result.summary["message"] or "done"
        self._last = (result, image, layer.name)
        self._save_button.enabled = image is not None

    def save(self):
        """Write the last analysis to ``<save folder>/<image name>/`` (:func:`~..core.results.save_result`);
        existing results there are never replaced. Returns the folder, or None."""
        from ..core.batch import result_folders
        from ..core.results import save_result

        folder = str(self._save_folder.value or "").strip()
        if self._last is None or self._last[1] is None:
            self._status.value = "Analyze an image first."
            return None
        if folder in ("", "."):
            self._status.value = "Choose a folder to save to."
            return None
        result, image, name = self._last
        target = Path(folder) / result_folders([name])[0]
        try:
            save_result(result, target, image)
        except (OSError, ValueError) as err:  # FileExistsError included: never replaced unasked
            self._status.value = f"Not saved: {err}" + (" (choose another folder)" if target.exists() else "")
            return None
        self._status.value = f"saved to {target}"
        return target

    def _set_running(self, running: bool):
        self._run_button.enabled = not running
        self._cancel_button.enabled = running

    def _on_progress(self, event):
        """A pipeline :class:`~..core.events.Event` (the totals come from it: 3 or 4 steps, with tiles and
        batches within them in its message)."""
        self._status.value = event.message
        self._progress(event.message, event.done, event.total)

    def _on_finished(self):
        if self._worker is not None and self._worker.abort_requested:
            self._status.value = ("cancelled: nothing was changed" if self._slide_folder is None else
                                  f"cancelled: the tiles done are kept in {self._slide_folder}; Analyze again continues")
        self._slide_folder = None
        super()._on_finished()


def format_summary(summary: dict) -> str:
    """The slide summary as a few lines of text (the count per class is in :func:`format_legend`)."""
    n, k = summary["leukocytes"], summary["leukemic"]
    t = summary.get("timings", {})
    from ..core.blast_count import describe

    lines = [f"Leukocytes: {n}", f"Blast equivalents (p_leukemic ≥ {LEUKEMIC_THRESHOLD:g}): {k}"]
    if "blast_pct" in summary:
        lines.append(describe(summary))
    lines += [f"Segmenter: {summary['segmenter']}", f"Classifier: {summary['classifier']}",
              f"Device: {summary['device']}, {t.get('total_s', 0):.1f} s"]
    return "\n".join(lines)


def format_legend(classes, leukemic, counts: dict) -> str:
    """Rich text legend of a cells layer: each class in its colour (:func:`~..core.render.class_colors`, the
    colours of the Labels layer) with its number of cells; one line per class, for two classes or nine."""
    from html import escape

    from ..core.render import class_colors

    colors = class_colors(classes, leukemic)
    return "<br>".join(f'<span style="color:{hex_color(colors[c])}">&#9632;</span> {escape(str(c))}: '
                       f"{counts.get(c, 0)}" for c in classes)


def hex_color(rgba) -> str:
    """``"#rrggbb"`` of an RGB(A) colour with channels in 0..1."""
    return "#" + "".join(f"{round(255 * v):02x}" for v in rgba[:3])


__all__ = ["AnalyzeWidget", "analyze_widgets", "format_legend", "format_summary", "META_KEY"]
