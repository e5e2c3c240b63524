"""The napari face of napari-leukemia: the only package that imports napari, qtpy or magicgui."""

import weakref

#: Weak references to the dock widgets made, so that one widget finds the others of its viewer.
_WIDGETS: list = []


def register(widget) -> None:
    """Make ``widget`` (with a ``_viewer``) findable by :func:`docked`."""
    _WIDGETS.append(weakref.ref(widget))


def docked(viewer, kind: type) -> list:
    """The live widgets of type ``kind`` made for ``viewer`` (e.g. to hand them a newly trained classifier).

    napari hands each plugin widget its own proxy of the viewer; the viewers behind them are compared.
    """
    alive = [ref() for ref in _WIDGETS]
    _WIDGETS[:] = [weakref.ref(w) for w in alive if w is not None]
    target = _unwrap(viewer)
    return [w for w in alive if isinstance(w, kind) and _unwrap(w._viewer) is target]


def _unwrap(viewer):
    return getattr(viewer, "__wrapped__", viewer)

