"""Train classifier dock widget: runs the same ``core.fit.fit_classifier`` as ``napari-leukemia train``."""

import gc
import sys
import threading
from pathlib import Path

import napari
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, PushButton, SpinBox

from ..core.config import DISCLAIMER, TrainConfig
from . import avoid_llvm_clash
from .widgets import analyze_widgets

#: Where a training set comes from: name -> FileEdit mode. Another source (e.g. cells corrected in the viewer,
#: exported as a CSV dataset) adds an entry here and a branch in :meth:`TrainWidget.dataset_source`, or calls
#: :meth:`TrainWidget.set_dataset` with the CSV it wrote.
DATASET_KINDS = {"class folders": "d", "CSV table / DeepAPL manifest": "r"}
#: Recorded as the command in the checkpoint's provenance.
COMMAND = "napari-leukemia Train classifier widget"


class TrainWidget(Container):
    """Train classifier: a DenseNet201 on a dataset, with live loss and accuracy curves.

    Training runs in a worker thread with a napari progress bar. **Stop** ends it at the next step and keeps
    ``last.safetensors``; **Resume** continues the run in the output folder. The finished, calibrated checkpoint
    is selected at once in every Analyze widget of the viewer.
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        d = TrainConfig()
        self._viewer = viewer
        self._worker = None
        self._stop = threading.Event()
        self._pbar = None
        self._history: list[dict] = []
        self.result: dict | None = None
        self._kind = ComboBox(choices=list(DATASET_KINDS), value="class folders", label="dataset is")
        self._dataset = FileEdit(mode="d", value="", label="dataset")
        self._single = CheckBox(value=False, text="images are single-cell crops (no segmentation)")
        self._epochs = SpinBox(value=d.epochs, min=1, max=10_000, label="epochs")
        self._batch = SpinBox(value=d.batch_size, min=1, max=4096, label="batch size")
        self._lr = FloatSpinBox(value=d.lr, min=1e-6, max=1.0, step=1e-5, label="learning rate")
        self._size = SpinBox(value=0, min=0, max=1024, step=16, label="crop size (px)",
                             tooltip="0: the fine-tuned checkpoint's crop size, else 224")
        self._init = FileEdit(mode="r", filter="*.safetensors", value="", label="fine-tune from")
        self._imagenet = CheckBox(value=True, text="start from ImageNet weights when found (no download)")
        self._leukemic = LineEdit(value="", label="leukaemic classes",
                                  tooltip="comma-separated; empty: 'leukemic' for leukemic/normal data, else class "
                                          "names with leukem/leukaem/blast/promyelocyte/promonocyte")
        self._out = FileEdit(mode="d", value="", label="output folder")
        self._overwrite = CheckBox(value=False, text="replace an earlier run in the output folder")
        self._device = ComboBox(choices=["auto", "cpu", "cuda"], value="auto", label="device")
        self._start_button = PushButton(text="Start")
        self._stop_button = PushButton(text="Stop", enabled=False)
        self._resume_button = PushButton(text="Resume")
        self._status = Label(value="")
        self._disclaimer = Label(value=DISCLAIMER)
        self._init.native.setToolTip("empty: a new network (ImageNet or random weights)")
        self._kind.changed.connect(lambda kind: setattr(self._dataset, "mode", DATASET_KINDS[kind]))
        self._start_button.changed.connect(lambda: self.start())
        self._resume_button.changed.connect(lambda: self.start(resume=True))
        self._stop_button.changed.connect(self.stop)
        self.extend([
            self._kind, self._dataset, self._single, self._epochs, self._batch, self._lr, self._size, self._init,
            self._imagenet, self._leukemic, self._out, self._overwrite, self._device, self._start_button,
            self._stop_button, self._resume_button, self._status,
        ])
        self._canvas, self._axes = _curves_canvas()
        self.native.layout().addWidget(self._canvas)
        self.append(self._disclaimer)

    # --- settings -> core -------------------------------------------------------------------------
    def set_dataset(self, path, kind: str = "CSV table / DeepAPL manifest", single_cells: bool | None = None) -> None:
        """Train on ``path`` (e.g. the CSV of cells corrected in the viewer: ``single_cells=True``)."""
        self._kind.value = kind
        self._dataset.value = str(path)
        if single_cells is not None:
            self._single.value = single_cells

    def dataset_source(self):
        """What :func:`~napari_leukemia.core.fit.fit_classifier` trains on; raises ValueError when unset."""
        path = _path(self._dataset)
        if path is None:
            raise ValueError("choose a dataset: a folder of class sub-folders, or a CSV table")
        return path

    def _settings(self, resume: bool) -> dict:
        source = self.dataset_source()
        out = _path(self._out)
        if out is None:
            raise ValueError("choose an output folder")
        config = TrainConfig(epochs=self._epochs.value, batch_size=self._batch.value, lr=self._lr.value,
                             device=self._device.value, imagenet="auto" if self._imagenet.value else "")
        leukemic = [c.strip() for c in self._leukemic.value.split(",") if c.strip()] or None
        return dict(source=source, out_dir=out, config=config, size=self._size.value or None,
                    single_cells=self._single.value, leukemic=leukemic, init=_path(self._init), resume=resume,
                    overwrite=self._overwrite.value, command=COMMAND)

    # --- run ----------------------------------------------------------------------------------------
    def start(self, resume: bool = False):
        """Start (or with ``resume``, continue) training in a worker; returns the worker, or None."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        from ..core.fit import fit_classifier

        avoid_llvm_clash()
        if self._worker is not None:
            return self._worker
        try:
            settings = self._settings(resume)
        except ValueError as err:
            self._status.value = str(err)
            return None
        self._stop = threading.Event()
        self._history = []
        self.result = None
        self._draw()
        gen = fit_classifier(**settings, should_stop=self._stop.is_set)
        worker = create_worker(lambda: (yield from gen), _connect={"errored": self._on_error}, _start_thread=False)
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_done)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._pbar = progress(total=0, desc="Training: preparing")
        self._set_running(True)
        self._status.value = "resuming" if resume else "starting"
        worker.start()
        return worker

    def stop(self):
        """End training at the next step; ``last.safetensors`` is kept and Resume continues it."""
        if self._worker is not None:
            self._stop.set()
            self._status.value = "stopping at the next step..."

    # --- worker callbacks (main thread) ---------------------------------------------------------
    def _on_event(self, event: dict):
        stage = event["stage"]
        if stage == "crop":
            self._progress(f"Training: cropping cells ({event['cached']} cached)", event["done"], event["total"])
            self._status.value = f"cropping cells: {event['done']} of {event['total']} files"
        elif stage == "data":
            n = {k: sum(v.values()) for k, v in event["cells"].items()}
            skipped = f", {len(event['skipped'])} files skipped" if event["skipped"] else ""
            self._status.value = (f"{n['train']} training / {n['val']} validation cells, {n['test']} test cells kept "
                                  f"aside{skipped}; {event['start']}")
            self._progress("Training: epochs", 0, self._epochs.value)
        elif stage == "epoch" and not event.get("stopped"):
            self._history.append(event)
            self._draw()
            self._progress("Training: epochs", event["epoch"], event["epochs"])
            self._status.value = (f"epoch {event['epoch']}/{event['epochs']}: val loss {event['val_loss']:.4f}, "
                                  f"val accuracy {event['val_accuracy']:.3f}")
        elif stage == "calibrate":
            self._status.value = "calibrating on the validation split"

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
                              f"{m['balanced_accuracy']:.3f}; selected in Analyze smear")

    def _on_error(self, err):
        from napari.utils.notifications import show_error

        hint = " (tick 'replace an earlier run', or press Resume)" if isinstance(err, FileExistsError) else ""
        self._status.value = f"Error: {err}{hint}"
        show_error(f"napari-leukemia: {err}{hint}")

    def _on_finished(self):
        self._worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._set_running(False)
        _release_memory()

    # --- helpers --------------------------------------------------------------------------------
    def _set_running(self, running: bool):
        self._start_button.enabled = self._resume_button.enabled = not running
        self._stop_button.enabled = running

    def _progress(self, desc: str, done: int, total: int):
        if self._pbar is None:
            return
        if self._pbar.desc != desc:
            self._pbar.set_description(desc)
        if self._pbar.total != total:
            self._pbar.total = total
        self._pbar.update(done - self._pbar.n)

    def _draw(self):
        from ..core.evaluate import draw_curves

        draw_curves(self._axes, self._history)
        self._canvas.draw_idle()


def _path(edit: FileEdit):
    value = str(edit.value or "").strip()
    return value if value not in ("", ".") else None


def _curves_canvas():
    """A matplotlib canvas with loss and accuracy axes, for the dock."""
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 2.2), dpi=80, layout="constrained")
    axes = fig.subplots(1, 2)
    canvas = FigureCanvasQTAgg(fig)
    canvas.setMinimumHeight(170)
    return canvas, axes


def _release_memory():
    """Free what a finished training held: Python garbage, and PyTorch's cached CUDA memory."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["TrainWidget", "DATASET_KINDS"]
