"""Review cells, the heat-map part: the heat inside a cell, and the Grad-CAM of the selected cell on demand."""

from __future__ import annotations

import numpy as np

from ..core.review import ReviewError
from .layers import META_KEY, add_heat_layer, our_layers

#: How the info line names the mean Grad-CAM inside a cell, in plain words.
HEAT_WORDS = "heat map inside the cell (0-1; high: the call rests on the cell itself)"


def checked_classifier(path, device, expected: str):
    """The classifier at ``path`` (None: the shipped one) on ``device``; ReviewError unless it is the one named
    ``expected`` (the one that classified the cells under review)."""
    from ..core.pipeline import get_classifier, model_name

    clf = get_classifier(path, device)
    if expected and model_name(clf.path) != expected:
        raise ReviewError(f"these cells were classified by {expected}, not {model_name(clf.path)}; "
                          "choose that checkpoint under 'classifier'")
    return clf


class ReviewHeat:
    """Heat maps of :class:`~.review.ReviewWidget` (which holds the layer under review, its widgets and ``_image``,
    ``_classifier_path``, ``_show_info``, ``table``, ``classes``)."""

    def _heat_layer(self, shape):
        """The Grad-CAM layer of the reviewed cells' analysis (None when there is none of that shape)."""
        info = self._layer.metadata.get(META_KEY) if self._layer is not None else None
        cam = our_layers(self._viewer, info.get("source", "")).get("gradcam") if isinstance(info, dict) else None
        return cam if cam is not None and np.shape(cam.data) == tuple(shape) else None

    def _heat_text(self, row) -> str:
        """Mean Grad-CAM inside the cell's mask, from our Grad-CAM layer of the same image."""
        if self._layer.multiscale:  # one cell's heat at a time, with its mean
            info = self._layer.metadata.get(META_KEY, {})
            cam = our_layers(self._viewer, info.get("source", "")).get("gradcam")
            shown = cam.metadata.get(META_KEY, {}) if cam is not None else {}
            if shown.get("cell") == int(row["label"]) and "mean" in shown:
                return f"{shown['mean']:.3f}"
            return "none yet (press Heat map of this cell)"
        info = self._layer.metadata.get(META_KEY, {})
        labels = np.asarray(self._layer.data)
        cam = self._heat_layer(labels.shape)
        label = int(row["label"])
        if cam is None or label in info.get("gradcam_stale", ()):
            return "none yet (press Heat map of this cell)"
        box = np.s_[int(row["bbox_y0"]) : int(row["bbox_y1"]), int(row["bbox_x0"]) : int(row["bbox_x1"])]
        inside = labels[box] == label
        heat = np.asarray(cam.data)[box][inside]
        return f"{float(heat.mean()):.3f}" if inside.any() and heat.any() else "none yet (press Heat map of this cell)"

    def explain(self):
        """Grad-CAM of the selected cell for its predicted class, in a worker, painted into the Grad-CAM layer (added
        and shown when missing); returns the worker, or None."""
        from ..core.explain import explain_cells

        if self._layer is None or self._worker is not None:
            return self._worker
        layer, table = self._layer, self.table
        label = int(layer.selected_label)
        row = table[table["label"] == label]
        if row.empty or not isinstance(layer.metadata.get(META_KEY), dict):
            self._status.value = "Select a classified cell of an analysis first (Next, or click it)."
            return None
        if layer.multiscale:
            return self._explain_slide_cell(layer, row.iloc[0])
        try:
            image = self._image()
        except ReviewError as err:
            self._status.value = f"Cannot explain: {err}"
            return None
        labels, summary = np.array(layer.data, copy=True), layer.metadata["summary"]
        target = self.classes.index(str(row["predicted_class"].iloc[0]))
        path, device, red = self._classifier_path(), self._device.value, summary.get("red_cell_diameter")

        def work():
            clf = checked_classifier(path, device, summary.get("classifier", ""))
            return explain_cells(image, labels, clf, [label], [target], red_cell_px=red)

        return self._start(work, f"heat map of cell {label}...",
                           returned=lambda heat: self._explained(layer, labels, label, heat))

    def _explain_slide_cell(self, layer, row):
        """Grad-CAM of one cell of a whole slide, from the region around it (the slide's level 0 and the labels'
        level 0 are read there only), shown as a small heat layer over that region."""
        from ..core.explain import explain_cell_region

        source = layer.metadata[META_KEY].get("source", "")
        if source not in self._viewer.layers or not getattr(self._viewer.layers[source], "multiscale", False):
            self._status.value = f"Cannot explain: open the slide {source!r} (its layer was closed or renamed)"
            return None
        image, labels = self._viewer.layers[source].data[0], layer.data[0]
        summary, label = layer.metadata["summary"], int(row["label"])
        target = self.classes.index(str(row["predicted_class"]))
        bbox = [row[f"bbox_{k}"] for k in ("y0", "x0", "y1", "x1")]
        path, device, red = self._classifier_path(), self._device.value, summary.get("red_cell_diameter")

        def work():
            clf = checked_classifier(path, device, summary.get("classifier", ""))
            return explain_cell_region(image, labels, clf, label, target, bbox, red_cell_px=red)

        return self._start(work, f"heat map of cell {label}...",
                           returned=lambda result: self._explained_slide_cell(layer, label, *result))

    def _explained_slide_cell(self, layer, label: int, heat, origin, mean: float):
        if layer is not self._layer:
            self._status.value = "the cells layer changed meanwhile; nothing was applied"
            return
        translate = tuple(t + o * s for t, o, s in zip(tuple(layer.translate)[-2:], origin, tuple(layer.scale)[-2:]))
        cam = our_layers(self._viewer, layer.metadata[META_KEY]["source"]).get("gradcam")
        if cam is None:
            cam = add_heat_layer(self._viewer, layer, heat, translate)
        cam.data, cam.translate, cam.visible = heat, translate, True
        cam.metadata[META_KEY].update(cell=label, mean=mean)
        self._show_info(label)
        self._status.value = f"heat map of cell {label}: where the classifier looked for its call"

    def _explained(self, layer, labels, label: int, heat):
        if layer is not self._layer:
            self._status.value = "the cells layer changed meanwhile; nothing was applied"
            return
        self._paint_heat(labels, [label], heat).visible = True
        self._show_info(label)
        self._status.value = f"heat map of cell {label}: where the classifier looked for its call"

    def _paint_heat(self, labels, ids, heat):
        """Paint ``heat`` over cells ``ids`` into the reviewed cells' Grad-CAM layer (added when missing); their
        heat is no longer stale. Returns the layer."""
        cam = self._heat_layer(labels.shape)
        if cam is None:
            cam = add_heat_layer(self._viewer, self._layer)
        cam.data = np.where(np.isin(labels, ids), heat, np.asarray(cam.data)).astype(np.float32)
        info = self._layer.metadata[META_KEY]
        info["gradcam_stale"] = sorted(set(info.get("gradcam_stale", ())) - {int(i) for i in ids})
        return cam
