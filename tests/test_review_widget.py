"""Review cells panel on a real viewer: order, navigation, calls by button and key, Update, save/load, npe2, export."""

import dataclasses

import numpy as np
import pytest

from napari_leukemia._napari.review import CELL_FILL, HEAT_WORDS
from napari_leukemia.core import review as rv
from napari_leukemia.core import training_set as ts
from napari_leukemia.core.config import AnalysisConfig
from napari_leukemia.core.pipeline import analyze_smear

pytestmark = pytest.mark.gui
TRANSLATE = (100.0, 50.0)


@pytest.fixture(scope="module")
def result(bccd_image, hand_cells, classifier):
    return analyze_smear(bccd_image, labels=hand_cells, classifier=classifier, config=AnalysisConfig(device="cpu"),
                         name="smear")


@pytest.fixture
def reviewing(make_napari_viewer, bccd_image, result):
    """A viewer as Analyze leaves it (image moved by TRANSLATE), and the Review panel."""
    from napari_leukemia._napari.layers import show_result
    from napari_leukemia._napari.review import ReviewWidget

    viewer = make_napari_viewer()
    viewer.add_image(bccd_image, name="smear", rgb=True, translate=TRANSLATE)
    result = dataclasses.replace(result, labels=result.labels.copy())  # the tests paint on it
    show_result(viewer, result, "smear", result.summary["classes"], result.summary["leukemic_classes"], translate=TRANSLATE)
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Review cells")  # docking resets the choices of its widgets
    widget._device.value = "cpu"
    widget._advance.value = False
    return viewer, widget, viewer.layers["smear cells"]


def _wait(widget, qtbot):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)


def test_cells_listed_most_uncertain_first_and_next_centres_on_the_cell(reviewing, result):
    viewer, widget, layer = reviewing
    order = list(widget._cell_list.choices)
    assert order == list(rv.review_order(result.cells, result.summary["classes"], result.summary["leukemic_classes"]))
    widget.next()
    first = result.cells.set_index("label").loc[order[0]]
    assert layer.selected_label == order[0] and viewer.layers.selection.active is layer
    assert np.allclose(viewer.scene.camera.center[-2:], (first["centroid_y"] + TRANSLATE[0], first["centroid_x"] + TRANSLATE[1]))
    box = max(first["bbox_y1"] - first["bbox_y0"], first["bbox_x1"] - first["bbox_x0"])
    assert viewer.scene.camera.zoom * box == pytest.approx(CELL_FILL * min(viewer.canvas.size))
    mask = result.labels == order[0]
    assert f"{HEAT_WORDS}: {result.gradcam[mask].mean():.3f}" in widget._info.value and "Grad-CAM" not in widget._info.value
    assert f"p(leukemic) {first['p_leukemic']:.3f}" in widget._info.value and "(1 of 4)" in widget._info.value
    widget.next()
    assert layer.selected_label == order[1]
    widget.previous(), widget.previous()
    assert layer.selected_label == order[-1]  # wraps around
    widget._only_selected.value = True
    assert layer.show_selected_label


def test_calls_by_button_and_shortcut_are_recorded_and_shown(reviewing):
    from napari_leukemia._napari.layers import EXCLUDED_ALPHA, UNREVIEWED_ALPHA
    from napari_leukemia.core.render import class_colors

    viewer, widget, layer = reviewing
    classes = widget.classes
    widget.go_to(2)
    next(b for b in widget._call_buttons if b.text.startswith("leukemic")).native.click()
    widget._annotator.value = "dr who"
    widget.go_to(3)
    viewer.window._qt_viewer._key_map_handler.press_key("Alt-1")  # the first class
    widget.go_to(4)
    viewer.window._qt_viewer._key_map_handler.press_key("Alt-0")
    table = layer.features.set_index("label")
    assert list(table.loc[[1, 2, 3, 4], "annotation"]) == ["", "leukemic", classes[0], "exclude"]
    assert "with your calls: 3 leukocytes" in widget._slide.value and "1 excluded" in widget._slide.value
    assert table.loc[3, "annotated_by"] == "dr who" and table.loc[2, "annotated_at"].startswith("20")
    colors = class_colors(classes, widget.leukemic)
    rgba = layer.colormap.map(np.array([1, 2, 4]))
    assert np.allclose(rgba[1], colors["leukemic"]) and rgba[0][3] == pytest.approx(UNREVIEWED_ALPHA)
    assert rgba[2][3] == pytest.approx(EXCLUDED_ALPHA) and np.allclose(rgba[2][:3], colors["excluded"][:3])
    assert list(widget._cell_list.choices) == list(rv.review_order(layer.features, classes, widget.leukemic))
    widget._unreviewed.value = True
    assert list(widget._cell_list.choices) == [1]
    widget._unreviewed.value, widget._filter.value = False, "exclude"
    assert list(widget._cell_list.choices) == [4]
    # going on to the next cell after a call
    widget._filter.value, widget._advance.value = "all", True
    order = list(widget._cell_list.choices)
    widget.go_to(order[0])
    viewer.window._qt_viewer._key_map_handler.press_key("Alt-2")
    assert layer.selected_label == order[1]


