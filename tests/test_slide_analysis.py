"""Blockwise analysis of a whole slide (core/slide_analysis.py) on a pyramidal mosaic of real BCCD fields, with the
shipped cellpose segmenter and classifier: cells found once across seams, the OME-Zarr result, background tiles,
resume after a stop, and the command line."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_run import run

from napari_leukemia.core import drain
from napari_leukemia.core.config import AnalysisConfig, SegmentConfig
from napari_leukemia.core.slide_analysis import PROGRESS_JSON, iter_analyze_slide
from napari_leukemia.core.tiling import tile_cores, tile_window

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
#: BCCD leukocytes are about 150 px across: given, so that the slide and the one-image run share it.
DIAMETER = 150.0
CONFIG = AnalysisConfig(device="cpu", gradcam=False, segment=SegmentConfig(tile_size=512, diameter=DIAMETER))


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory, shared_data):
    """A 2000 x 2000 pyramidal OME-TIFF of 6 real BCCD fields (6 leukocytes by their boxes), half the grid blank
    (seed 3: 4 of its 16 tiles are background), with its layout."""
    spec = importlib.util.spec_from_file_location("make_slide", ROOT / "scripts" / "make_slide.py")
    make_slide = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_slide)
    path = tmp_path_factory.mktemp("slide") / "mosaic.ome.tif"
    layout = make_slide.make_slide(path, 2000, data=shared_data, fields=6, blank=0.5, compression="zlib",
                                   pixel_size=0.1, seed=3)
    return path, layout


@pytest.fixture(scope="module")
def models(segmenter_path, classifier):
    from napari_leukemia.core.segment import load_segmenter

    return {"segmenter": load_segmenter(segmenter_path, "cpu"), "classifier": classifier}


def analyse(path, out, models, **kwargs):
    """The slide's events and summary."""
    events = []
    summary = drain(iter_analyze_slide(path, out, config=CONFIG, **models, **kwargs), events.append)
    return events, summary


def read_labels(out: Path, level: int = 0) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(str(out / "cells.ome.zarr"), mode="r")[f"labels/cells/{level}"][:])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, mosaic, models):
    out = tmp_path_factory.mktemp("full") / "mosaic"
    events, summary = analyse(mosaic[0], out, models)
    return out, events, summary


def test_every_cell_found_once_across_seams_as_in_one_image(full_run, mosaic, models):
    from napari_leukemia.core.pipeline import analyze_smear
    from napari_leukemia.core.slide import open_slide

    out, events, summary = full_run
    labels = read_labels(out)
    cells = pd.read_csv(out / "cells.csv")
    assert summary["leukocytes"] == len(cells) >= 4 and not summary["stopped"]
    assert sorted(cells["label"]) == list(range(1, len(cells) + 1)) == sorted(np.unique(labels)[1:])
    centres = cells[["centroid_y", "centroid_x"]].to_numpy()
    gaps = np.hypot(*(centres[:, None] - centres[None]).transpose(2, 0, 1)) + np.eye(len(cells)) * 1e9
    assert gaps.min() > DIAMETER / 2  # no cell twice on both sides of a seam
    with open_slide(mosaic[0]) as slide:
        image = slide.levels[0].compute()
    whole = analyze_smear(image, config=CONFIG, **models)  # the same pixels as one image in memory, same tiles
    # the one-image run segments the background tiles too: it may find a cell there that holds no nuclear stain
    # (on this mosaic: red cells on the strip of a field at the right edge)
    skipped = [tile_cores((2000, 2000), 512)[e.payload["tile"]] for e in events if e.stage == "tile" and e.payload["skipped"]]
    on_glass = {r.label for r in whole.cells.itertuples()
                if any(r0 <= (r.bbox_y0 + r.bbox_y1 - 1) / 2 < r1 and c0 <= (r.bbox_x0 + r.bbox_x1 - 1) / 2 < c1
                       for r0, r1, c0, c1 in skipped)}
    assert whole.summary["leukocytes"] - len(on_glass) == len(cells) and len(on_glass) <= 1
    for k in set(range(1, whole.labels.max() + 1)) - on_glass:  # each cell of the one-image run is one of the slide's
        ids, counts = np.unique(labels[whole.labels == k], return_counts=True)
        best = ids[np.argmax(counts)]
        iou = np.sum((labels == best) & (whole.labels == k)) / np.sum((labels == best) | (whole.labels == k))
        assert best > 0 and iou > 0.9
        row = cells[cells["label"] == best].iloc[0]
        assert row["p_leukemic"] == pytest.approx(whole.cells.set_index("label").loc[k, "p_leukemic"], abs=0.02)
    assert set(cells.columns) >= set(whole.cells.columns) | {"tile", "centroid_y_um", "centroid_x_um"}
    assert cells["centroid_y_um"].to_numpy() == pytest.approx(0.1 * cells["centroid_y"].to_numpy())
    saved = json.loads((out / "summary.json").read_text())
    assert saved["leukocytes"] == len(cells) and saved["blast_pct_high"] >= saved["blast_pct"] >= 0
    assert saved["tiles"] == 16 and saved["tiles_done"] == 16 and "Grad-CAM" in saved["notes"][0]


