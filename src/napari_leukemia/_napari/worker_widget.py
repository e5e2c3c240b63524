"""The base of the dock widgets that run long work: one worker at a time, errors shown, buttons set back.

Every worker of the dock widgets starts in :meth:`WorkerWidget._start`, the one place that keeps torch from
importing triton next to Mesa's LLVM (:func:`avoid_llvm_clash`) before any model is loaded.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from magicgui.widgets import CheckBox, Container, Label, ProgressBar
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy


def avoid_llvm_clash() -> bool:
    """Keep torch from importing triton once Mesa's software OpenGL (llvmpipe) has loaded its LLVM.

    Both carry an LLVM; importing triton after Mesa's crashes the whole process (seen under Xvfb). torch imports
    triton when a model is loaded, not on ``import torch``; it needs triton only to compile kernels, which
    napari-leukemia never does. Returns True when triton was blocked.
    """
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/maps") as fh:
            if "libLLVM" not in fh.read():
                return False
    except OSError:
        return False
    sys.modules["triton"] = None  # `import triton` now raises ImportError; torch then runs without it
    return True


def chosen_path(edit, *, file: bool = False) -> str | None:
    """The path typed or picked in a FileEdit, or None when it is empty (or, with ``file``, not a file)."""
    value = str(edit.value or "").strip()
    if value in ("", ".") or (file and not Path(value).is_file()):
        return None
    return value


class WorkerWidget(Container):
    """A dock widget running one core generator (or function) at a time in a napari worker thread.

    Its widgets go in ``self._body`` (a Container made with ``**kwargs``), which scrolls, so that several docks
    fit a laptop screen; subclasses call :meth:`_fit_dock` once their widgets are in. Subclasses make their own
    ``_status`` label and place ``self._bar`` (the progress bar in the dock, shown while a worker runs), start their
    work with :meth:`_start`, report its steps with :meth:`_progress`, and may override :meth:`_set_running` (which
    buttons to disable while it runs), :meth:`_on_error` and :meth:`_on_finished`.
    """

    def __init__(self, viewer, **kwargs):
        super().__init__(labels=False)
        self._viewer = viewer
        self._worker = None
        self._pbar = None  # napari's progress bar (its activity dock) of the running worker
        self._bar = ProgressBar(value=0, min=0, max=0, label="progress", visible=False)
        self._body = Container(**kwargs)
        self._scroll = _VerticalScroll(self._body.native)
        self.native.layout().addWidget(self._scroll)
        self.margins = (0, 0, 0, 0)

    def reset_choices(self, *_) -> None:
        """Refresh the choices of the widgets in the body (napari calls this when layers change)."""
        self._body.reset_choices()

    def _more_settings(self, what: str, widgets) -> CheckBox:
        """A check box "more settings: ``what``" that shows ``widgets`` (settings most runs leave as they are) only
        while ticked, so that the buttons and results fit a laptop's dock."""
        box = CheckBox(value=False, text=f"more settings: {what}")

        def show(value):
            for widget in widgets:
                widget.visible = bool(value)

        box.changed.connect(show)
        show(False)
        return box

    def _fit_dock(self) -> None:
        """Let every text label of the body wrap, never widening the dock."""
        for label in _labels(self._body):
            label.native.setWordWrap(True)
            policy = label.native.sizePolicy()
            policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)  # its text never sets the dock's width
            policy.setVerticalPolicy(QSizePolicy.Policy.Minimum)  # as tall as its wrapped lines (magicgui: Fixed)
            label.native.setSizePolicy(policy)
            row = label.native.parentWidget().layout()
            if not label.label and row.count() == 2 and row.itemAt(1).widget() is label.native:
                row.itemAt(0).widget().hide()  # magicgui's empty row label: the text takes the whole width

    @property
    def busy(self) -> bool:
        """Whether a worker is running."""
        return self._worker is not None

    def _start(self, work, what: str, *, yielded=None, returned=None, progress: str | None = None):
        """Run ``work`` in a worker thread, behind :func:`avoid_llvm_clash`; returns the worker.

        Parameters
        ----------
        work : callable or generator
            A function of no arguments, or a generator (a core ``iter_*`` call) whose yields are progress.
        what : str
            Shown in the status label while it starts.
        yielded, returned : callable, optional
            Called on the main thread with each yielded value and with the returned value.
        progress : str, optional
            Also show napari's progress bar (in its activity dock) with this description.
        """
        from napari.qt.threading import create_worker

        avoid_llvm_clash()  # before the worker imports anything that loads a model
        run = (lambda: (yield from work)) if inspect.isgenerator(work) else work
        # an errored handler from the start: napari re-raises the errors of a worker created without one
        worker = create_worker(run, _connect={"errored": self._on_error}, _start_thread=False)
        if yielded is not None:
            worker.yielded.connect(yielded)
        if returned is not None:
            worker.returned.connect(returned)
        worker.finished.connect(self._on_finished)
        if progress is not None:
            from napari.utils import progress as napari_progress

            self._pbar = napari_progress(total=0, desc=progress)
        self._bar.max, self._bar.value = 0, 0  # busy until the first step is known
        self._bar.visible = True
        self._worker = worker
        self._set_running(True)
        self._status.value = what
        worker.start()
        return worker

    def _progress(self, desc: str, done: int, total: int) -> None:
        """Show a step of the running work: ``done`` of ``total`` (in the dock and in napari's activity dock)."""
        self._bar.max, self._bar.value = total, min(done, total)
        bar = self._pbar  # napari's progress may process events (and finish the run) while it is updated
        if bar is None:
            return
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        if bar.desc != desc:
            bar.set_description(desc)

    def _set_running(self, running: bool) -> None:
        """Enable or disable the widget's buttons while a worker runs."""

    def _on_error(self, err) -> None:
        from napari.utils.notifications import show_error

        self._status.value = f"Error: {err}"
        show_error(f"napari-leukemia: {err}")

    def _on_finished(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._bar.visible = False
        self._worker = None
        self._set_running(False)


def _labels(container):
    """The :class:`~magicgui.widgets.Label` widgets in ``container`` and the containers in it."""
    for widget in container:
        if isinstance(widget, Label):
            yield widget
        elif isinstance(widget, Container):
            yield from _labels(widget)


class _VerticalScroll(QScrollArea):
    """A frameless scroll area for ``widget``: as wide as the widget needs, as short as a few lines."""

    def __init__(self, widget):
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(widget)

    def minimumSizeHint(self) -> QSize:
        width = self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
        return QSize(width + 2 * self.frameWidth(), super().minimumSizeHint().height())
