"""Qt-free core of napari-leukemia: segmentation, preprocessing, classification, explanation.

Nothing under ``core`` imports napari, qtpy or magicgui.
"""


def drain(gen, on_event=None):
    """Run a core generator (``iter_analyze_smear``, ``fit_classifier``, ...) to its end and return its value,
    handing each event it yields to ``on_event`` when given."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)
