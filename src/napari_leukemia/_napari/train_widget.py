"""Train classifier dock widget: runs the same ``core.fit.fit_classifier`` as ``napari-leukemia train``."""

import gc
import sys
import threading
from pathlib import Path

import napari
from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, Label, LineEdit, PushButton, SpinBox

from ..core.config import (
    DEVICE_CHOICES,
    DISCLAIMER,
    FINE_TUNE_LR,
    HELD_OUT_FRACTION,
    TUNE_CHOICES,
    CropConfig,
    TrainConfig,
)
from .widgets import analyze_widgets
from .worker_widget import WorkerWidget, chosen_path

#: The dataset kind of cells corrected in the viewer (the Review panel's ``dataset.csv``): fine-tuning.
CORRECTIONS = "cells corrected in the viewer (dataset.csv)"
#: Where a training set comes from: name -> FileEdit mode.
DATASET_KINDS = {"class folders": "d", "CSV table / DeepAPL manifest": "r", CORRECTIONS: "r"}
#: The words of the weights that train (:data:`~napari_leukemia.core.config.TUNE_CHOICES`).
TUNE_LABELS = {"all": "every weight", "last_block": "last dense block + head", "head": "head only"}
#: Recorded as the command in the checkpoint's provenance.
COMMAND = "napari-leukemia Train classifier widget"


