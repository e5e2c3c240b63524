import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer_with_sample(make_napari_viewer, bccd_image):
    viewer = make_napari_viewer()
    viewer.add_image(bccd_image, name="smear", rgb=True)
    return viewer


def _run(widget, qtbot):
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=180_000)  # set back to None when the worker finishes


def test_analyze_adds_result_layers_with_features_and_summary(viewer_with_sample, qtbot, bccd_boxes):
    from napari_leukemia._napari.widgets import AnalyzeWidget
    from napari_leukemia.core.boxes import label_boxes, match_boxes

    viewer = viewer_with_sample
    widget = AnalyzeWidget(viewer)
    assert not widget._gradcam.value  # on demand by default (Review cells), for every cell when ticked
    widget._device.value, widget._gradcam.value = "cpu", True
    worker, steps = widget.run(), []
    assert not widget._bar.native.isHidden()  # progress in the dock too, not only in napari's activity dock
    worker.yielded.connect(lambda _step: steps.append((widget._bar.value, widget._bar.max)))
    qtbot.waitUntil(lambda: widget._worker is None, timeout=180_000)
    assert steps[-1] == (4, 4) and widget._bar.native.isHidden()  # four steps with Grad-CAM, all done
    names = [layer.name for layer in viewer.layers]
    assert names == ["smear", "smear p(leukemic)", "smear Grad-CAM", "smear cells"], widget._status.value
    cells, cam = viewer.layers["smear cells"], viewer.layers["smear Grad-CAM"]
    # the first result is the cells coloured by call: the maps are hidden below them, the cells stay selected
    assert viewer.layers.selection.active is cells and list(viewer.layers.selection) == [cells]
    assert not cam.visible and not viewer.layers["smear p(leukemic)"].visible
    heat = np.asarray(cam.data)
    assert heat[np.asarray(cells.data) == 0].max() == 0 and heat.max() > 0  # heat only inside the cells
    assert cam.colormap.map(np.array([0.0]))[0][3] == 0  # and no heat is transparent: it never tints the smear
    assert match_boxes(label_boxes(np.asarray(cells.data)), bccd_boxes)["tp"] == len(bccd_boxes)
    assert list(cells.features["label"]) == list(range(1, int(cells.data.max()) + 1))
    colour = cells.colormap.map(np.array([cells.features["label"][0]]))[0]
    assert colour[3] > 0  # coloured by class, background transparent
    assert "Leukocytes: " in widget._summary.value and "Research use only" in widget._disclaimer.value
    assert "95% interval" in widget._summary.value
    # a legend beside the summary: each class in its colour-blind-safe colour (Okabe-Ito), with its count
    n, k = len(cells.features), int(cells.features["leukemic"].sum())
    legend = widget._legend.value
    assert '#d55e00">&#9632;</span> leukemic: ' + str(k) in legend and '#0072b2">&#9632;</span> normal: ' + str(n - k) in legend


def test_save_results_writes_the_bundle_and_never_replaces_it(viewer_with_sample, qtbot, tmp_path):
    from napari_leukemia._napari.widgets import AnalyzeWidget
    from napari_leukemia.core.results import OUTPUT_FILES, is_complete

    widget = AnalyzeWidget(viewer_with_sample)
    widget._device.value, widget._gradcam.value, widget._method.value = "cpu", False, "stain"
    assert widget.save() is None and not widget._save_button.enabled  # nothing analysed yet
    _run(widget, qtbot)
    assert widget.save() is None and "Choose a folder" in widget._status.value
    widget._save_folder.value = tmp_path
    target = widget.save()
    assert target == tmp_path / "smear" and is_complete(target)
    before = {f: (target / f).read_bytes() for f in OUTPUT_FILES}
    assert widget.save() is None and "exists" in widget._status.value
    assert {f: (target / f).read_bytes() for f in OUTPUT_FILES} == before