def test_labels_are_an_ome_zarr_labels_image(full_run):
    out, _, _ = full_run
    root = out / "cells.ome.zarr"
    image = json.loads((root / ".zattrs").read_text())["multiscales"][0]
    assert image["version"] == "0.4" and image["name"] == "p_leukemic"
    assert [a["name"] for a in image["axes"]] == ["y", "x"] and image["axes"][0]["unit"] == "micrometer"
    assert image["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx([1.6, 1.6])
    assert json.loads((root / "labels" / ".zattrs").read_text()) == {"labels": ["cells"]}
    attrs = json.loads((root / "labels" / "cells" / ".zattrs").read_text())
    scales = [d["coordinateTransformations"][0]["scale"][0] for d in attrs["multiscales"][0]["datasets"]]
    assert scales == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6]) and attrs["image-label"]["source"] == {"image": "../../"}
    cells = pd.read_csv(out / "cells.csv")
    props = {p["label-value"]: p for p in attrs["image-label"]["properties"]}
    assert sorted(props) == sorted(cells["label"])
    assert all(props[r.label]["class"] == r.predicted_class for r in cells.itertuples())
    labels = read_labels(out)
    assert labels.shape == (2000, 2000) and labels.dtype == np.int32
    assert (read_labels(out, 2) == labels[::4, ::4]).all()
    import zarr

    pmap = np.asarray(zarr.open_group(str(root), mode="r")["0"][:])
    painted = np.zeros(labels.shape, np.float32)
    for r in cells.itertuples():
        painted[labels == r.label] = r.p_leukemic
    assert pmap.shape == (125, 125)
    assert pmap == pytest.approx(painted.reshape(125, 16, 125, 16).mean((1, 3)), abs=1e-5)


