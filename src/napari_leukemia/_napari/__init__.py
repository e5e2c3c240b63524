"""The napari face of napari-leukemia: the only package that imports napari, qtpy or magicgui."""


def docked(viewer, kind: type) -> list:
    """The widgets of type ``kind`` docked in ``viewer``'s window (e.g. to hand them a newly trained classifier).

    The viewer's own record of its docks is the only state: nothing global, so another viewer's widgets, a widget
    never docked and a dock the user closed are never found. napari hands each plugin widget its own proxy of the
    viewer; the viewer behind it is read.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer, or the proxy of it that napari hands a plugin widget.
    kind : type
        The widget class wanted (e.g. ``AnalyzeWidget``).

    Returns
    -------
    list
        The docked widgets of that class, in the order they were docked.
    """
    window = getattr(_unwrap(viewer), "window", None)
    if window is None:
        return []
    if hasattr(window, "dock_widgets"):  # napari >= 0.6.2
        inner = list(window.dock_widgets.values())
    else:
        inner = [getattr(dock.widget(), "_magic_widget", dock.widget()) for dock in window._dock_widgets.values()]
    return [widget for widget in inner if isinstance(widget, kind)]


def _unwrap(viewer):
    return getattr(viewer, "__wrapped__", viewer)
