"""SmearResult -> napari layers; our result layers are found by metadata, never by name."""

from __future__ import annotations

import hashlib

import numpy as np

from ..core.pipeline import SmearResult
from ..core.render import EXCLUDED, EXCLUDED_RGBA, class_colors
from ..core.review import EXCLUDE, calls

#: metadata key marking a layer as a result of ours: {"source": <image layer name>, "role": ..., "hash": ...}
META_KEY = "napari_leukemia"
ROLES = ("cells", "p_leukemic", "gradcam")
#: Alpha of cells without a manual call once a table is under review (it has an ``annotation`` column).
UNREVIEWED_ALPHA = 0.4
#: Alpha of cells called "exclude" by hand (gray).
EXCLUDED_ALPHA = 0.25
#: What the Review panel says of an action that needs a whole label image in memory, on a whole slide's cells.
SINGLE_IMAGES_ONLY = ("{what} works on single images, not yet on whole slides (their labels are read level by level); "
                      "calls, navigation and heat maps work, and Save review writes the calls to cells_reviewed.csv")
#: Grad-CAM value from which the heat map is opaque (below it fades to transparent at 0).
HEAT_OPAQUE = 0.3


def labels_hash(labels: np.ndarray) -> str:
    """Short digest of a label image, to notice a user's edits."""
    return hashlib.sha1(np.ascontiguousarray(labels).tobytes()).hexdigest()[:16]


def label_colormap(cells, classes, leukemic):
    """DirectLabelColormap colouring each label by its call: the predicted class, or the manual one once set.

    In a table under review (one with an ``annotation`` column) cells without a manual call are paler and
    excluded cells faint gray. Labels without a row (painted, not yet classified) are gray.
    """
    from napari.utils.colormaps import DirectLabelColormap

    colors = class_colors(classes, leukemic)
    mapping = {None: EXCLUDED_RGBA, 0: (0.0, 0.0, 0.0, 0.0)}
    manual = cells["annotation"].fillna("").astype(str) if "annotation" in cells else None
    for i, (label, call) in enumerate(zip(cells["label"], calls(cells))):
        if call == EXCLUDE:
            rgba = (*colors[EXCLUDED][:3], EXCLUDED_ALPHA)
        else:
            rgba = colors[str(call)]
            if manual is not None and not manual.iat[i]:
                rgba = (*rgba[:3], UNREVIEWED_ALPHA)
        mapping[int(label)] = rgba
    return DirectLabelColormap(color_dict=mapping)


def layer_features(cells):
    """The cell table as a Labels layer's ``features``: with napari's ``index`` column (= label), so that the
    status bar shows the row of the cell under the cursor."""
    return cells.assign(index=cells["label"].to_numpy()).reset_index(drop=True)


def cell_table_of(layer):
    """A cells layer's table without napari's ``index`` column."""
    return layer.features.drop(columns="index", errors="ignore").reset_index(drop=True)


def heat_colormap():
    """Colormap of the Grad-CAM layer: inferno, transparent at 0 and fading in up to :data:`HEAT_OPAQUE`, so
    that no heat (the background, and every pixel outside a cell) never tints the smear."""
    from napari.utils.colormaps import Colormap, ensure_colormap

    x = np.linspace(0.0, 1.0, 33)
    rgba = ensure_colormap("inferno").map(x)
    rgba[:, 3] = np.clip(x / HEAT_OPAQUE, 0.0, 1.0)
    return Colormap(rgba, controls=x, name="napari-leukemia heat")


def heat_kwargs(source: str, summary: dict, translate=(0, 0), scale=(1, 1), visible: bool = False) -> dict:
    """Settings of our Grad-CAM layer for image ``source``."""
    return {
        "name": f"{source} Grad-CAM",
        "colormap": heat_colormap(),
        "contrast_limits": (0.0, 1.0),
        "blending": "translucent",
        "opacity": 0.8,
        "visible": visible,
        "metadata": {META_KEY: {"source": source, "role": "gradcam"}, "summary": summary},
        "translate": translate,
        "scale": scale,
    }


def add_heat_layer(viewer, cells, data=None, translate=None):
    """A Grad-CAM layer (shown) for ``cells``, one of our cells layers, just below it; the active layer stays active.

    ``data`` (default: zeros over the whole cells layer) at ``translate`` (default: the cells layer's), e.g. the
    map of one slide cell's region."""
    active = viewer.layers.selection.active
    kwargs = heat_kwargs(cells.metadata[META_KEY]["source"], cells.metadata.get("summary", {}),
                         tuple(cells.translate) if translate is None else translate, tuple(cells.scale), visible=True)
    layer = viewer.add_image(np.zeros(np.shape(cells.data), np.float32) if data is None else data, **kwargs)
    viewer.layers.move(viewer.layers.index(layer), viewer.layers.index(cells))
    viewer.layers.selection.active = active
    return layer


