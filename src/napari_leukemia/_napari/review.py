"""Review cells: walk through the cells most uncertain first, correct calls and masks, save, export for training.

Shortcuts, active while the cells layer is selected: Alt+1..Alt+9 set the class (checkpoint order), Alt+0 excludes
the cell (not a leukocyte), Alt+N / Alt+P go to the next / previous cell.
"""

from __future__ import annotations

import getpass
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, PushButton, Select

from ..core.config import DEVICE_CHOICES
from ..core.review import EXCLUDE, ReviewError
from .layers import META_KEY, SINGLE_IMAGES_ONLY, cell_table_of, label_colormap, layer_features, our_layers
from .review_files import ReviewFiles
from .review_heat import HEAT_WORDS, ReviewHeat, checked_classifier
from .review_io import is_cells_layer, source_image
from .worker_widget import WorkerWidget

#: Zoom so that a cell's bounding box fills this fraction of the canvas' shorter side.
CELL_FILL = 0.3
#: Colour of the box around the selected cell (black: it stands out on the pale smear and on the class colours).
MARK_COLOR = "black"
NEXT_KEY, PREVIOUS_KEY, EXCLUDE_KEY = "Alt-N", "Alt-P", "Alt-0"


def camera_and_canvas_size(viewer):
    """The viewer's camera and canvas ``(height, width)``: ``viewer.scene.camera`` and ``viewer.canvas.size`` from
    napari 0.9, ``viewer.camera`` and ``viewer._canvas_size`` before."""
    scene = getattr(viewer, "scene", None)
    if scene is not None:
        return scene.camera, tuple(viewer.canvas.size)
    return viewer.camera, tuple(viewer._canvas_size)


def class_key(i: int) -> str:
    """Shortcut of the ``i``-th class (0-based): Alt-1 ... Alt-9."""
    return f"Alt-{i + 1}"


