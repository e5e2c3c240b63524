"""The whole review loop in one viewer, through the docked widgets: analyze a real smear, correct calls and a mask,
save, reload, export, fine-tune the shipped DenseNet201 briefly, and analyze again with the new model."""

import numpy as np
import pytest

from napari_leukemia.core import training_set as ts
from napari_leukemia.core.fine_tune import FINE_TUNE_LR, FINE_TUNE_REPORT
from napari_leukemia.core.fit import FINAL_NAME

pytestmark = pytest.mark.gui


def _wait(widget, qtbot, timeout=600_000):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def test_analyze_correct_save_reload_export_fine_tune_and_analyze_again(make_napari_viewer, qtbot, tmp_path,
                                                                        mosaic_smear):
    image, truth = mosaic_smear
    viewer = make_napari_viewer()
    viewer.add_image(image, name="smear", rgb=True)
    _, analyze = viewer.window.add_plugin_dock_widget("napari-leukemia", "Analyze smear")
    _, review = viewer.window.add_plugin_dock_widget("napari-leukemia", "Review cells")
    _, train = viewer.window.add_plugin_dock_widget("napari-leukemia", "Train classifier")
    for widget in (analyze, review, train):
        widget._device.value = "cpu"
    review._advance.value = False

    # 1. analyze
    assert analyze.run() is not None
    _wait(analyze, qtbot)
    layer = viewer.layers["smear cells"]
    cells = layer.features.set_index("label")
    assert len(cells) == 6, analyze._status.value
    shipped = layer.metadata["summary"]["classifier"]

    # 2. correct calls: three by shortcut, three by button (every cell called with its tile's truth)
    assert review._layer is layer
    keys = {c: f"Alt-{i + 1}" for i, c in enumerate(review.classes)}
    calls = {}
    for k, (label, row) in enumerate(cells.iterrows()):
        calls[label] = truth(row["centroid_y"], row["centroid_x"])
        review.go_to(label)
        if k < 3:
            viewer.window._qt_viewer._key_map_handler.press_key(keys[calls[label]])
        else:
            next(b for b in review._call_buttons if b.text.startswith(calls[label])).native.click()
    assert sorted(calls.values()) == ["leukemic"] * 3 + ["normal"] * 3
    assert (layer.features.set_index("label")["annotation"].to_dict() == calls)

    # 3. correct one mask: erase the top of the first cell with napari's brush, then Update
    first = cells.index[0]
    y, x = np.argwhere(layer.data == first)[0]  # its topmost pixel (the first in row order)
    layer.brush_size = 30
    layer.selected_label = 0
    layer.paint((y + 5, x), 0)
    area = int(np.count_nonzero(layer.data == first))
    assert area < cells.loc[first, "area"]
    assert review.update() is not None
    _wait(review, qtbot)
    updated = layer.features.set_index("label")
    assert updated.loc[first, "area"] == area and updated["annotation"].to_dict() == calls

    # 4. save, close the layer, reload: calls and mask restored
    saved = review.save(tmp_path / "smear")
    labels_saved = np.array(layer.data, copy=True)
    viewer.layers.remove(layer)
    loaded = review.load(saved)
    assert np.array_equal(loaded.data, labels_saved)
    assert loaded.features.set_index("label")["annotation"].to_dict() == calls

    # 5. export the called cells: the Train widget is handed the corrections and the model they were made on
    review._dataset.value = tmp_path / "corrections"
    assert review.export() is not None
    _wait(review, qtbot)
    assert "6 cells added" in review._status.value and "set in Train classifier" in review._status.value
    csv = tmp_path / "corrections" / ts.DATASET_CSV
    assert train._kind.value.startswith("cells corrected") and train.dataset_source() == str(csv)
    assert train._lr.value == FINE_TUNE_LR and not train._size.visible  # fine-tuning settings

    # 6. fine-tune the shipped model a few steps; before / after on held-out corrections
    train._out.value = tmp_path / "tuned"
    train._epochs.value, train._batch.value = 1, 2
    assert train.start() is not None
    _wait(train, qtbot)
    tuned = tmp_path / "tuned" / FINAL_NAME
    assert tuned.is_file() and (tmp_path / "tuned" / FINE_TUNE_REPORT).is_file(), train._status.value
    assert "held-out corrections (2 cells" in train._status.value  # one of three per class, by cell (one slide)
    assert analyze.classifier == str(tuned)

    # 7. analyze again with the new model, on the corrected cells: calls carried over, the old layer kept
    analyze._use_cells.value = True
    assert analyze.run() is not None
    _wait(analyze, qtbot)
    again = viewer.layers["smear cells"]
    assert again is not loaded and loaded in viewer.layers  # the reviewed layer is the user's: kept
    assert again.metadata["summary"]["classifier"].startswith(FINAL_NAME) and shipped.startswith("densenet201")
    assert np.array_equal(again.data, labels_saved)
    assert again.features.set_index("label")["annotation"].to_dict() == calls
