"""Screenshots of each step of the review loop, for docs/review_guide.md (run under Xvfb).

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1366x768x24" python scripts/screenshots_review.py docs/images

The smear is `napari_leukemia.samples.mosaic_sample` (a 2 x 3 mosaic of the two bundled real fields: six
leukocytes, three blasts), as in tests/test_loop_widget.py. The fine-tuning step is a real, short run (one epoch)
of the shipped DenseNet201 on the six corrected cells, in a temporary folder.
"""

import sys
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from PIL import Image
from qtpy.QtWidgets import QApplication

from napari_leukemia.samples import mosaic_sample


def settle(widget=None, timeout=900):
    t0 = time.time()
    while (widget is not None and widget._worker is not None) and time.time() - t0 < timeout:
        QApplication.processEvents()
        time.sleep(0.05)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)


def to_bottom(widget):
    """Scroll a dock's panel to its end (on a laptop screen the buttons below the cell list are out of view)."""
    bar = widget._scroll.verticalScrollBar()
    bar.setValue(bar.maximum())
    settle()


def shot(viewer, folder: Path, name: str):
    path = folder / f"review_{name}.jpg"
    Image.fromarray(viewer.screenshot(canvas_only=False)[..., :3]).save(path, quality=85)
    print("wrote", path)


def main(folder):
    folder = Path(folder)
    work = Path(tempfile.mkdtemp())
    image, truth = mosaic_sample()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    viewer.add_image(image, name="smear", rgb=True)
    _, analyze = viewer.window.add_plugin_dock_widget("napari-leukemia", "Analyze smear")
    _, review = viewer.window.add_plugin_dock_widget("napari-leukemia", "Review cells")
    _, train = viewer.window.add_plugin_dock_widget("napari-leukemia", "Train classifier")
    for widget in (analyze, review, train):
        widget._device.value = "cpu"
    review._advance.value = False
    docks = viewer.window._dock_widgets
    for name in ("Review cells (napari-leukemia)", "Train classifier (napari-leukemia)"):
        viewer.window._qt_window.tabifyDockWidget(docks["Analyze smear (napari-leukemia)"], docks[name])
    for dock in docks.values():
        dock.setMaximumWidth(620)

    # 1. analyze
    viewer.window._dock_widgets["Analyze smear (napari-leukemia)"].raise_()
    analyze.run()
    settle(analyze)
    layer = viewer.layers["smear cells"]
    viewer.layers.selection.active = layer
    viewer.reset_view()
    settle()
    shot(viewer, folder, "1_analyze")

    # 2. review: the most uncertain cell first, called with Alt+1 / Alt+2 or the buttons
    viewer.window._dock_widgets["Review cells (napari-leukemia)"].raise_()
    cells = layer.features.set_index("label")
    for label, row in cells.iterrows():
        review.go_to(label)
        review.set_call(truth(row["centroid_y"], row["centroid_x"]))
    review.go_to(list(review._cell_list.choices)[0])
    settle()
    shot(viewer, folder, "2_calls")

    # 3. a mask corrected with napari's brush (label 0 erases), then Update
    first = int(cells.index[0])
    review.go_to(first)
    y, x = np.argwhere(layer.data == first).min(0)
    layer.mode = "paint"
    layer.brush_size = 30
    layer.selected_label = 0
    layer.paint((y + 5, x + 40), 0)
    layer.selected_label = first
    review.update()
    settle(review)
    for name in ("smear Grad-CAM", "smear p(leukemic)"):  # Grad-CAM is off by default: no such layer then
        if name in viewer.layers:
            viewer.layers[name].visible = False
    to_bottom(review)
    shot(viewer, folder, "3_mask_update")

    # 4. save the review, then export the called cells to a training set
    review.save(work / "smear")
    review._dataset.value = work / "corrections"
    review.export()
    settle(review)
    to_bottom(review)
    shot(viewer, folder, "4_save_export")

    # 5. fine-tune: the Train widget was handed the corrections and the model they were made on
    viewer.window._dock_widgets["Train classifier (napari-leukemia)"].raise_()
    train._out.value = work / "tuned"
    train._epochs.value, train._batch.value = 1, 2
    train.start()
    settle(train)
    viewer.reset_view()
    settle()
    shot(viewer, folder, "5_fine_tune")
    print(train._status.value)

    # 6. analyze again with the new model, re-classifying the corrected cells
    viewer.window._dock_widgets["Analyze smear (napari-leukemia)"].raise_()
    analyze._use_cells.value = True
    analyze.run()
    settle(analyze)
    viewer.reset_view()
    settle()
    shot(viewer, folder, "6_analyze_again")
    print(analyze._summary.value)
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