class TrainWidget(WorkerWidget):
    """Train classifier: a DenseNet201 on a dataset, with live loss and accuracy curves.

    Training runs in a worker thread with a napari progress bar. **Stop** ends it at the next step and keeps
    ``last.safetensors``; **Resume** continues the run in the output folder. The finished, calibrated checkpoint
    is selected at once in every Analyze widget of the viewer.

    With :data:`CORRECTIONS` as the dataset it fine-tunes the current model (``fine-tune from``, else the
    Analyze widget's classifier, else the shipped one) on the cells corrected in the viewer, optionally mixed
    with the original training data, and reports accuracy before / after on held-out corrections
    (:func:`~napari_leukemia.core.fine_tune.fine_tune`).
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, labels=True)
        d = TrainConfig()
        self._stop = threading.Event()
        self._history: list[dict] = []
        self.result: dict | None = None
        self._kind = ComboBox(choices=list(DATASET_KINDS), value="class folders", label="dataset is")
        self._dataset = FileEdit(mode="d", value="", label="dataset")
        self._single = CheckBox(value=False, text="images are single-cell crops (no segmentation)")
        self._epochs = SpinBox(value=d.epochs, min=1, max=10_000, label="epochs")
        self._batch = SpinBox(value=d.batch_size, min=1, max=4096, label="batch size")
        self._lr = FloatSpinBox(value=d.lr, min=1e-6, max=1.0, step=1e-5, label="learning rate")
        self._size = SpinBox(value=0, min=0, max=1024, step=16, label="crop size (px)",
                             tooltip=f"0: the fine-tuned checkpoint's crop size, else {CropConfig().size}")
        self._init = FileEdit(mode="r", filter="*.safetensors", value="", label="fine-tune from")
        self._new_head = CheckBox(value=False, text="new head: another class list on its features")
        self._tune = ComboBox(choices=[(TUNE_LABELS[c], c) for c in TUNE_CHOICES], value=d.tune, label="train",
                              tooltip="which weights train; freezing the rest trains faster and keeps what the "
                                      "starting checkpoint learnt")
        self._imagenet = CheckBox(value=bool(d.imagenet), text="start from ImageNet weights when found (no download)")
        self._feature_svm = CheckBox(value=d.feature_svm, text="second opinion: SVM on hand-made features",
                                     tooltip="fit the seeds' SVM on the training cells too; analyses pool its "
                                             "leukaemic probability with the network's (two classes, at least 5 "
                                             "training cells of each; a fine-tuned model keeps its own otherwise)")
        self._leukemic = LineEdit(value="", label="leukaemic classes",
                                  tooltip="comma-separated; empty: 'leukemic' for leukemic/normal data, else class "
                                          "names with leukem/leukaem/blast/promyelocyte/promonocyte")
        self._mix = FileEdit(mode="r", value="", label="mix in original data",
                             tooltip="optional: the model's training data (CSV / DeepAPL manifest), so that it "
                                     "does not forget what it knew")
        self._mix_single = CheckBox(value=False, text="mixed-in images are single-cell crops")
        self._held_out = FloatSpinBox(value=HELD_OUT_FRACTION, min=0.0, max=0.6, step=0.05, label="held-out corrections",
                                      tooltip="fraction of the corrected slides (or cells, with fewer than 3 "
                                              "slides) kept aside to score the model before and after")
        self._out = FileEdit(mode="d", value="", label="output folder")
        self._overwrite = CheckBox(value=False, text="replace an earlier run in the output folder")
        self._device = ComboBox(choices=list(DEVICE_CHOICES), value=d.device, label="device")
        self._more = self._more_settings("batch size, learning rate, weights trained, device",
                                         [self._batch, self._lr, self._tune, self._device])
        self._start_button = PushButton(text="Start")
        self._stop_button = PushButton(text="Stop", enabled=False)
        self._resume_button = PushButton(text="Resume")
        self._status = Label(value="")
        self._disclaimer = Label(value=DISCLAIMER)
        self._init.native.setToolTip("empty: a new network (ImageNet or random weights); for corrected cells: the "
                                     "Analyze widget's classifier, else the shipped one")
        self._kind.changed.connect(self._kind_changed)
        self._start_button.changed.connect(lambda: self.start())
        self._resume_button.changed.connect(lambda: self.start(resume=True))
        self._stop_button.changed.connect(self.stop)
        self._body.extend([
            self._kind, self._dataset, self._single, self._mix, self._mix_single, self._held_out, self._epochs,
            self._size, self._init, self._new_head, self._imagenet, self._feature_svm, self._leukemic, self._out,
            self._overwrite,
            self._more, self._batch, self._lr, self._tune, self._device, self._start_button, self._stop_button,
            self._resume_button, self._bar, self._status,
        ])
        self._canvas, self._axes = _curves_canvas()
        self._draw()
        viewer.events.theme.connect(lambda _event: self._draw())
        self._body.native.layout().addWidget(self._canvas)
        self._body.append(self._disclaimer)
        self._fit_dock()
        self._kind_changed(self._kind.value)

    # --- settings -> core -------------------------------------------------------------------------
    def _kind_changed(self, kind: str):
        self._dataset.mode = DATASET_KINDS[kind]
        corrections = kind == CORRECTIONS  # fine-tuning: crop size, classes and weights come from the model
        for widget in (self._single, self._size, self._imagenet, self._leukemic, self._new_head, self._feature_svm):
            widget.visible = not corrections
        for widget in (self._mix, self._mix_single, self._held_out):
            widget.visible = corrections
        new, old = (FINE_TUNE_LR, TrainConfig().lr) if corrections else (TrainConfig().lr, FINE_TUNE_LR)
        if self._lr.value == old:  # the default of the other mode: take this mode's
            self._lr.value = new

    def use_corrections(self, path, classifier=None) -> None:
        """Fine-tune ``classifier`` (default: the Analyze widget's) on the corrected cells in ``path`` (dataset.csv)."""
        self.set_dataset(path, kind=CORRECTIONS)
        if classifier:
            self._init.value = str(classifier)
        self._status.value = f"corrected cells: {path}; choose an output folder and press Start to fine-tune"

    def set_dataset(self, path, kind: str = "CSV table / DeepAPL manifest", single_cells: bool | None = None) -> None:
        """Train on ``path`` (e.g. the CSV of cells corrected in the viewer: ``single_cells=True``)."""
        self._kind.value = kind
        self._dataset.value = str(path)
        if single_cells is not None:
            self._single.value = single_cells

    def dataset_source(self):
        """What :func:`~napari_leukemia.core.fit.fit_classifier` trains on; raises ValueError when unset."""
        path = chosen_path(self._dataset)
        if path is None:
            raise ValueError("choose a dataset: a folder of class sub-folders, or a CSV table")
        return path

    def _current_classifier(self) -> str:
        """The model to fine-tune: ``fine-tune from``, else the Analyze widget's classifier, else the shipped one."""
        from ..core.model import DEFAULT_CLASSIFIER

        chosen = chosen_path(self._init) or next((w.classifier for w in analyze_widgets(self._viewer) if w.classifier), None)
        return str(chosen or DEFAULT_CLASSIFIER)

    def _settings(self, resume: bool) -> tuple:
        """``(core function, its keyword arguments)`` from the widget's settings."""
        from ..core.fine_tune import fine_tune
        from ..core.fit import fit_classifier

        source = self.dataset_source()
        out = chosen_path(self._out)
        if out is None:
            raise ValueError("choose an output folder")
        config = TrainConfig(epochs=self._epochs.value, batch_size=self._batch.value, lr=self._lr.value,
                             device=self._device.value, imagenet=TrainConfig().imagenet if self._imagenet.value else "",
                             tune=self._tune.value,  # corrections: the model keeps its own SVM, if any
                             feature_svm=self._feature_svm.value and self._kind.value != CORRECTIONS)
        common = dict(out_dir=out, config=config, resume=resume, overwrite=self._overwrite.value, command=COMMAND)
        if self._kind.value == CORRECTIONS:
            return fine_tune, dict(corrections=source, init=self._current_classifier(), mix=chosen_path(self._mix),
                                   mix_single_cells=self._mix_single.value, held_out=self._held_out.value, **common)
        leukemic = [c.strip() for c in self._leukemic.value.split(",") if c.strip()] or None
        return fit_classifier, dict(source=source, size=self._size.value or None, single_cells=self._single.value,
                                    leukemic=leukemic, init=chosen_path(self._init), new_head=self._new_head.value,
                                    **common)

    # --- run ----------------------------------------------------------------------------------------
    def start(self, resume: bool = False):
        """Start (or with ``resume``, continue) training in a worker; returns the worker, or None."""
        if self._worker is not None:
            return self._worker
        try:
            train, settings = self._settings(resume)
        except ValueError as err:
            self._status.value = str(err)
            return None
        self._stop = threading.Event()
        self._history = []
        self.result = None
        self._draw()
        gen = train(**settings, should_stop=self._stop.is_set)
        return self._start(gen, "resuming" if resume else "starting", yielded=self._on_event, returned=self._on_done,
                           progress="Training: preparing")

    def stop(self):
        """End training at the next step; ``last.safetensors`` is kept and Resume continues it."""
        if self._worker is not None:
            self._stop.set()
            self._status.value = "stopping at the next step..."

    # --- worker callbacks (main thread) ---------------------------------------------------------
    def _on_event(self, event):
        """A :func:`~..core.fit.fit_classifier` :class:`~..core.events.Event`; the totals come from it."""
        stage, e = event.stage, event.payload
        if stage == "crop":
            self._progress(f"Training: cropping cells ({e['cached']} cached)", event.done, event.total)
            self._status.value = event.message
        elif stage == "data":
            n = {k: sum(v.values()) for k, v in e["cells"].items()}
            skipped = f", {len(e['skipped'])} files skipped" if e["skipped"] else ""
            self._status.value = (f"{n['train']} training / {n['val']} validation cells, {n['test']} test cells kept "
                                  f"aside{skipped}; {e['start']}")
            self._progress("Training: epochs", event.done, event.total)
        elif stage == "epoch" and not e.get("stopped"):
            self._history.append(e)
            self._draw()
            self._progress("Training: epochs", event.done, event.total)
            self._status.value = (f"epoch {event.done}/{event.total}: val loss {e['val_loss']:.4f}, "
                                  f"val accuracy {e['val_accuracy']:.3f}")
        elif stage == "calibrate":
            self._status.value = event.message

    def _on_done(self, result: dict):
        self.result = result
        if result["history"] and len(result["history"]) > len(self._history):  # a resumed run: show it all
            self._history = list(result["history"])
            self._draw()
        if result["stopped"]:
            kept = f"{Path(result['checkpoint']).name} kept; press Resume to continue" if result["history"] else \
                "nothing trained yet"
            self._status.value = f"stopped: {kept}"
            return
        path = result["checkpoint"]
        for widget in analyze_widgets(self._viewer):
            widget.use_classifier(path)
        m = result["val_metrics"]
        self._status.value = (f"done: {path}\nvalidation ROC-AUC {m['roc_auc']:.3f}, balanced accuracy "
                              f"{m['balanced_accuracy']:.3f}; selected in Analyze smear" + _before_after(result))

    def _on_error(self, err):
        hint = " (tick 'replace an earlier run', or press Resume)" if isinstance(err, FileExistsError) else ""
        super()._on_error(f"{err}{hint}")

    def _on_finished(self):
        super()._on_finished()
        _release_memory()

    # --- helpers --------------------------------------------------------------------------------
    def _set_running(self, running: bool):
        self._start_button.enabled = self._resume_button.enabled = not running
        self._stop_button.enabled = running

    def _draw(self):
        from ..core.evaluate import draw_curves

        draw_curves(self._axes, self._history)
        _theme_curves(self._canvas.figure, self._axes, getattr(self._viewer, "theme", "dark"))
        self._canvas.draw_idle()


def _before_after(result: dict) -> str:
    """A fine-tuning run's held-out figures, as a status line (empty for other runs)."""
    if "held_out" not in result:
        return ""
    if not result["before"]:
        return "\nno corrections held out: correct more cells (or slides) to see before / after figures"
    b, a = result["before"], result["after"]
    optimistic = ", cells of the training slides: optimistic" if result["held_out_by"] == "cell" else ""
    return (f"\nheld-out corrections ({result['held_out']} cells{optimistic}): accuracy {b['accuracy']:.2f} -> "
            f"{a['accuracy']:.2f}, class accuracy {b['class_accuracy']:.2f} -> {a['class_accuracy']:.2f}")


def _curves_canvas():
    """A matplotlib canvas with loss and accuracy axes, for the dock."""
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 2.2), dpi=80, layout="constrained")
    axes = fig.subplots(1, 2)
    canvas = FigureCanvasQTAgg(fig)
    canvas.setMinimumHeight(170)
    return canvas, axes


def _theme_curves(fig, axes, theme: str) -> None:
    """Colour the curves' figure like napari's ``theme`` (background, text, axes), not matplotlib's white."""
    from napari.utils.theme import get_theme

    t = get_theme(theme)
    bg, fg = t.background.as_hex(), t.text.as_hex()
    fig.set_facecolor(bg)
    for ax in axes:
        ax.set_facecolor(bg)
        ax.tick_params(colors=fg)
        ax.xaxis.label.set_color(fg)
        ax.yaxis.label.set_color(fg)
        for spine in ax.spines.values():
            spine.set_color(fg)
        legend = ax.get_legend()
        if legend is not None:
            legend.get_frame().set_facecolor(bg)
            for text in legend.get_texts():
                text.set_color(fg)


def _release_memory():
    """Free what a finished training held: Python garbage, and PyTorch's cached CUDA memory."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["TrainWidget", "DATASET_KINDS", "CORRECTIONS"]