def test_update_reclassifies_only_painted_and_erased_cells(reviewing, qtbot):
    viewer, widget, layer = reviewing
    widget.go_to(1)
    widget.set_call("leukemic")
    before = layer.features.set_index("label")
    cam_before = np.array(viewer.layers["smear Grad-CAM"].data, copy=True)
    layer.brush_size = 40
    layer.paint((240, 330), 9)  # napari's brush: a new cell
    layer.fill((420, 560), 0)  # napari's bucket: erase cell 4
    assert widget.update() is not None
    _wait(widget, qtbot)
    assert "re-classified cells: 9;" in widget._status.value and "removed rows: 1" in widget._status.value
    after = layer.features.set_index("label")
    assert list(after.index) == [1, 2, 3, 9]
    for i in (1, 2, 3):
        assert after.loc[i].equals(before.loc[i])
    assert after.loc[1, "annotation"] == "leukemic" and after.loc[9, "area"] == np.count_nonzero(layer.data == 9)
    probability = viewer.layers["smear p(leukemic)"].data
    assert np.allclose(probability[layer.data == 9], after.loc[9, "p_leukemic"]) and probability[layer.data == 0].max() == 0
    widget.go_to(9)  # the new cell's Grad-CAM is painted inside its mask; the other cells' maps are left alone
    cam = viewer.layers["smear Grad-CAM"].data
    assert cam[layer.data == 9].max() > 0 and f"{HEAT_WORDS}: 0." in widget._info.value
    assert np.array_equal(cam[layer.data == 1], cam_before[layer.data == 1])


def test_save_load_round_trip_through_panel_and_npe2(reviewing, tmp_path, qtbot):
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    viewer, widget, layer = reviewing
    widget.go_to(3)
    widget.set_call("leukemic")
    path = widget.save(tmp_path / "smear")
    assert path == tmp_path / "smear.review" and (path / "review.json").is_file()
    before = (path / "cells.csv").read_bytes()
    widget.set_call("")

    def answer_no():
        box = QApplication.activeModalWidget()
        box.button(QMessageBox.StandardButton.No).click()

    QTimer.singleShot(100, answer_no)
    assert widget.save(path) is None and "was kept" in widget._status.value
    assert (path / "cells.csv").read_bytes() == before
    # File > Open through the plugin's reader
    loaded = viewer.open(path, plugin="napari-leukemia")[0]
    assert loaded.name.startswith("smear cells") and np.array_equal(loaded.data, layer.data)
    assert loaded.features.set_index("label").loc[3, "annotation"] == "leukemic"
    assert tuple(loaded.translate) == TRANSLATE and loaded.metadata["napari_leukemia"]["image_sha256"]
    # File > Save Layers through the plugin's writer
    viewer.layers.selection = {loaded}
    written = viewer.layers.save(str(tmp_path / "copy.review"), selected=True, plugin="napari-leukemia")
    copy = rv.load_review(written[0])
    assert np.array_equal(copy.labels, layer.data) and copy.cells.set_index("label").loc[3, "annotation"] == "leukemic"
    assert copy.info["image_sha256"] == rv.image_sha256(viewer.layers["smear"].data)
    # the panel loads too, and warns when the image is not open
    viewer.layers.remove("smear")
    assert widget.load(path) is widget._layer and "is not open" in widget._status.value
    assert widget.update() is None and "not open" in widget._status.value


def test_bad_review_is_refused_with_its_file_name(make_napari_viewer, tmp_path, result):
    from napari_leukemia._napari.review import ReviewWidget

    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    assert widget._layer is None and not widget._next.enabled and not widget._export.enabled and widget._load.enabled
    info = {"image": "smear", "classes": result.summary["classes"], "leukemic_classes": ["leukemic"]}
    path = rv.save_review(tmp_path / "s.review", rv.Review(result.labels, result.cells, info))
    with pytest.warns(UserWarning, match="'smear' of this review is not open"):
        viewer.open(path, plugin="napari-leukemia")
    (path / "review.json").write_text("{not json")
    with pytest.raises(Exception, match="review.json: not valid JSON"):
        viewer.open(path, plugin="napari-leukemia")
    assert len(viewer.layers) == 1


def test_export_adds_the_called_cells_to_a_training_set(reviewing, tmp_path, qtbot):
    from napari_leukemia.core.datasets import read_dataset

    viewer, widget, layer = reviewing
    widget.go_to(2)
    widget.set_call("normal")
    widget.go_to(3)
    widget.set_call("leukemic")
    widget._dataset.value = tmp_path / "set"
    widget._group.value = "patient 1"
    assert widget.export() is not None
    _wait(widget, qtbot)
    assert "2 cells added" in widget._status.value and "fine-tune in Train classifier" in widget._status.value
    samples = read_dataset(tmp_path / "set" / ts.DATASET_CSV)
    assert sorted(s.label for s in samples) == ["leukemic", "normal"] and {s.group for s in samples} == {"patient 1"}


