import numpy as np
import pytest

from napari_leukemia import analyze_smear
from napari_leukemia.core import drain
from napari_leukemia.core.config import AnalysisConfig, SegmentConfig
from napari_leukemia.core.io import ImageError
from napari_leukemia.core.pipeline import CELL_COLUMNS, iter_analyze_smear


@pytest.fixture(scope="module")
def result(bccd_image):
    return analyze_smear(bccd_image, name="bccd", config=AnalysisConfig(device="cpu"))


def test_result_layers_table_and_summary(result, bccd_image, bccd_boxes):
    from napari_leukemia.core.boxes import label_boxes, match_boxes

    h, w = bccd_image.shape[:2]
    assert result.labels.shape == (h, w) and result.labels.dtype == np.int32
    assert match_boxes(label_boxes(result.labels), bccd_boxes)["tp"] == len(bccd_boxes)
    cells = result.cells
    assert set(CELL_COLUMNS) <= set(cells.columns) and {"p_normal", "p_leukemic"} <= set(cells.columns)
    assert len(cells) == result.labels.max() == result.summary["leukocytes"]
    assert np.allclose(cells["p_normal"] + cells["p_leukemic"], 1, atol=1e-5)
    assert np.allclose(cells["uncertainty"], 1 - np.abs(2 * cells["p_leukemic"] - 1))
    for _, row in cells.iterrows():
        inside = result.probability[result.labels == row["label"]]
        assert np.allclose(inside, row["p_leukemic"])
    assert (result.probability[result.labels == 0] == 0).all()
    assert result.gradcam.shape == (h, w) and result.gradcam.max() > 0
    s = result.summary
    assert s["leukemic"] == int(cells["leukemic"].sum())
    assert s["leukemic_fraction"] == pytest.approx(s["leukemic"] / s["leukocytes"])
    assert "@" in s["classifier"] and "@" in s["segmenter"] and s["timings"]["total_s"] > 0


def test_progress_is_reported_as_plain_events(bccd_image):
    gen = iter_analyze_smear(bccd_image, config=AnalysisConfig(device="cpu", gradcam=False,
                                                               segment=SegmentConfig(method="stain")))
    events = []
    final = drain(gen, events.append)
    assert [e.done for e in events] == sorted(e.done for e in events) and events[-1].done == events[-1].total
    assert list(dict.fromkeys(e.stage for e in events)) == ["load", "segment", "classify", "finished"]
    assert final.gradcam is None and final.summary["segmenter"] == "stain-based"


def test_edited_labels_are_classified_without_resegmenting(result, bccd_image):
    labels = result.labels.copy()
    labels[:60, :60] = labels.max() + 1  # the user paints a new cell
    again = analyze_smear(bccd_image, labels=labels, config=AnalysisConfig(device="cpu", gradcam=False))
    assert again.summary["segmenter"] == "user labels"
    assert np.array_equal(again.labels, labels) and len(again.cells) == len(result.cells) + 1


def test_smear_without_leukocytes_gives_an_empty_result(bccd_image):
    empty = analyze_smear(np.ascontiguousarray(bccd_image[300:, :300]), name="rbc only",
                          config=AnalysisConfig(device="cpu", segment=SegmentConfig(diameter=190)))
    assert empty.summary["leukocytes"] == 0 and empty.summary["leukemic_fraction"] == 0
    assert "no leukocytes found in rbc only" in empty.summary["message"]
    assert len(empty.cells) == 0 and empty.labels.max() == 0


def test_mismatched_labels_are_refused(bccd_image):
    with pytest.raises(ImageError, match="do not match"):
        analyze_smear(bccd_image, labels=np.zeros((10, 10), np.int32))
    with pytest.raises(ImageError, match="integers"):
        analyze_smear(bccd_image, labels=np.zeros(bccd_image.shape[:2], np.float32))


def test_cell_table_keeps_p_leukemic_the_sum_over_leukemic_classes():
    from napari_leukemia.core.pipeline import cell_table

    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:6], labels[10:15, 10:15] = 1, 2
    proba = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    classes, leukemic = ("normal", "leukemic", "promyelocyte"), ("leukemic", "promyelocyte")
    p_leuk = proba[:, 1] + proba[:, 2]
    cells = cell_table(labels, [1, 2], proba, p_leuk, classes, leukemic)
    assert np.allclose(cells["p_leukemic"], [0.8, 0.4]) and np.allclose(cells["p_class_leukemic"], [0.5, 0.1])
    assert list(cells["predicted_class"]) == ["leukemic", "normal"] and list(cells["leukemic"]) == [True, False]
    assert list(cells["area"]) == [16, 25] and list(cells["bbox_y0"]) == [2, 10]