class ReviewWidget(ReviewFiles, ReviewHeat, WorkerWidget):
    """Review cells: the cells of a result, most uncertain first; set calls, fix masks, save, export.

    Calls go to the cells layer's ``features`` (``annotation``, ``annotated_by``, ``annotated_at``); Update
    re-classifies only the cells whose mask was edited; Save/Load write and read ``<image>.review/`` folders;
    Add to training set exports the hand-called cells as crops plus ``dataset.csv``.
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, labels=True)
        self._layer = None  # the cells layer under review, with our key bindings
        self._marker = None  # a Shapes layer with a box around the selected cell
        self._picked = False  # a cell was selected in it (by the panel or the user) since it was attached
        self._order = np.zeros(0, int)
        self._cells = ComboBox(choices=self._cells_layers, label="cells layer")
        self._list_items = []  # (text, label) of the listed cells; callable choices survive napari's reset_choices
        self._filter = ComboBox(choices=lambda _w: ["all", *self.classes, EXCLUDE], value="all", label="show")
        self._unreviewed = CheckBox(value=False, text="only cells not yet reviewed")
        self._cell_list = Select(choices=lambda _w: self._list_items, allow_multiple=False, label="most uncertain first",
                                 tooltip="each cell's current call and its highest class probability (top p)")
        self._cell_list.native.setMinimumHeight(120)
        self._previous = PushButton(text="< Previous (Alt+P)")
        self._next = PushButton(text="Next (Alt+N) >")
        self._info = Label(value="")
        self._only_selected = CheckBox(value=False, text="show only this cell")
        self._explain = PushButton(text="Heat map of this cell", tooltip="Grad-CAM: where the classifier looked for "
                                   "this cell's call, shown inside the cell in the Grad-CAM layer")
        self._advance = CheckBox(value=True, text="go to the next cell after a call")
        self._calls = Container(layout="vertical", labels=False, label="call")  # rows of two: fits a laptop's dock
        self._call_buttons: list[PushButton] = []
        self._annotator = LineEdit(value=getpass.getuser(), label="annotator")
        self._classifier = FileEdit(mode="r", filter="*.safetensors", label="classifier", value="")
        self._classifier.native.setToolTip("the checkpoint that classified these cells; empty: the shipped DenseNet201")
        self._device = ComboBox(choices=list(DEVICE_CHOICES), value=DEVICE_CHOICES[0], label="device")
        self._more = self._more_settings("annotator, classifier, device", [self._annotator, self._classifier, self._device])
        self._update = PushButton(text="Update edited cells")
        self._save = PushButton(text="Save review...")
        self._load = PushButton(text="Load review...")
        self._dataset = FileEdit(mode="d", label="training set folder", value="")
        self._group = LineEdit(value="", label="patient / slide id")
        self._group.native.setPlaceholderText("default: the image name")
        self._confirmed = CheckBox(value=True, text="include calls that confirm the prediction")
        self._export = PushButton(text="Add to training set")
        self._status = Label(value="")
        self._slide = Label(value="")
        for button, slot in ((self._previous, self.previous), (self._next, self.next), (self._update, self.update),
                             (self._save, lambda: self.save()), (self._load, lambda: self.load()),
                             (self._export, lambda: self.export()), (self._explain, lambda: self.explain())):
            button.changed.connect(slot)
        self._cells.changed.connect(self._attach)
        self._filter.changed.connect(self.refresh)
        self._unreviewed.changed.connect(self.refresh)
        self._cell_list.changed.connect(lambda v: v and self.go_to(v[0]))
        self._only_selected.changed.connect(self._show_only)
        self._body.extend([
            self._cells, self._slide, self._filter, self._unreviewed, self._cell_list,
            Container(widgets=[self._previous, self._next], layout="horizontal", labels=False),
            self._info, self._explain, self._only_selected,
            self._calls, self._advance, self._more, self._annotator,
            self._classifier, self._device, self._update,
            Container(widgets=[self._save, self._load], layout="horizontal", labels=False),
            self._dataset, self._group, self._confirmed, self._export, self._bar, self._status,
        ])
        self._fit_dock()
        viewer.layers.events.inserted.connect(self._cells.reset_choices)
        viewer.layers.events.removed.connect(self._cells.reset_choices)
        viewer.layers.events.removed.connect(self._on_removed)
        self._set_running(False)  # no layer yet: nothing to act on
        self._attach(self._cells.value)

    # --- the layer under review -------------------------------------------------------------------
    def _cells_layers(self, _widget=None):
        return [(layer.name, layer) for layer in self._viewer.layers if is_cells_layer(layer)]

    @property
    def classes(self) -> list[str]:
        return list(self._layer.metadata["summary"]["classes"]) if self._layer is not None else []

    @property
    def leukemic(self) -> list[str]:
        return list(self._layer.metadata["summary"].get("leukemic_classes", [])) if self._layer is not None else []

    @property
    def table(self):
        """The cell table of the layer under review (without napari's ``index`` column)."""
        return cell_table_of(self._layer)

    def _attach(self, layer):
        """Review ``layer``: bind the shortcuts to it, one call button per class."""
        old = self._layer
        if old is layer:
            return
        if old is not None:
            for key in self._keys(old):
                old.bind_key(key, None)
            old.events.selected_label.disconnect(self._on_selected)
            old.events.features.disconnect(self.refresh)
        marker, self._marker = self._marker, None
        if marker is not None and marker in self._viewer.layers:
            self._viewer.layers.remove(marker)
        self._layer = layer
        self._picked = False  # napari's initial selected label is no cell the user chose: Next starts at the top
        self._calls.clear()
        self._call_buttons = []
        self._set_running(self._worker is not None)
        if layer is None:
            self._filter.reset_choices()
            self.refresh()
            return
        actions = [(c, class_key(i) if i < 9 else "") for i, c in enumerate(self.classes)] + [(EXCLUDE, EXCLUDE_KEY)]
        for value, key in actions:
            button = PushButton(text=f"{value} ({key.replace('-', '+')})" if key else value)
            button.changed.connect(lambda _=None, v=value: self.set_call(v))
            self._call_buttons.append(button)
            if key:
                layer.bind_key(key, lambda _layer, v=value: self.set_call(v), overwrite=True)
        clear = PushButton(text="clear")
        clear.changed.connect(lambda: self.set_call(""))
        self._call_buttons.append(clear)
        for i in range(0, len(self._call_buttons), 2):
            self._calls.append(Container(widgets=self._call_buttons[i : i + 2], layout="horizontal", labels=False))
        layer.bind_key(NEXT_KEY, lambda _layer: self.next(), overwrite=True)
        layer.bind_key(PREVIOUS_KEY, lambda _layer: self.previous(), overwrite=True)
        layer.events.selected_label.connect(self._on_selected)
        layer.events.features.connect(self.refresh)
        with self._filter.changed.blocked():
            self._filter.native.clear()  # rebuilt in class order
            self._filter.reset_choices()
            self._filter.value = "all"
        self.refresh()

    def _on_removed(self, event):
        """Let go of the reviewed layer (or our box) when it leaves the viewer."""
        if event.value is self._layer:
            self._attach(None)
        elif event.value is self._marker:
            self._marker = None

    def _keys(self, layer) -> list[str]:
        classes = layer.metadata.get("summary", {}).get("classes", [])
        return [class_key(i) for i in range(min(len(classes), 9))] + [EXCLUDE_KEY, NEXT_KEY, PREVIOUS_KEY]

    # --- list, navigation, info --------------------------------------------------------------------
    def refresh(self, _event=None):
        """Re-order and re-filter the cell list (most uncertain first)."""
        from ..core.review import calls, review_order, review_uncertainty, reviewed_summary

        if self._layer is None:
            self._order = np.zeros(0, int)
            self._list_items = []
            self._cell_list.reset_choices()
            self._info.value = "No cells layer: run Analyze smear, or load a review."
            self._slide.value = ""
            return
        cells = self.table
        s = reviewed_summary(cells, self.leukemic)
        self._slide.value = (f"with your calls: {s['leukocytes']} leukocytes, {s['leukemic']} leukaemic "
                             f"({100 * s['leukemic_fraction']:.1f}%)\n{s['called_by_hand']} called by hand, "
                             f"{s['excluded']} excluded")
        call = None if self._filter.value == "all" else self._filter.value
        self._order = review_order(cells, self.classes, self.leukemic, call=call, unreviewed=self._unreviewed.value)
        rows = cells.set_index("label")
        u = dict(zip(cells["label"], review_uncertainty(cells, self.classes, self.leukemic)))
        text = dict(zip(cells["label"], calls(cells)))
        manual = rows["annotation"] if "annotation" in rows else None
        self._list_items = [(f"cell {i}: {text[i]}{' (by hand)' if manual is not None and manual[i] else ''}, "
                             f"top p {1 - u[i]:.2f}", int(i)) for i in self._order]
        with self._cell_list.changed.blocked():
            self._cell_list.native.clear()  # magicgui keeps items it already has in place: rebuild, in order
            self._cell_list.reset_choices()
            if self._layer.selected_label in self._order:
                self._cell_list.value = int(self._layer.selected_label)
        self._show_info(self._layer.selected_label)

    def next(self):
        """Go to the next cell of the list (wrapping around)."""
        self._step(1)

    def previous(self):
        """Go to the previous cell of the list (wrapping around)."""
        self._step(-1)

    def _step(self, delta: int):
        if not len(self._order):
            self._status.value = "No cells to review here (change the filter?)."
            return
        current = self._layer.selected_label if self._picked else None
        hits = np.flatnonzero(self._order == current)
        i = (hits[0] + delta) % len(self._order) if len(hits) else (0 if delta > 0 else len(self._order) - 1)
        self.go_to(int(self._order[i]))

    def go_to(self, label: int):
        """Centre the camera on cell ``label``, zoom to it, select it and show its probabilities."""
        layer = self._layer
        cells = self.table if layer is not None else None
        row = None if cells is None else cells[cells["label"] == label]
        if row is None or row.empty:
            return
        row = row.iloc[0]
        camera, canvas = camera_and_canvas_size(self._viewer)
        camera.center = tuple(layer.data_to_world([row["centroid_y"], row["centroid_x"]]))
        side = max(row["bbox_y1"] - row["bbox_y0"], row["bbox_x1"] - row["bbox_x0"]) * float(np.max(np.abs(layer.scale)))
        camera.zoom = CELL_FILL * float(min(canvas)) / max(side, 1.0)
        layer.selected_label = int(label)
        self._viewer.layers.selection.active = layer
        with self._cell_list.changed.blocked():
            if label in self._order:
                self._cell_list.value = int(label)
        self._show_info(label)
        self._mark(label)

    def _on_selected(self, event=None):
        self._picked = True
        self._show_info(self._layer.selected_label)
        self._mark(self._layer.selected_label)

    def _mark(self, label):
        """Draw a box around cell ``label`` of the reviewed layer (none when it has no row), in a Shapes layer of
        our own added the first time; the cells layer stays the active one (it holds the shortcuts)."""
        layer, cells = self._layer, self.table
        row = cells[cells["label"] == label]
        boxes = []
        if not row.empty:
            y0, x0, y1, x1 = (float(row.iloc[0][f"bbox_{k}"]) for k in ("y0", "x0", "y1", "x1"))
            pad = max(y1 - y0, x1 - x0) * 0.08
            boxes = [np.array([[y0 - pad, x0 - pad], [y1 + pad, x1 + pad]])]
        width = max(2.0, pad / 2) if boxes else 2.0
        if self._marker is None:
            if not boxes:
                return
            active = self._viewer.layers.selection.active
            self._marker = self._viewer.add_shapes(
                boxes, shape_type="rectangle", edge_color=MARK_COLOR, face_color="transparent", edge_width=width,
                name=f"{layer.name} selected cell", translate=layer.translate, scale=layer.scale)
            self._viewer.layers.selection.active = active
            return
        self._marker.data = []
        if boxes:
            self._marker.add_rectangles(boxes, edge_width=width, edge_color=MARK_COLOR, face_color="transparent")

    def _show_only(self, value: bool):
        if self._layer is not None:
            self._layer.show_selected_label = bool(value)

    def _show_info(self, label):
        from ..core.pipeline import probability_column

        cells = self.table if self._layer is not None else None
        row = None if cells is None else cells[cells["label"] == label]
        if row is None or row.empty:
            self._info.value = f"cell {label}: not in the cell table (press Update after painting it)" if label else ""
            return
        row = row.iloc[0]
        position = np.flatnonzero(self._order == label)
        where = f" ({position[0] + 1} of {len(self._order)})" if len(position) else ""
        probs = ", ".join(f"p({c}) {row[probability_column(c, self.leukemic)]:.3f}" for c in self.classes)
        manual = row.get("annotation", "") or "none"
        if manual != "none":
            manual += f" by {row['annotated_by']} at {row['annotated_at']}"
        if "p_leukemic" not in {probability_column(c, self.leukemic) for c in self.classes}:
            probs += f"\np(leukemic) {row['p_leukemic']:.3f}"  # the sum over the leukaemic classes (cell types)
        self._info.value = (f"cell {label}{where}: predicted {row['predicted_class']}\n{probs}\n"
                            f"{HEAT_WORDS}: {self._heat_text(row)}\nmanual call: {manual}")

    # --- calls ---------------------------------------------------------------------------------------
    def set_call(self, value: str):
        """Set the selected cell's manual call: a class, ``"exclude"``, or ``""`` to clear it."""
        from ..core.review import annotate

        layer = self._layer
        if layer is None:
            return
        label = int(layer.selected_label)
        try:
            cells = annotate(self.table, label, value, classes=self.classes, who=self._annotator.value.strip() or None)
        except KeyError as err:
            self._status.value = str(err.args[0])
            return
        old_order = [int(i) for i in self._order]
        self._apply(cells)
        self._status.value = f"cell {label}: {value or 'call cleared'}"
        if self._advance.value and value and label in old_order:
            k = old_order.index(label)
            following = [i for i in old_order[k + 1 :] + old_order[:k] if i in self._order]
            if following:
                self.go_to(following[0])

    def _apply(self, cells):
        """Put a new table on the layer: features (the list follows their event) and colours."""
        self._layer.colormap = label_colormap(cells, self.classes, self.leukemic)
        self._layer.features = layer_features(cells)

    # --- update edited cells ---------------------------------------------------------------------
    def _image(self):
        """The open source image's pixels, checked against the review's hash and shape (ReviewError if not)."""
        from ..core.review import source_problem

        name = self._layer.metadata["summary"].get("image", "")
        image = source_image(self._viewer, name)
        info = {**self._layer.metadata.get(META_KEY, {}), "image": name, "image_shape": list(np.shape(self._layer.data))}
        problem = source_problem(info, image)
        if problem:
            raise ReviewError(problem)
        return image

    def _classifier_path(self):
        value = str(self._classifier.value or "").strip()
        return value if value not in ("", ".") and Path(value).is_file() else None

    def update(self):
        """Re-classify, in a worker, only the cells whose mask was edited; returns the worker (or None)."""
        from ..core.review import update_cells

        if self._layer is None or self._worker is not None:
            return self._worker
        if self._layer.multiscale:
            self._status.value = SINGLE_IMAGES_ONLY.format(what="Re-classifying edited cells")
            return None
        try:
            image = self._image()
        except ReviewError as err:
            self._status.value = f"Cannot update: {err}"
            return None
        layer, labels, table = self._layer, np.array(self._layer.data, copy=True), self.table
        expected, path, device = layer.metadata["summary"].get("classifier", ""), self._classifier_path(), self._device.value
        red = layer.metadata["summary"].get("red_cell_diameter")
        explain = self._heat_layer(labels.shape) is not None

        def work():
            clf = checked_classifier(path, device, expected)
            return update_cells(image, labels, table, clf, gradcam=explain, red_cell_px=red)

        return self._start(work, "updating edited cells...", returned=lambda result: self._updated(layer, labels, result))

    def _updated(self, layer, labels, result):
        from ..core.pipeline import paint_values
        from ..core.review import carry_annotations

        if layer is not self._layer:
            self._status.value = "the cells layer changed while updating; nothing was applied"
            return
        cells = carry_annotations(result.cells, self.table)  # calls made while the worker ran
        self._apply(cells)
        info = layer.metadata.get(META_KEY)
        if isinstance(info, dict):
            info["gradcam_stale"] = sorted({*info.get("gradcam_stale", ()), *map(int, result.changed)})
            if result.gradcam is not None:
                self._paint_heat(labels, result.changed, result.gradcam)
            probability = our_layers(self._viewer, info.get("source", "")).get("p_leukemic")
            if probability is not None and np.shape(probability.data) == labels.shape:
                probability.data = paint_values(labels, cells["label"].to_numpy(), cells["p_leukemic"].to_numpy())
        changed = ", ".join(map(str, result.changed)) or "none"
        self._status.value = f"re-classified cells: {changed}; removed rows: {len(result.removed)}"

    # --- workers -------------------------------------------------------------------------------------
    def _set_running(self, running: bool):
        """Buttons acting on the reviewed layer need one; those starting a worker also need none running."""
        reviewing = self._layer is not None
        for button in (self._previous, self._next, self._save):
            button.enabled = reviewing
        for button in (self._update, self._export, self._explain):
            button.enabled = reviewing and not running
