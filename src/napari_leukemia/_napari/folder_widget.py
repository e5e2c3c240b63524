"""Analyze folder: every image of a folder (fields, single-cell images, whole slides) into a results folder, in this
process or on a dask.distributed cluster, with per-image progress and a Cancel that acts within seconds.

The dock runs :func:`~..core.batch.analyze_images`, as ``napari-leukemia analyze FOLDER --out DIR [--workers N |
--scheduler ADDRESS]`` does: the same result folders and ``summary.csv``, resumable.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import napari
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, LineEdit, PushButton, SpinBox

from ..core.config import DISCLAIMER, AnalysisConfig
from .worker_widget import WorkerWidget, chosen_path

#: Where the images are analysed: this process, a new local cluster, or a running one (its scheduler's address).
WHERE = ("this process", "local cluster", "running cluster")
#: Rows of the results shown in the dock; the rest are in ``summary.csv``.
ROWS_SHOWN = 12


class FolderWidget(WorkerWidget):
    """Analyze folder: a folder of images into ``<results folder>/<image name>/`` and ``summary.csv``."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, labels=True)
        self._images = FileEdit(mode="d", label="images folder", value="")
        self._out = FileEdit(mode="d", label="results folder", value="",
                             tooltip="<folder>/<image name>/ per image and summary.csv; nothing is written elsewhere")
        self._single = CheckBox(value=False, text="single-cell images (the centre cell of each)")
        self._resume = CheckBox(value=False, text="continue the run in the results folder",
                                tooltip="keeps the images done (summary.csv) and analyses the rest")
        self._where = ComboBox(choices=list(WHERE), value=WHERE[0], label="run in",
                               tooltip="a local cluster uses several cores (one image per worker at a time); a running "
                                       "cluster (dask-jobqueue, Kubernetes, Coiled ...) must see the same files")
        self._workers = SpinBox(value=2, min=1, max=256, label="workers")
        self._scheduler = LineEdit(value="", label="scheduler", tooltip="tcp://host:8786")
        self._classifier = FileEdit(mode="r", filter="*.safetensors", label="classifier file", value="")
        self._segmenter = FileEdit(mode="r", filter="*.safetensors", label="cellpose model", value="")
        self._more = self._more_settings("model files", [self._classifier, self._segmenter])
        self._run_button = PushButton(text="Analyze folder")
        self._cancel_button = PushButton(text="Cancel", enabled=False)
        self._status = Label(value="")
        self._results = Label(value="")
        self._disclaimer = Label(value=DISCLAIMER)
        self._classifier.native.setToolTip("empty: the shipped classifier")
        self._segmenter.native.setToolTip("empty: the shipped leukocyte model")
        self._where.changed.connect(self._show_where)
        self._run_button.changed.connect(self.run)
        self._cancel_button.changed.connect(self.cancel)
        self._stop = False
        self._kept = {}  # {"client": (settings, client)} kept between runs; closed with the dock
        self.native.destroyed.connect(partial(_close_kept, self._kept))
        self._body.extend([self._images, self._out, self._single, self._resume, self._where, self._workers,
                           self._scheduler, self._more, self._classifier, self._segmenter, self._run_button,
                           self._cancel_button, self._bar, self._status, self._results, self._disclaimer])
        self._show_where()
        self._fit_dock()

    def _show_where(self, *_):
        self._workers.visible = self._where.value == "local cluster"
        self._scheduler.visible = self._where.value == "running cluster"

    @staticmethod
    def _folder(edit: FileEdit) -> Path | None:
        value = chosen_path(edit)
        return None if value is None else Path(value)

    def run(self):
        """Start analysing the folder in a worker; returns the worker, or None (with the reason in the status)."""
        from ..core.datasets import image_files

        if self._worker is not None:
            return self._worker
        images, out = self._folder(self._images), self._folder(self._out)
        if images is None or not images.is_dir() or out is None:
            self._status.value = "Choose an images folder and a results folder."
            return None
        files = image_files(images)
        if not files:
            self._status.value = f"{images} holds no images."
            return None
        if self._where.value == "running cluster" and not self._scheduler.value.strip():
            self._status.value = "Give the scheduler's address (tcp://host:8786)."
            return None
        self._stop = False
        self._results.value = ""
        return self._start(self._work(files, out), f"starting: {len(files)} images", yielded=self._on_image,
                           returned=self._on_done, progress=f"Analyzing {images.name}")

    def _work(self, files, out):
        """The run, in the worker thread: the models are loaded where they run (here, or on the cluster's workers)."""
        from ..core.batch import analyze_images

        client = self._cluster()
        models = {"classifier": chosen_path(self._classifier, file=True) or _shipped("classifier"),
                  "segmenter": chosen_path(self._segmenter, file=True) or _shipped("segmenter")}
        config = AnalysisConfig(gradcam=False, single_cell=self._single.value)
        return (yield from analyze_images(files, out, config=config, resume=self._resume.value,
                                          should_stop=lambda: self._stop, client=client, **models))

    def _cluster(self):
        """The client of the chosen cluster, or None for this process. It is kept for the next run (its workers keep
        their models loaded, and a Cancel need not wait for a cluster to close); a change of setting closes it."""
        from ..core.cluster import start_client

        where = self._where.value
        key = {"local cluster": (where, self._workers.value),
               "running cluster": (where, self._scheduler.value.strip())}.get(where)
        if "client" in self._kept and self._kept["client"][0] != key:
            self.close_cluster()
        if key is not None and "client" not in self._kept:
            self._kept["client"] = (key, start_client(workers=key[1]) if where == "local cluster" else
                                    start_client(scheduler=key[1]))
        return None if key is None else self._kept["client"][1]

    def close_cluster(self) -> None:
        """Close the client kept for the next run (and its local cluster); also done when the dock is closed."""
        _close_kept(self._kept)

    def cancel(self):
        """Stop after the image being analysed here; on a cluster within half a second (the tasks not finished are
        dropped; slides stop after their current step, resumable)."""
        if self._worker is not None:
            self._stop = True
            self._status.value = "cancelling..."

    # --- worker callbacks (main thread) ---------------------------------------------------------
    def _on_image(self, event):
        row = event.payload["row"]
        what = "done before" if event.payload["skipped"] else (row["error"] or event.message or "done")
        self._status.value = f"{event.done}/{event.total} {row['stem']}: {what}"
        # last: napari's progress bar may process events, the run's end (and its summary) among them
        self._progress("images", event.done, event.total)

    def _on_done(self, run: dict):
        rows = run["rows"]
        out = self._folder(self._out)
        self._results.value = format_rows(rows)
        failed = sum(r["status"] != "ok" for r in rows)
        self._status.value = (f"cancelled: {len(rows)} images done, kept in {out}; tick 'continue' to go on"
                              if run["stopped"] else f"done: {len(rows)} images ({failed} failed), results in {out}")

    def _set_running(self, running: bool):
        self._run_button.enabled = not running
        self._cancel_button.enabled = running


