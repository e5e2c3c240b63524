"""Bad input to the analysis: each case gives a message naming the file or argument and the problem, or a right result."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_leukemia.cli import main
from napari_leukemia.core.config import CropConfig
from napari_leukemia.core.preprocess import MAX_LABEL, crop_cells
from napari_leukemia.core.render import overlay
from napari_leukemia.samples import sample_path

VOC = Path(__file__).parent / "data" / "BloodImage_00023.xml"
BOX = "<bndbox><xmin>98</xmin><ymin>34</ymin><xmax>281</xmax><ymax>206</ymax></bndbox>"


def voc_with(body: str) -> str:
    """The sample's VOC file with its WBC box replaced by ``body``."""
    text = VOC.read_text()
    assert BOX in text.replace("\n", "").replace("\t", "")
    start, end = text.index("<bndbox>"), text.index("</bndbox>") + len("</bndbox>")
    return text[:start] + body + text[end:]


@pytest.fixture
def annotated(tmp_path):
    """A folder of images with the sample's boxes, and the boxes' folder: ``(images, boxes)``."""
    images, boxes = tmp_path / "images", tmp_path / "boxes"
    images.mkdir()
    boxes.mkdir()
    shutil.copy(sample_path("bccd"), images / "good.jpg")
    shutil.copy(VOC, boxes / "good.xml")
    return images, boxes


def evaluate(capsys, images, boxes, out, *extra):
    code = main(["evaluate-segmentation", str(images), "--boxes", str(boxes), "--out", str(out), "--method", "stain",
                 "--quiet", *map(str, extra)])
    return code, capsys.readouterr().err


def test_broken_voc_files_are_reported_by_name_and_the_others_scored(annotated, tmp_path, capsys):
    images, boxes = annotated
    broken = {
        "nobox": (voc_with(""), "object 1 (WBC) has no <bndbox>"),
        "noxmin": (voc_with(BOX.replace("<xmin>98</xmin>", "")), "object 1 (WBC) has no <xmin> in its <bndbox>"),
        "text": (voc_with(BOX.replace(">98<", ">ninety<")), "<xmin> is not a number: 'ninety'"),
        "unparsable": (VOC.read_text()[:300], "not a readable Pascal VOC file"),
    }
    for stem, (text, _) in broken.items():
        shutil.copy(sample_path("bccd"), images / f"{stem}.jpg")
        (boxes / f"{stem}.xml").write_text(text)
    code, err = evaluate(capsys, images, boxes, tmp_path / "eval")
    assert code == 1
    report = json.loads((tmp_path / "eval" / "segmentation_metrics.json").read_text())
    assert report["images"] == 1 and report["recall"] == 1.0 and report["per_image"][0]["image"].endswith("good.jpg")
    assert len(report["errors"]) == 4
    for stem, (_, problem) in broken.items():
        line = next(e for e in report["errors"] if f"{stem}.xml" in e)
        assert problem in line and str(images / f"{stem}.jpg") in line
        assert f"error: {line}" in err


def test_label_in_other_letter_case_scores_like_the_boxes(annotated, tmp_path, capsys):
    images, boxes = annotated
    assert evaluate(capsys, images, boxes, tmp_path / "upper")[0] == 0
    assert evaluate(capsys, images, boxes, tmp_path / "lower", "--label", "wbc")[0] == 0
    upper, lower = (json.loads((tmp_path / d / "segmentation_metrics.json").read_text()) for d in ("upper", "lower"))
    assert lower["tp"] == upper["tp"] == 1 and lower["recall"] == upper["recall"] == 1.0


def test_label_no_box_carries_is_a_usage_error_naming_the_labels(annotated, tmp_path, capsys):
    images, boxes = annotated
    code, err = evaluate(capsys, images, boxes, tmp_path / "eval", "--label", "Neutrophil")
    assert code == 2 and not (tmp_path / "eval").exists()
    assert f"--label Neutrophil: no box labelled 'Neutrophil' in the VOC files of {boxes}" in err
    assert "the labels they hold: Platelets (1), RBC (16), WBC (1)" in err


@pytest.mark.parametrize("option, value, message", [
    ("--iou", "5", "argument --iou: must lie in (0, 1]"),
    ("--iou", "0", "argument --iou: must be a positive number"),
    ("--diameter", "1", "argument --diameter: must be at least 8 px, got '1'"),
])
def test_out_of_range_iou_and_diameter_are_usage_errors(annotated, tmp_path, capsys, option, value, message):
    images, boxes = annotated
    code, err = evaluate(capsys, images, boxes, tmp_path / "eval", option, value)
    assert code == 2 and message in err and not (tmp_path / "eval").exists()


