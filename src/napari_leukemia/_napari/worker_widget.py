"""The base of the dock widgets that run long work: one worker at a time, errors shown, buttons set back.

Every worker of the dock widgets starts in :meth:`WorkerWidget._start`, the one place that keeps torch from
importing triton next to Mesa's LLVM (:func:`avoid_llvm_clash`) before any model is loaded.
"""

from __future__ import annotations

import inspect
import sys

from magicgui.widgets import Container


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


class WorkerWidget(Container):
    """A dock widget running one core generator (or function) at a time in a napari worker thread.

    Subclasses make their own ``_status`` label, start their work with :meth:`_start`, and may override
    :meth:`_set_running` (which buttons to disable while it runs), :meth:`_on_error` and :meth:`_on_finished`.
    """

    def __init__(self, viewer, **kwargs):
        super().__init__(**kwargs)
        self._viewer = viewer
        self._worker = None

    @property
    def busy(self) -> bool:
        """Whether a worker is running."""
        return self._worker is not None

    def _start(self, work, what: str, *, yielded=None, returned=None):
        """Run ``work`` in a worker thread, behind :func:`avoid_llvm_clash`; returns the worker.

        Parameters
        ----------
        work : callable or generator
            A function of no arguments, or a generator (a core ``iter_*`` call) whose yields are progress.
        what : str
            Shown in the status label while it starts.
        yielded, returned : callable, optional
            Called on the main thread with each yielded value and with the returned value.
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
        self._worker = worker
        self._set_running(True)
        self._status.value = what
        worker.start()
        return worker

    def _set_running(self, running: bool) -> None:
        """Enable or disable the widget's buttons while a worker runs."""

    def _on_error(self, err) -> None:
        from napari.utils.notifications import show_error

        self._status.value = f"Error: {err}"
        show_error(f"napari-leukemia: {err}")

    def _on_finished(self) -> None:
        self._worker = None
        self._set_running(False)
