"""The base of the dock widgets that run long work: one worker at a time, errors shown, buttons set back."""

from __future__ import annotations

from magicgui.widgets import Container


class WorkerWidget(Container):
    """A dock widget running one core generator (or function) at a time in a napari worker thread.

    Subclasses make their own ``_status`` label, connect their worker's results, and may override
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

    def _start(self, worker, what: str):
        """Run ``worker``; returns it. Make it with ``create_worker(..., _connect={"errored": self._on_error},
        _start_thread=False)``: napari re-raises the errors of a worker created without an errored handler."""
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
