"""Screenshot of napari with the Analyze widget and its result layers (run under Xvfb).

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot.py docs/images/napari_result.png
    ... python scripts/screenshot.py /tmp/types.png deepapl cell_type   # a shipped classifier
                                                              # (docs/images/napari_cell_types.jpg, as JPEG)
"""

import sys
import time

import napari
from qtpy.QtWidgets import QApplication

from napari_leukemia._napari.widgets import AnalyzeWidget
from napari_leukemia.samples import load_sample


def main(path, sample="deepapl", classifier="leukemic"):
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 900)
    viewer.add_image(load_sample(sample), name=sample, rgb=True)
    widget = AnalyzeWidget(viewer)
    widget._shipped.value = classifier
    viewer.window.add_dock_widget(widget, name="Analyze smear", area="right")
    widget.run()
    t0 = time.time()
    while widget._worker is not None and time.time() - t0 < 600:
        QApplication.processEvents()
        time.sleep(0.05)
    cells = viewer.layers[f"{sample} cells"]
    viewer.layers.selection.active = cells
    cells.show_selected_label = False
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(path, canvas_only=False)
    print(widget._summary.value)
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
