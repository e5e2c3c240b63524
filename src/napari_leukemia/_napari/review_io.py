"""npe2 reader and writer of saved reviews (``<stem>.review/`` folders, see :mod:`napari_leukemia.core.review`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..core.review import REVIEW_SUFFIX, Review, ReviewError, image_sha256, is_review, load_review, save_review, source_problem
from .layers import META_KEY, label_colormap, labels_hash, layer_features

CELLS_OPACITY = 0.55


def is_cells_layer(layer) -> bool:
    """A Labels layer holding a napari-leukemia cell table (from Analyze or a loaded review)."""
    from napari.layers import Labels

    summary = layer.metadata.get("summary", {})
    return (isinstance(layer, Labels) and isinstance(summary, dict) and "classes" in summary
            and "predicted_class" in layer.features)


def source_image(viewer, name: str):
    """Pixels of the open image layer called ``name`` (level 0 if multiscale), or None."""
    if viewer is None or name not in viewer.layers:
        return None
    from napari.layers import Image

    layer = viewer.layers[name]
    if not isinstance(layer, Image):
        return None
    return np.asarray(layer.data[0] if layer.multiscale else layer.data)


def review_of(name: str, data, features, metadata, *, translate=(0, 0), scale=(1, 1), image=None) -> Review:
    """The :class:`Review` of a cells layer (its parts, as napari hands them to writers).

    ``image`` (the source pixels) gives the review its image hash; else a hash loaded with the layer is kept.
    """
    summary = metadata.get("summary", {})
    if not isinstance(summary, dict) or "classes" not in summary or "predicted_class" not in features:
        raise ReviewError(f"layer {name!r} is not a napari-leukemia cells layer (run Analyze smear first)")
    ours = metadata.get(META_KEY, {})
    info = {
        "image": summary.get("image") or ours.get("source") or name,
        "image_sha256": image_sha256(image) if image is not None else ours.get("image_sha256", ""),
        "classes": list(summary["classes"]),
        "leukemic_classes": list(summary.get("leukemic_classes", [])),
        "classifier": summary.get("classifier", ""),
        "translate": [float(v) for v in translate][-2:],
        "scale": [float(v) for v in scale][-2:],
        "summary": summary,
    }
    cells = features.drop(columns="index", errors="ignore").reset_index(drop=True)
    return Review(labels=np.asarray(data), cells=cells, info=info)


def review_layer(review: Review, path="") -> tuple:
    """Layer data tuple of a loaded review: the cells Labels layer with its table, calls and colours."""
    info = review.info
    name = info.get("image") or Path(path).stem
    summary = {**info.get("summary", {}), "image": name, "classes": info["classes"],
               "leukemic_classes": info.get("leukemic_classes", []), "classifier": info.get("classifier", "")}
    ours = {"source": name, "role": "cells", "hash": labels_hash(review.labels), "review": str(path),
            "image_sha256": info.get("image_sha256", "")}
    kwargs = {
        "name": f"{name} cells",
        "features": layer_features(review.cells),
        "colormap": label_colormap(review.cells, info["classes"], info.get("leukemic_classes", [])),
        "opacity": CELLS_OPACITY,
        "metadata": {META_KEY: ours, "summary": summary},
        "translate": tuple(info.get("translate", (0, 0))),
        "scale": tuple(info.get("scale", (1, 1))),
    }
    return review.labels, kwargs, "labels"


def get_reader(path):
    """npe2 reader hook: a reader for one ``*.review`` folder, else None."""
    if isinstance(path, list) or not is_review(path):
        return None
    return read_review


def read_review(path) -> list[tuple]:
    """Read a saved review; warns when its image is not open in the viewer or differs from the reviewed one."""
    import napari

    path = path[0] if isinstance(path, list) else path
    review = load_review(path)
    layer = review_layer(review, path)
    problem = source_problem(review.info, source_image(napari.current_viewer(), review.info.get("image", "")))
    if problem:
        warnings.warn(f"{path}: {problem}", UserWarning, stacklevel=2)
    return [layer]


def write_review(path: str, data, meta: dict) -> list[str]:
    """npe2 writer of a cells Labels layer as a ``.review`` folder; never replaces an existing one."""
    import napari

    path = str(path) if str(path).endswith(REVIEW_SUFFIX) else f"{path}{REVIEW_SUFFIX}"
    ours = meta.get("metadata", {}).get(META_KEY, {})
    viewer = napari.current_viewer()
    image = source_image(viewer, meta.get("metadata", {}).get("summary", {}).get("image") or ours.get("source", ""))
    if image is not None and source_problem({**ours, "image_shape": list(np.shape(data))}, image):
        image = None  # another image of that name is open: keep the hash the layer came with
    review = review_of(meta.get("name", "cells"), data, meta.get("features"), meta.get("metadata", {}),
                       translate=meta.get("translate", (0, 0)), scale=meta.get("scale", (1, 1)), image=image)
    save_review(path, review, overwrite=False)
    return [path]