def result_layers(result: SmearResult, source: str, classes, leukemic, translate=(0, 0), scale=(1, 1),
                  map_downsample: float = 1) -> list[tuple]:
    """Layer data tuples, bottom to top: the ``p(leukemic)`` and ``Grad-CAM`` images (hidden), then the cells
    (Labels with ``features``) on top.

    A slide's result (:func:`~..core.slide_analysis.read_slide_result`) has a list of label levels (a multiscale
    layer, never hashed: that would read every level) and a ``p(leukemic)`` map ``map_downsample`` times coarser.
    """
    common = {"translate": translate, "scale": scale}
    multiscale = isinstance(result.labels, list)
    coarse = {"scale": tuple(v * map_downsample for v in scale),
              "translate": tuple(t + (map_downsample - 1) / 2 * v for t, v in zip(translate, scale))}
    meta = lambda role, **kw: {META_KEY: {"source": source, "role": role, **kw}, "summary": result.summary}  # noqa: E731
    layers = [
        (
            result.probability,
            {
                "name": f"{source} p(leukemic)",
                "colormap": "magma",
                "contrast_limits": (0.0, 1.0),
                "blending": "additive",
                "opacity": 0.7,
                "visible": False,
                "metadata": meta("p_leukemic"),
                **coarse,
            },
            "image",
        ),
    ]
    if result.gradcam is not None:
        layers.append((result.gradcam, heat_kwargs(source, result.summary, translate, scale), "image"))
    layers.append(
        (
            result.labels,
            {
                "name": f"{source} cells",
                "features": layer_features(result.cells),
                "colormap": label_colormap(result.cells, classes, leukemic),
                "opacity": 0.55,
                "metadata": meta("cells", hash=None if multiscale else labels_hash(result.labels)),
                "multiscale": multiscale,
                **common,
            },
            "labels",
        )
    )
    return layers


def our_layers(viewer, source: str) -> dict:
    """Our result layers for image ``source``: ``{role: layer}``."""
    found = {}
    for layer in viewer.layers:
        info = layer.metadata.get(META_KEY)
        if isinstance(info, dict) and info.get("source") == source and info.get("role") in ROLES:
            found[info["role"]] = layer
    return found


def is_edited(layer) -> bool:
    """True when a cells layer is the user's work: painted on since the analysis, holding manual calls, or
    loaded from a saved review."""
    info = layer.metadata.get(META_KEY, {})
    if info.get("review") or ("annotation" in layer.features and (layer.features["annotation"].fillna("") != "").any()):
        return True
    if layer.multiscale:  # napari paints no multiscale labels, and hashing would read every level
        return False
    return info.get("hash") not in (None, labels_hash(np.asarray(layer.data)))


def show_result(viewer, result: SmearResult, source: str, classes, leukemic, translate=(0, 0), scale=(1, 1),
                map_downsample: float = 1) -> list:
    """Put a result in the viewer, replacing our earlier result layers of the same image in place.

    A cells layer the user has edited is kept untouched (it becomes theirs: our mark is removed) and
    a new one is added beside it. User layers are never touched. The maps lie below the cells, which end selected.
    """
    existing = our_layers(viewer, source)
    if "cells" in existing and is_edited(existing["cells"]):
        existing["cells"].metadata = {k: v for k, v in existing["cells"].metadata.items() if k != META_KEY}
        existing["cells"].name = existing["cells"].name + " (edited)"
        del existing["cells"]
    out = []
    for data, kwargs, kind in result_layers(result, source, classes, leukemic, translate, scale, map_downsample):
        role = kwargs["metadata"][META_KEY]["role"]
        layer = existing.pop(role, None)
        if layer is not None and layer.multiscale != kwargs.get("multiscale", False):  # napari cannot switch
            viewer.layers.remove(layer)
            layer = None
        if layer is not None:
            layer.data = data
            for key in ("features", "colormap", "metadata", "translate", "scale"):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            if kind == "image":
                layer.contrast_limits = kwargs["contrast_limits"]
        else:
            layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
        out.append(layer)
    for layer in existing.values():  # e.g. Grad-CAM turned off this time
        viewer.layers.remove(layer)
    cells = out[-1]
    for layer in out[:-1]:  # a map added after the cells (e.g. Grad-CAM turned on again) goes below them
        if viewer.layers.index(layer) > viewer.layers.index(cells):
            viewer.layers.move(viewer.layers.index(layer), viewer.layers.index(cells))
    viewer.layers.selection.active = cells
    return out
