"""Screenshot of napari on a 1366x768 laptop screen: the three docks, and the Analyze result with its legend (Xvfb).

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1366x768x24" python scripts/screenshot.py docs/images/napari_result.png
    ... python scripts/screenshot.py /tmp/types.png deepapl cell_type   # a shipped classifier
                                                              # (docs/images/napari_cell_types.jpg, as JPEG)
"""

import sys
import time

import napari
from qtpy.QtWidgets import QApplication

from napari_leukemia._napari.review import ReviewWidget
from napari_leukemia._napari.train_widget import TrainWidget
from napari_leukemia._napari.widgets import AnalyzeWidget


def main(path, sample="deepapl", classifier="leukemic"):
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    viewer.open_sample("napari-leukemia", sample)

    widget = AnalyzeWidget(viewer)
    widget._shipped.value = classifier
    for dock, title in ((widget, "Analyze smear"), (ReviewWidget(viewer), "Review cells"),
                        (TrainWidget(viewer), "Train classifier")):
        viewer.window.add_dock_widget(dock, name=title, area="right")
    widget.run()
    t0 = time.time()
    while widget._worker is not None and time.time() - t0 < 600:
        QApplication.processEvents()
        time.sleep(0.05)
    widget._scroll.ensureWidgetVisible(widget._summary.native)  # the legend and summary, as a user scrolls to them
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(path, canvas_only=False)
    print(widget._summary.value)
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