def test_update_and_export_load_models_behind_the_llvm_guard(reviewing, tmp_path, qtbot, monkeypatch):
    """Add to training set without an analysis in this session once crashed napari: it loaded torch models without
    the guard against triton next to Mesa's LLVM that Analyze, Update and Train called."""
    from napari_leukemia._napari import worker_widget

    viewer, widget, layer = reviewing
    guarded = []
    real = worker_widget.avoid_llvm_clash
    monkeypatch.setattr(worker_widget, "avoid_llvm_clash", lambda: guarded.append(widget._worker) or real())
    widget.go_to(2)
    widget.set_call("normal")
    widget._dataset.value = tmp_path / "set"
    assert widget.export() is not None
    assert guarded == [None]  # called before the worker was made
    _wait(widget, qtbot)
    layer.brush_size = 40
    layer.paint((240, 330), 9)
    assert widget.update() is not None
    _wait(widget, qtbot)
    assert len(guarded) == 2 and "re-classified cells: 9;" in widget._status.value


def test_the_selected_cell_is_outlined_and_a_removed_layer_is_let_go(reviewing):
    """Deleting the reviewed layer once left the panel acting on it: Next raised ValueError and calls were written
    into the deleted layer's table."""
    viewer, widget, layer = reviewing
    widget.go_to(2)
    marker = widget._marker
    row = layer.features.set_index("label").loc[2]
    (y0, x0), (y1, x1) = marker.data[0].min(axis=0), marker.data[0].max(axis=0)  # a box around the cell
    assert y0 < row["bbox_y0"] and x0 < row["bbox_x0"] and y1 > row["bbox_y1"] and x1 > row["bbox_x1"]
    assert np.allclose(marker.translate, layer.translate) and viewer.layers.selection.active is layer
    widget.go_to(3)
    assert len(marker.data) == 1 and marker.data[0].min(axis=0)[0] < layer.features.set_index("label").loc[3, "bbox_y0"]
    viewer.layers.remove(layer)
    assert widget._layer is None and widget._marker is None and marker not in viewer.layers
    assert not widget._cell_list.choices and not len(widget._calls)
    assert not any(b.enabled for b in (widget._next, widget._previous, widget._update, widget._save, widget._export))
    widget.next()
    widget.set_call("normal")
    assert "annotation" not in layer.features or not layer.features["annotation"].fillna("").any()
    assert "No cells layer" in widget._info.value


def test_heat_map_of_the_selected_cell_on_demand(make_napari_viewer, bccd_image, result, qtbot):
    """An analysis without Grad-CAM (the default: faster): Review cells explains the selected cell when asked."""
    from napari_leukemia._napari.layers import our_layers, show_result
    from napari_leukemia._napari.review import ReviewWidget

    viewer = make_napari_viewer()
    viewer.add_image(bccd_image, name="smear", rgb=True)
    show_result(viewer, dataclasses.replace(result, gradcam=None), "smear", result.summary["classes"],
                result.summary["leukemic_classes"])
    cells = viewer.layers["smear cells"]
    widget = ReviewWidget(viewer)
    widget._device.value = "cpu"
    widget.go_to(3)
    assert "gradcam" not in our_layers(viewer, "smear") and f"{HEAT_WORDS}: none yet" in widget._info.value
    assert widget.explain() is not None
    _wait(widget, qtbot)
    cam = our_layers(viewer, "smear")["gradcam"]
    assert cam.visible and viewer.layers.index(cam) == viewer.layers.index(cells) - 1
    assert viewer.layers.selection.active is cells  # the shortcuts stay with the cells
    mask, heat = np.asarray(cells.data) == 3, np.asarray(cam.data)
    assert np.allclose(heat[mask], result.gradcam[mask], atol=1e-3) and heat[~mask].max() == 0  # the same as in Analyze
    assert f"{HEAT_WORDS}: {result.gradcam[mask].mean():.3f}" in widget._info.value


def test_panel_opens_through_the_manifest(reviewing):
    viewer, _, layer = reviewing
    _, widget = viewer.window.add_plugin_dock_widget("napari-leukemia", "Review cells")
    assert widget._layer is layer and len(widget._call_buttons) == len(widget.classes) + 2
    assert sorted(widget._cell_list.choices) == [1, 2, 3, 4]
    assert widget._filter.choices == ("all", *widget.classes, "exclude")


def test_the_panel_with_its_call_buttons_fits_a_laptop_dock(reviewing, qtbot):
    """At 1366 x 768 the Review dock is about 490 px wide: its call buttons in one row, and the heat-map button
    beside "show only this cell", once cut off "Next", "exclude" and "clear" with no way to scroll sideways."""
    _, widget, _ = reviewing
    widget.native.show()
    qtbot.wait(1)
    assert widget.native.minimumSizeHint().width() <= 440, widget.native.minimumSizeHint().width()
    for more in (False, True):  # with the settings most runs leave alone shown, too
        widget._more.value = more
        qtbot.wait(1)
        assert widget._body.native.minimumSizeHint().width() <= 440, more
    assert widget._info.value.count("p(leukemic)") == 1  # once, not a second line repeating it