def _close_kept(kept: dict, *_) -> None:
    """Close the client in ``kept`` (and its local cluster), if any."""
    from ..core.cluster import close_client

    if "client" in kept:
        close_client(kept.pop("client")[1])


def _shipped(kind: str) -> str:
    """The shipped model file of ``kind``."""
    from ..core.model import DEFAULT_CLASSIFIER
    from ..core.segment import DEFAULT_SEGMENTER

    return str(DEFAULT_CLASSIFIER if kind == "classifier" else DEFAULT_SEGMENTER)


def format_rows(rows: list[dict]) -> str:
    """The first rows of a folder run as lines of text: leukocytes and blast-equivalent % with its 95% interval per
    image, or its error."""
    lines = []
    for r in rows[:ROWS_SHOWN]:
        if r["status"] != "ok":
            lines.append(f"{r['stem']}: failed ({r['error']})")
        elif r["blast_pct"] in ("", None):
            lines.append(f"{r['stem']}: {r['leukocytes']} leukocytes")
        else:
            lines.append(f"{r['stem']}: {r['leukocytes']} leukocytes, blast equivalents {float(r['blast_pct']):.1f}% "
                         f"(95% interval {float(r['blast_pct_low']):.1f}-{float(r['blast_pct_high']):.1f}%)")
    if len(rows) > ROWS_SHOWN:
        lines.append(f"... {len(rows) - ROWS_SHOWN} more in summary.csv")
    return "\n".join(lines)