def test_batch_size_zero_is_refused(classifier):
    from napari_leukemia.core.predict import predict_logits

    crops = np.zeros((2, 32, 32, 3), np.uint8)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match=f"batch_size must be a whole number of at least 1, got {bad}"):
            predict_logits(classifier, crops, batch_size=bad)


def test_overlay_of_large_ids_with_gaps_is_that_of_the_same_cells_renumbered():
    from skimage.segmentation import relabel_sequential

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 80, 3), np.uint8)
    labels = np.zeros((60, 80), np.int64)
    labels[5:20, 5:25], labels[30:50, 10:30], labels[20:40, 50:75] = 2**31 - 1, 40_000, 3
    cells = pd.DataFrame({"label": [3, 2**31 - 1, 40_000], "predicted_class": ["leukemic", "normal", "leukemic"]})
    small, forward, _ = relabel_sequential(labels)
    renumbered = cells.assign(label=[int(forward[v]) for v in cells["label"]])
    args = (["normal", "leukemic"], ["leukemic"])
    assert np.array_equal(overlay(image, labels, cells, *args), overlay(image, small.astype(np.int32), renumbered, *args))
    labels[0, 0] = 2**31
    with pytest.raises(ValueError, match="cell id 2147483648 exceeds 2147483647"):
        overlay(image, labels, cells, *args)


DTYPES = (np.int32, np.int64, np.uint16, np.uint32)


@st.composite
def label_images(draw):
    """A label image of a drawn dtype and shape: a few rectangles with ids small, large, gapped or beyond int32."""
    dtype = draw(st.sampled_from(DTYPES))
    top = int(np.iinfo(dtype).max)
    h, w = draw(st.integers(32, 56)), draw(st.integers(32, 56))  # as_rgb8 refuses sides under 32 px
    near_limit = min(top, MAX_LABEL)
    ids = st.one_of(st.integers(1, 300), st.integers(near_limit - 300, near_limit), st.integers(1, top))
    labels = np.zeros((h, w), dtype)
    for _ in range(draw(st.integers(0, 5))):
        r0, c0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        r1, c1 = draw(st.integers(r0 + 1, h)), draw(st.integers(c0 + 1, w))
        labels[r0:r1, c0:c1] = draw(ids)
    return labels


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=label_images())
def test_label_ids_survive_crops_table_and_labels_tif_or_are_refused(labels, tmp_path):
    from napari_leukemia.core.pipeline import SmearResult, cell_table
    from napari_leukemia.core.results import save_result

    image = np.random.default_rng(1).integers(0, 255, labels.shape + (3,), np.uint8)
    present = sorted(int(v) for v in np.unique(labels) if v > 0)
    if present and present[-1] > MAX_LABEL:
        with pytest.raises(ValueError, match=f"cell id {present[-1]} exceeds {MAX_LABEL}"):
            crop_cells(image, labels, CropConfig(size=16))
        with pytest.raises(ValueError, match=f"cell id {present[-1]} exceeds {MAX_LABEL}"):
            overlay(image, labels, pd.DataFrame({"label": [], "predicted_class": []}), ["a", "b"], ["a"])
        return
    crops = crop_cells(image, labels, CropConfig(size=16, mask_outside=True))
    assert [int(v) for v in crops.labels] == present
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    if present and present[-1] > 2**20:
        # pipeline.cell_geometry's tables are as long as the largest id: write labels.tif as save_result does
        tifffile.imwrite(folder / "labels.tif", np.asarray(labels, np.int32), compression="zlib")
        assert np.array_equal(tifffile.imread(folder / "labels.tif"), labels)
        return
    proba = np.tile([0.3, 0.7], (len(present), 1))
    cells = cell_table(labels, crops.labels, proba, proba[:, 0], ("leukemic", "normal"))
    assert cells["label"].tolist() == present
    assert cells["area"].tolist() == [int((labels == v).sum()) for v in present]
    result = SmearResult(labels=labels, cells=cells, probability=np.zeros(labels.shape, np.float32), gradcam=None,
                         summary={"classes": ["leukemic", "normal"], "leukemic_classes": ["leukemic"]})
    save_result(result, folder, image)
    back = tifffile.imread(folder / "labels.tif")
    assert back.dtype == np.int32 and np.array_equal(back, labels)
    assert pd.read_csv(folder / "cells.csv")["label"].tolist() == present
