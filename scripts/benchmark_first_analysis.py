"""The first analysis in a fresh napari session: the bundled sample, the Analyze dock, one click (issue 18).

Times, in one new process, napari's start, opening the sample, the dock, and the first analysis from the click to
the result layers (models loaded in the worker, as a user meets it), then a second click (models loaded)::

    QT_QPA_PLATFORM=offscreen python scripts/benchmark_first_analysis.py --out docs/figures/first_analysis.json

Run it several times in new processes and quote the median: the first run after installing also compiles
cellpose's numba kernels into their cache (see ``core.segment.numba_kernels_cached``).
"""

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402


def wait_for(widget, app, limit=600.0) -> None:
    t = time.perf_counter()
    while widget._worker is not None and time.perf_counter() - t < limit:
        app.processEvents()
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the figures here (JSON) as well")
    parser.add_argument("--sample", default="bccd", choices=["bccd", "deepapl"])
    args = parser.parse_args()
    marks = {}
    import napari
    from qtpy.QtWidgets import QApplication

    marks["import_napari_s"] = time.perf_counter() - T0
    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    marks["viewer_s"] = time.perf_counter() - T0
    viewer.open_sample("napari-leukemia", args.sample)
    from napari_leukemia._napari.widgets import AnalyzeWidget

    widget = AnalyzeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Analyze smear", area="right")
    app.processEvents()
    marks["dock_s"] = time.perf_counter() - T0
    t = time.perf_counter()
    widget.run()
    wait_for(widget, app)
    marks["first_analysis_s"] = time.perf_counter() - t
    marks["start_to_first_result_s"] = time.perf_counter() - T0
    t = time.perf_counter()
    widget.run()
    wait_for(widget, app)
    marks["second_analysis_s"] = time.perf_counter() - t
    marks["summary"] = widget._summary.value
    marks["layers"] = [layer.name for layer in viewer.layers]
    viewer.close()
    print(json.dumps(marks, indent=1))
    if args.out:
        args.out.write_text(json.dumps(marks, indent=1) + "\n")


if __name__ == "__main__":
    main()