def test_fixed_window_classifier_is_scaled_by_the_red_cells(result, bccd_image, classifier):
    from dataclasses import replace

    from napari_leukemia.core.model import Classifier

    windowed = Classifier(classifier.net, replace(classifier.info, crop=replace(classifier.info.crop, window=3.5)))
    labels, quick = result.labels, dict(device="cpu", gradcam=False)
    measured = analyze_smear(bccd_image, labels=labels, classifier=windowed, config=AnalysisConfig(**quick))
    given = analyze_smear(bccd_image, labels=labels, classifier=windowed,
                          config=AnalysisConfig(red_cell_diameter=40.0, **quick))
    assert not np.allclose(measured.cells["p_leukemic"], given.cells["p_leukemic"])  # the scale is used
    assert given.summary["red_cell_diameter"] == 40.0 and measured.summary["red_cell_diameter"] > 0
    assert result.summary["red_cell_diameter"] is None  # cell-fitted crops need no scale
    blank = np.zeros((200, 200, 3), np.uint8)
    blank[...] = (90, 40, 160)  # all nuclear stain, no red cells
    blank[0, 0, 0] = 91
    cell = np.zeros((200, 200), np.int32)
    cell[80:120, 80:120] = 1
    with pytest.raises(ImageError, match="flat: no red cells"):
        analyze_smear(blank, labels=cell, classifier=windowed, name="flat", config=AnalysisConfig(**quick))
    with pytest.raises(ValueError, match="red-cell diameter must be positive"):
        AnalysisConfig(red_cell_diameter=0)


def test_user_labels_beyond_int32_are_refused_not_wrapped(bccd_image):
    from napari_leukemia.core.io import ImageError
    from napari_leukemia.core.pipeline import check_labels

    labels = np.zeros(bccd_image.shape[:2], np.int64)
    labels[10:40, 10:40] = 2**31 + 1  # would wrap to a negative id in int32
    with pytest.raises(ImageError, match="exceeds"):
        check_labels(labels, labels.shape, "smear")
    labels[10:40, 10:40] = 2**31 - 1  # the largest id labels.tif holds: kept as it is
    assert check_labels(labels, labels.shape, "smear").max() == 2**31 - 1


def test_sparse_large_ids_keep_their_ids_in_the_table_and_maps(bccd_image, classifier_path):
    """User cells with ids near 2**31 are measured and painted without tables as long as the largest id."""
    labels = np.zeros(bccd_image.shape[:2], np.int64)
    labels[100:160, 100:160] = 2**31 - 1
    labels[300:350, 400:450] = 7
    config = AnalysisConfig(device="cpu", gradcam=False, segment=SegmentConfig(method="stain"))
    result = analyze_smear(bccd_image, classifier=classifier_path, config=config, labels=labels)
    assert list(result.cells["label"]) == [7, 2**31 - 1]
    assert list(result.cells["area"]) == [50 * 50, 60 * 60]
    p = result.cells.set_index("label")["p_leukemic"]
    assert result.probability[120, 120] == pytest.approx(p[2**31 - 1]) and result.probability[320, 420] == pytest.approx(p[7])


def test_large_images_report_each_tile_and_stop_between_tiles(bccd_image, classifier_path):
    """A tiled field yields progress per tile, so a worker (napari's Cancel) stops between tiles, not after all."""
    import time

    config = AnalysisConfig(device="cpu", gradcam=False, segment=SegmentConfig(method="stain", tile_size=256))
    events = []
    result = drain(iter_analyze_smear(bccd_image, classifier=classifier_path, config=config), events.append)
    tiles = [e.message for e in events if "segmenting leukocytes: tile" in e.message]
    assert tiles == [f"segmenting leukocytes: tile {i} of 6" for i in range(1, 7)]  # 480 x 640 in 256 px tiles
    assert [e.payload for e in events if e.stage == "segment" and e.payload] == [{"tile": i, "tiles": 6} for i in range(1, 7)]
    # the diameter is estimated tile by tile first (9 tiles at most), so a stop acts there too
    estimates = [e.message for e in events if "diameter" in e.message]
    assert estimates == [f"segmenting leukocytes: estimating the leukocyte diameter: tile {i} of 6" for i in range(1, 7)]
    assert all(e.total == 3 for e in events) and result.summary["leukocytes"] >= 1
    run = iter_analyze_smear(bccd_image, classifier=classifier_path, config=config)
    while "tile 1 " not in next(run).message:
        pass
    t = time.perf_counter()
    run.close()  # what a stopped worker does at its next yield: no further tile is segmented
    assert time.perf_counter() - t < 2


def test_cells_are_classified_and_explained_batch_by_batch(bccd_image, classifier_path):
    """Classification and Grad-CAM report each batch, so a stop acts between batches; batches change no call."""
    labels = np.zeros(bccd_image.shape[:2], np.int32)
    for k in range(5):
        labels[40 + 80 * k : 100 + 80 * k, 60:120] = k + 1
    config = AnalysisConfig(device="cpu", gradcam=True, batch_size=2)
    events = []
    small = drain(iter_analyze_smear(bccd_image, labels=labels, classifier=classifier_path, config=config),
                  events.append)
    messages = [e.message for e in events]
    assert [m for m in messages if m.startswith("classifying cells:")] == [f"classifying cells: {k} of 5" for k in (2, 4, 5)]
    assert [m for m in messages if m.startswith("Grad-CAM:")] == [f"Grad-CAM: {k} of 5" for k in (2, 4, 5)]
    whole = analyze_smear(bccd_image, labels=labels, classifier=classifier_path,
                          config=AnalysisConfig(device="cpu", gradcam=True, batch_size=32))
    assert np.allclose(small.cells["p_leukemic"], whole.cells["p_leukemic"], atol=1e-3)
    assert np.allclose(small.gradcam, whole.gradcam, atol=1e-2)