def test_background_tiles_are_skipped(full_run, mosaic):
    out, events, summary = full_run
    layout = mosaic[1]
    grid, (ch, cw) = np.array(layout["grid"]), layout["cell"]
    tiles = [e for e in events if e.stage == "tile"]
    assert [e.done for e in tiles] == list(range(1, 17)) and all(e.total == 16 for e in tiles)
    skipped = {e.payload["tile"] for e in tiles if e.payload["skipped"]}
    margin = int(np.ceil(CONFIG.segment.tile_margin * DIAMETER))
    blank = set()
    for i, core in enumerate(tile_cores((2000, 2000), 512)):  # windows lying on empty glass only
        R0, R1, C0, C1 = tile_window(core, margin, (2000, 2000))
        if (grid[R0 // ch : (R1 - 1) // ch + 1, C0 // cw : (C1 - 1) // cw + 1] < 0).all():
            blank.add(i)
    assert skipped >= blank and len(skipped) >= 1
    assert summary["tiles_skipped"] == len(skipped) and all(e.payload["cells"] == 0 for e in tiles if e.payload["skipped"])


def test_resume_after_a_stop_and_a_kill_equals_an_uninterrupted_run(tmp_path, full_run, mosaic, models):
    out = tmp_path / "mosaic"
    seen = []
    stopped = drain(iter_analyze_slide(mosaic[0], out, config=CONFIG, should_stop=lambda: len(seen) >= 4, **models),
                    lambda e: seen.append(e) if e.stage == "tile" else None)
    assert stopped["stopped"] and len(seen) == 4
    progress = json.loads((out / PROGRESS_JSON).read_text())
    assert progress["done"] <= 4 < 16 and not (out / "summary.json").exists()
    with pytest.raises(FileExistsError, match="cells.ome.zarr exists; pass --resume"):
        analyse(mosaic[0], out, models)
    # what a kill in the middle of the next tile leaves: half a row, and cells painted with ids not recorded
    with open(out / "cells.csv", "a") as fh:
        fh.write("999,4,12.5,")
    import zarr

    labels = zarr.open_group(str(out / "cells.ome.zarr"), mode="r+")["labels/cells/0"]
    r0, _, c0, _ = tile_cores((2000, 2000), 512)[progress["done"]]
    corner = labels[r0 : r0 + 40, c0 : c0 + 40]
    labels[r0 : r0 + 40, c0 : c0 + 40] = np.where(corner == 0, progress["next_id"] + 7, corner)
    (out / PROGRESS_JSON).write_text(json.dumps({**progress, "segmented": max(progress["segmented"], progress["done"] + 1)}))
    _, resumed = analyse(mosaic[0], out, models, resume=True)
    full = full_run[0]
    pd.testing.assert_frame_equal(pd.read_csv(out / "cells.csv"), pd.read_csv(full / "cells.csv"))
    assert (read_labels(out) == read_labels(full)).all() and (read_labels(out, 4) == read_labels(full, 4)).all()
    assert resumed["leukocytes"] == full_run[2]["leukocytes"] and resumed["tiles_skipped"] == full_run[2]["tiles_skipped"]
    _, again = analyse(mosaic[0], out, models, resume=True)  # finished: returned as it is
    assert again["leukocytes"] == resumed["leukocytes"]


def test_a_worker_stopped_between_a_tiles_cells_and_its_crops_resumes_that_tile(tmp_path, full_run, mosaic, models):
    """napari's Cancel closes the run at its next event; each tile yields once its cells are found, before they
    are cut out and classified, so no step runs longer than one tile's segmentation, and the tile is redone."""
    stages = [e.stage for e in full_run[1]]
    assert stages.count("segment") == len(tile_cores((2000, 2000), 512)) - full_run[2]["tiles_skipped"]
    out = tmp_path / "mosaic"
    run = iter_analyze_slide(mosaic[0], out, config=CONFIG, **models)
    while True:
        event = next(run)
        if event.stage == "segment" and event.payload["cells"]:
            break
    run.close()
    progress = json.loads((out / PROGRESS_JSON).read_text())
    assert progress["done"] <= event.payload["tile"] < progress["segmented"]
    _, resumed = analyse(mosaic[0], out, models, resume=True)
    pd.testing.assert_frame_equal(pd.read_csv(out / "cells.csv"), pd.read_csv(full_run[0] / "cells.csv"))
    assert (read_labels(out) == read_labels(full_run[0])).all()


def test_command_line_analyses_a_slide_blockwise(tmp_path, mosaic, full_run):
    out = tmp_path / "results"
    code, stdout, stderr = run("analyze", mosaic[0], "--out", out, "--device", "cpu", "--quiet")
    assert code == 0, stderr
    folder = out / "mosaic.ome"
    assert {p.name for p in folder.iterdir()} >= {"cells.ome.zarr", "cells.csv", "summary.json", "progress.json"}
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert row["status"] == "ok" and row["stem"] == "mosaic.ome"
    summary = json.loads((folder / "summary.json").read_text())
    assert row["leukocytes"] == summary["leukocytes"] == len(pd.read_csv(folder / "cells.csv"))
    assert abs(summary["leukocytes"] - full_run[2]["leukocytes"]) <= 1  # one 2048 px tile, diameter estimated
    assert "mosaic.ome" in stdout
    code, _, stderr = run("analyze", mosaic[0], "--out", out, "--device", "cpu", "--quiet", "--resume")
    assert code == 0, stderr


@pytest.mark.gui
def test_napari_analyses_a_slide_layer_tile_by_tile_into_multiscale_layers_that_review_works_on(
        make_napari_viewer, qtbot, tmp_path, mosaic):
    from napari_leukemia._napari.reader import read_slide
    from napari_leukemia._napari.review import ReviewWidget
    from napari_leukemia._napari.widgets import AnalyzeWidget
    from napari_leukemia.core.slide_analysis import SLIDE_REVIEW_CSV

    viewer = make_napari_viewer()
    [(levels, kwargs, _)] = read_slide(mosaic[0])
    viewer.add_image(levels, **kwargs)
    widget = AnalyzeWidget(viewer)
    widget._device.value, widget._diameter.value = "cpu", DIAMETER
    assert widget.run() is None and "save to folder" in widget._status.value  # its results are written as it goes
    widget._save_folder.value = str(tmp_path)
    worker = widget.run()
    # cancelled once a tile's cells are found (a cancel at "load" may act before anything is written)
    worker.yielded.connect(lambda event: widget.cancel() if event.stage in ("segment", "tile") else None)
    qtbot.waitUntil(lambda: widget._worker is None, timeout=300_000)
    folder = tmp_path / "mosaic"
    assert "Analyze again continues" in widget._status.value and (folder / PROGRESS_JSON).is_file()
    assert [layer.name for layer in viewer.layers] == ["mosaic"]
    widget.run()  # resumes
    qtbot.waitUntil(lambda: widget._worker is None, timeout=300_000)
    summary = json.loads((folder / "summary.json").read_text())
    cells, pmap = viewer.layers["mosaic cells"], viewer.layers["mosaic p(leukemic)"]
    assert cells.multiscale and len(cells.data) == 5 and cells.data[0].shape == (2000, 2000), widget._status.value
    assert len(cells.features) == summary["leukocytes"] >= 6 and "Blast equivalents" in widget._summary.value
    assert tuple(pmap.scale) == (16, 16) and tuple(pmap.translate) == (7.5, 7.5)  # 16 x 16 pixels a value, centred

    review = ReviewWidget(viewer)
    viewer.window.add_dock_widget(review, name="Review cells")
    review._advance.value = False
    assert review._layer is cells and len(review._order) == summary["leukocytes"]
    review.next()
    label = int(cells.selected_label)
    row = cells.features.set_index("label").loc[label]
    assert np.allclose(viewer.scene.camera.center[-2:], (row["centroid_y"], row["centroid_x"]))
    review.set_call("exclude")
    assert cells.features.set_index("label").loc[label, "annotation"] == "exclude"
    assert review.update() is None and "not yet on whole slides" in review._status.value  # needs the labels in memory
    assert review.explain() is not None  # the heat map of one cell, from the region around it
    qtbot.waitUntil(lambda: review._worker is None, timeout=120_000)
    cam = viewer.layers["mosaic Grad-CAM"]
    heat = np.asarray(cam.data)
    (ty, tx), (h, w) = cam.translate, heat.shape
    assert cam.visible and heat.max() > 0 and cam.metadata["napari_leukemia"]["cell"] == label, review._status.value
    assert ty <= row["bbox_y0"] and tx <= row["bbox_x0"] and ty + h >= row["bbox_y1"] and tx + w >= row["bbox_x1"]
    inside = np.asarray(cells.data[0][int(ty):int(ty) + h, int(tx):int(tx) + w]) == label
    assert heat[~inside].max() == 0 and f"{heat[inside].mean():.3f}" in review._info.value
    saved = review.save()
    assert saved == folder / SLIDE_REVIEW_CSV and pd.read_csv(saved).set_index("label").loc[label, "annotation"] == "exclude"


def test_a_slide_on_a_cluster_stops_when_asked_survives_a_killed_worker_and_equals_one_process(
        tmp_path, full_run, mosaic, classifier_path, segmenter_path):
    """A folder run on a cluster analyses each slide on a worker (the models loaded there, from their files); a stop
    reaches the worker between steps, a killed worker's slide is resumed by the task's rerun, and both results equal
    one uninterrupted run in one process."""
    from napari_leukemia.core.batch import analyze_images
    from napari_leukemia.core.cluster import close_client, start_client

    out, folder = tmp_path / "out", tmp_path / "out" / "mosaic.ome"

    def two_tiles_done():
        return (folder / PROGRESS_JSON).is_file() and json.loads((folder / PROGRESS_JSON).read_text())["done"] >= 2

    client = start_client(workers=1)
    try:
        files = {"classifier": classifier_path, "segmenter": segmenter_path}
        stopped = drain(analyze_images([mosaic[0]], out, config=CONFIG, client=client, should_stop=two_tiles_done,
                                       **files))
        assert stopped["stopped"] and stopped["rows"] == []
        done = json.loads((folder / PROGRESS_JSON).read_text())["done"]
        assert 2 <= done < len(tile_cores((2000, 2000), 512)) and not (folder / "summary.json").exists()
        resumed = drain(analyze_images([mosaic[0]], out, config=CONFIG, client=client, resume=True, **files))
        assert [r["status"] for r in resumed["rows"]] == ["ok"]
        pd.testing.assert_frame_equal(pd.read_csv(folder / "cells.csv"), pd.read_csv(full_run[0] / "cells.csv"))
        assert (read_labels(folder) == read_labels(full_run[0])).all()
        # a worker killed in the middle of a slide: the scheduler runs the task again, which resumes the slide
        killed, again = [], tmp_path / "again"

        def kill_after_two_tiles():
            progress = again / "mosaic.ome" / PROGRESS_JSON
            if not killed and progress.is_file() and json.loads(progress.read_text())["done"] >= 2:
                for pid in client.run(os.getpid).values():
                    os.kill(pid, signal.SIGKILL)
                killed.append(json.loads(progress.read_text())["done"])
            return False

        rerun = drain(analyze_images([mosaic[0]], again, config=CONFIG, client=client,
                                     should_stop=kill_after_two_tiles, **files))
    finally:
        close_client(client)
    assert killed and [r["status"] for r in rerun["rows"]] == ["ok"], rerun["rows"]
    pd.testing.assert_frame_equal(pd.read_csv(again / "mosaic.ome" / "cells.csv"), pd.read_csv(full_run[0] / "cells.csv"))
    assert (read_labels(again / "mosaic.ome") == read_labels(full_run[0])).all()