def test_rerun_replaces_only_our_layers_and_keeps_user_edits(viewer_with_sample, qtbot):
    from napari_leukemia._napari.layers import our_layers
    from napari_leukemia._napari.widgets import AnalyzeWidget

    viewer = viewer_with_sample
    user = viewer.add_labels(np.zeros((480, 640), np.int32), name="smear cells")  # the user's own layer, same name
    widget = AnalyzeWidget(viewer)
    widget._device.value = "cpu"
    widget._gradcam.value = False
    widget._method.value = "stain"
    _run(widget, qtbot)
    ours = [layer for layer in viewer.layers if "napari_leukemia" in layer.metadata]
    assert len(ours) == 2 and user in viewer.layers and np.asarray(user.data).max() == 0
    cells = next(layer for layer in ours if layer.metadata["napari_leukemia"]["role"] == "cells")
    # the user edits our cells layer: paint a new cell, then re-classify the edited cells
    cells.data[0:50, 0:50] = cells.data.max() + 1
    cells.refresh()
    widget._use_cells.value = True
    _run(widget, qtbot)
    refreshed = next(layer for layer in viewer.layers if layer.metadata.get("napari_leukemia", {}).get("role") == "cells")
    assert len(refreshed.features) == len(np.unique(refreshed.data)) - 1
    # a full re-analysis keeps the edited layer as the user's and adds a fresh one
    widget._use_cells.value = False
    _run(widget, qtbot)
    assert any(layer.name.endswith("(edited)") for layer in viewer.layers)
    assert user in viewer.layers
    widget._gradcam.value = True  # a map added to an earlier result goes below its cells, which stay selected
    _run(widget, qtbot)
    ours = our_layers(viewer, "smear")
    assert viewer.layers.index(ours["gradcam"]) < viewer.layers.index(ours["cells"]) == len(viewer.layers) - 1
    assert viewer.layers.selection.active is ours["cells"]


def test_cancel_changes_nothing(viewer_with_sample, qtbot):
    from napari_leukemia._napari.widgets import AnalyzeWidget

    viewer = viewer_with_sample
    widget = AnalyzeWidget(viewer)
    widget._device.value = "cpu"
    assert widget.run() is not None
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=180_000)
    assert [layer.name for layer in viewer.layers] == ["smear"]
    assert "cancelled" in widget._status.value


def test_bad_image_layer_reports_an_error(make_napari_viewer, qtbot):
    from napari_leukemia._napari.widgets import AnalyzeWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.full((64, 64), 7, np.uint8), name="blank")
    widget = AnalyzeWidget(viewer)
    _run(widget, qtbot)
    assert "blank" in widget._status.value and "uniform" in widget._status.value
    assert len(viewer.layers) == 1


def test_widget_and_samples_open_through_the_plugin_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-leukemia", "deepapl")
    assert viewer.layers[0].rgb and viewer.layers[0].data.shape[-1] == 3
    viewer.open_sample("napari-leukemia", "mosaic")
    assert viewer.layers[-1].name == "6-cell mosaic" and viewer.layers[-1].data.shape == (960, 1920, 3)
    viewer.open_sample("napari-leukemia", "bccd")
    assert all(len(f"{layer.name} p(leukemic)") <= 28 for layer in viewer.layers)  # not cut off in the layer list
    _, widget = viewer.window.add_plugin_dock_widget("napari-leukemia", "Analyze smear")
    assert widget._image.value is viewer.layers[0]


def test_foreign_checkpoint_and_empty_smear_are_reported(make_napari_viewer, qtbot, tmp_path, bccd_image):
    from napari_leukemia._napari.widgets import AnalyzeWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.ascontiguousarray(bccd_image[300:, :300]), name="red cells only", rgb=True)
    widget = AnalyzeWidget(viewer)
    widget._device.value = "cpu"
    bad = tmp_path / "not_ours.safetensors"
    bad.write_bytes(b"\x00" * 64)
    widget._classifier.value = bad
    _run(widget, qtbot)
    assert "not_ours.safetensors" in widget._status.value and len(viewer.layers) == 1
    widget._classifier.value = ""
    widget._diameter.value = 190
    _run(widget, qtbot)
    assert "no leukocytes found in red cells only" in widget._status.value
    assert "Leukocytes: 0" in widget._summary.value


def test_a_cell_type_classifier_colours_cells_by_type_and_counts_them(make_napari_viewer, qtbot, mosaic_smear,
                                                                     tmp_path):
    from napari_leukemia._napari.widgets import AnalyzeWidget
    from napari_leukemia.core.config import CropConfig
    from napari_leukemia.core.model import ClassifierInfo, new_classifier, save_classifier
    from napari_leukemia.core.render import class_colors

    classes = ("blast", "lymphocyte", "monocyte", "neutrophil")  # an untrained DenseNet201 over cell types
    path = tmp_path / "types.safetensors"
    save_classifier(new_classifier(ClassifierInfo(classes=classes, leukemic=("blast",), crop=CropConfig(size=32))), path)
    viewer = make_napari_viewer()
    viewer.add_image(mosaic_smear[0], name="mosaic", rgb=True)
    widget = AnalyzeWidget(viewer)
    widget._device.value = "cpu"
    widget._gradcam.value = False
    widget._classifier.value = path
    _run(widget, qtbot)
    cells = viewer.layers["mosaic cells"]
    summary = cells.metadata["summary"]
    assert tuple(summary["classes"]) == classes
    colors = class_colors(classes, summary["leukemic_classes"])
    assert len({colors[c] for c in classes}) == len(classes)
    for label, call in zip(cells.features["label"], cells.features["predicted_class"]):
        assert np.allclose(cells.colormap.map(np.array([label]))[0], colors[call], atol=1e-3), call
    counts = summary["per_class"]
    assert sum(counts.values()) == len(cells.features) == 6
    for c in classes:
        assert f"{c}: {counts[c]}" in widget._legend.value  # the differential count, in the layer's colours


