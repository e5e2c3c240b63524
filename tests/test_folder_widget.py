"""The Analyze folder dock: a folder of real fields on a local dask.distributed cluster, with progress per image as
the cluster finishes them, a Cancel that acts within seconds, and a resume that completes the run."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_folder_on_a_local_cluster_with_progress_cancel_and_resume(make_napari_viewer, qtbot, field_folder, tmp_path,
                                                                     classifier_path):
    from napari_leukemia._napari.folder_widget import FolderWidget

    widget = FolderWidget(make_napari_viewer())
    widget._images.value, widget._out.value = str(field_folder), str(tmp_path / "out")
    widget._classifier.value = classifier_path
    widget._where.value = "local cluster"
    widget._workers.value = 1
    assert not widget._workers.native.isHidden() and widget._scheduler.native.isHidden()
    seen = []
    worker = widget.run()
    worker.yielded.connect(lambda event: seen.append((widget._bar.value, widget._bar.max)))
    qtbot.waitUntil(lambda: len(seen) >= 2, timeout=180_000)  # two images back from the worker
    asked = time.perf_counter()
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=30_000)
    stopped_in = time.perf_counter() - asked
    print(f"cancelled in {stopped_in:.1f} s")
    n_images = len(list(field_folder.iterdir()))
    assert seen[:2] == [(1, n_images), (2, n_images)]  # progress per image, as the cluster finishes them
    assert "cancelled" in widget._status.value and stopped_in < 3, (stopped_in, widget._status.value)
    done = summary(tmp_path / "out")
    assert 2 <= len(done) < n_images
    # continue: the images done are kept, the rest analysed; the broken file costs only its row
    widget._resume.value = True
    client = widget._kept["client"][1]
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=300_000)
    assert widget._kept["client"][1] is client  # kept for the next run: its workers keep their models
    widget.close_cluster()
    rows = summary(tmp_path / "out")
    assert [Path(r["image"]).name for r in rows] == sorted(p.name for p in field_folder.iterdir())
    assert [r["status"] for r in rows] == ["failed" if Path(r["image"]).name == "broken.jpg" else "ok" for r in rows]
    by_image = {r["image"]: r for r in rows}
    assert all(by_image[d["image"]] == d for d in done)  # kept as they were
    assert "done: " + str(n_images) + " images (1 failed)" in widget._status.value
    assert "95% interval" in widget._results.value and "broken.jpg" in widget._results.value


def test_a_folder_without_images_or_a_cluster_without_an_address_is_refused(make_napari_viewer, tmp_path):
    from napari_leukemia._napari.folder_widget import FolderWidget

    widget = FolderWidget(make_napari_viewer())
    assert widget.run() is None and "Choose an images folder" in widget._status.value
    widget._images.value, widget._out.value = str(tmp_path), str(tmp_path / "out")
    assert widget.run() is None and "holds no images" in widget._status.value
    (tmp_path / "a.png").write_bytes(b"")
    widget._where.value = "running cluster"
    assert not widget._scheduler.native.isHidden() and widget._workers.native.isHidden()
    assert widget.run() is None and "scheduler's address" in widget._status.value
    assert not (tmp_path / "out").exists()