def test_the_shipped_cell_type_classifier_is_one_choice_away(viewer_with_sample, qtbot):
    from napari_leukemia._napari.widgets import AnalyzeWidget
    from napari_leukemia.core.model import load_classifier

    widget = AnalyzeWidget(viewer_with_sample)
    widget._device.value, widget._gradcam.value = "cpu", False
    widget._shipped.value = "cell_type"
    assert widget.classifier == "cell_type"
    _run(widget, qtbot)
    summary = viewer_with_sample.layers["smear cells"].metadata["summary"]
    assert summary["classes"] == list(load_classifier("cell_type", "cpu").info.classes), widget._status.value
    assert "densenet201_celltype" in summary["classifier"]


def test_the_three_docks_fit_a_laptop_screen_and_long_status_wraps(make_napari_viewer, qtbot):
    """A long training status once widened its dock to 1,097 px, and Analyze, Review and Train docked together
    needed a window 1,997 px tall: each dock's widgets now scroll and its labels wrap."""
    from qtpy.QtCore import QPoint

    from napari_leukemia._napari.review import ReviewWidget
    from napari_leukemia._napari.train_widget import TrainWidget
    from napari_leukemia._napari.widgets import AnalyzeWidget

    viewer = make_napari_viewer()
    for widget in (AnalyzeWidget(viewer), ReviewWidget(viewer), TrainWidget(viewer)):
        widget.native.show()  # a hidden widget does not update its size hint
        qtbot.addWidget(widget.native)
        for status in ("status " * 72, "/a/folder/without/spaces" * 21):  # 500 characters, with spaces or without
            widget._status.value = status
            qtbot.wait(1)
            assert widget.native.sizeHint().width() < 500, (type(widget).__name__, status[:10])
        label = widget._status.native
        assert label.wordWrap() and label.height() > 40  # on several lines, all of them shown, across the dock
        qtbot.waitUntil(lambda lab=label: lab.height() >= lab.heightForWidth(lab.width()), timeout=5_000)  # laid out
        assert label.width() > 0.9 * widget._body.native.width()
        assert widget.native.minimumSizeHint().height() < 200, type(widget).__name__  # three fit 768 px
        assert not widget._device.visible  # settings most runs leave alone wait under "more settings"
        if isinstance(widget, AnalyzeWidget):  # and Analyze's results come a few lines down
            assert widget._run_button.native.mapTo(widget._body.native, QPoint(0, 0)).y() < 200
        widget._more.value = True
        assert widget._device.visible


def test_a_grayscale_image_is_refused_with_a_word_on_stain_colour(make_napari_viewer, qtbot, bccd_image):
    from napari_leukemia._napari.widgets import AnalyzeWidget

    viewer = make_napari_viewer()
    gray = bccd_image.mean(axis=-1).astype(np.uint8)
    viewer.add_image(gray, name="gray smear")
    viewer.add_image(np.repeat(gray[..., None], 3, axis=-1), name="gray RGB smear", rgb=True)
    widget = AnalyzeWidget(viewer)
    widget._device.value = "cpu"
    for layer in list(viewer.layers):
        widget._image.value = layer
        widget.run()
        qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
        assert "grayscale" in widget._status.value and "colour" in widget._status.value, widget._status.value
        assert len(viewer.layers) == 2 and widget._legend.value == ""  # no empty result layers


def test_single_cell_mode_reports_the_centre_cell_only(make_napari_viewer, qtbot, deepapl_image):
    from napari_leukemia._napari.widgets import AnalyzeWidget

    viewer = make_napari_viewer()
    viewer.add_image(deepapl_image, name="cell", rgb=True)
    widget = AnalyzeWidget(viewer)
    widget._device.value, widget._single.value = "cpu", True
    assert widget._config().single_cell
    _run(widget, qtbot)
    cells = viewer.layers["cell cells"]
    assert len(cells.features) == 1 and cells.features["found_by"].iloc[0] in ("segmentation", "centre crop")
