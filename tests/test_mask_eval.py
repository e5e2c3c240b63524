"""A segmenter against expert whole-cell masks (``evaluate-segmentation --masks``, ``core.mask_eval``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from cli_run import run
from PIL import Image

from napari_leukemia.core.mask_eval import mask_pairs, score_cell


def test_score_cell_counts_iou_and_the_nucleus_and_cytoplasm_kept():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:8, 2:8] = 128  # cytoplasm: 36 pixels of cell
    mask[4:6, 4:6] = 255  # nucleus: 4 of them
    predicted = np.zeros((10, 10), bool)
    predicted[3:7, 3:7] = True  # 16 pixels, all inside the cell: the nucleus and 12 of 32 cytoplasm pixels
    r = score_cell(predicted, mask)
    assert r["iou"] == pytest.approx(16 / 36) and r["kept"] == pytest.approx(16 / 36) and r["spill"] == 0
    assert r["nucleus_kept"] == 1 and r["cytoplasm_kept"] == pytest.approx(12 / 32)
    assert "nucleus_kept" not in score_cell(predicted, (mask > 0).astype(np.uint8))  # one level: no parts
    # the predicted cell cut by the image's nuclear stain: here a stain one pixel wider than the expert's nucleus
    stain = np.zeros((10, 10), bool)
    stain[3:6, 4:6] = True
    r = score_cell(predicted, mask, stain)
    assert r["nucleus_iou"] == pytest.approx(4 / 6) and r["cytoplasm_iou"] == pytest.approx(10 / 32)
    assert score_cell(mask > 0, mask, mask == 255)["cytoplasm_iou"] == 1


def test_masks_are_found_beside_or_in_a_folder_and_a_missing_one_is_named(tmp_path):
    for name in ("a.png", "a_mask.png", "b.png"):
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="b.png: no mask found.*b_mask.png"):
        mask_pairs([tmp_path / "a.png", tmp_path / "a_mask.png", tmp_path / "b.png"])
    assert mask_pairs([tmp_path / "a.png", tmp_path / "a_mask.png"]) == [(tmp_path / "a.png", tmp_path / "a_mask.png")]
    (tmp_path / "masks").mkdir()
    shutil.copy(tmp_path / "a.png", tmp_path / "masks" / "b.png")
    assert mask_pairs([tmp_path / "b.png"], tmp_path / "masks") == [(tmp_path / "b.png", tmp_path / "masks" / "b.png")]


def test_evaluate_segmentation_against_zheng1_expert_masks(shared_data, tmp_path):
    data = tmp_path / "zheng1"
    data.mkdir()
    for k in (1, 2, 3, 4):
        for suffix in ("", "_mask"):
            shutil.copy(shared_data / "zheng1" / "images" / f"{k:03d}{suffix}.png", data)
    Image.fromarray(np.zeros((120, 120), np.uint8)).save(data / "005_mask.png")  # an empty mask, for an error
    shutil.copy(shared_data / "zheng1" / "images" / "005.png", data)
    code, stdout, stderr = run("evaluate-segmentation", data, "--masks", "--diameter", 80, "--out", tmp_path / "out",
                               "--device", "cpu", "--quiet")
    assert code == 1 and "005_mask.png: the mask is empty" in stderr
    report = json.loads((tmp_path / "out" / "segmentation_metrics.json").read_text())
    assert report["images"] == 4 and len(report["per_image"]) == 4 and len(report["errors"]) == 1
    assert 0.3 < report["mean_iou"] <= 1 and report["mean_nucleus_kept"] > report["mean_cytoplasm_kept"]
    assert "4 cells: centre cell found in" in stdout and "cytoplasm kept" in stdout and "cytoplasm IoU" in stdout
    assert 0 < report["mean_nucleus_iou"] <= 1 and 0 <= report["mean_cytoplasm_iou"] <= 1
    with Image.open(tmp_path / "out" / "worst.png") as im:
        assert im.format == "PNG"
    code, _, stderr = run("evaluate-segmentation", data, "--masks", "--boxes", data, "--out", tmp_path / "x")
    assert code == 2 and "not allowed with" in stderr
    # the single-cell path of analyze: framed, scale searched; a cell (or the centred box) always stands at the centre
    code, stdout, _ = run("evaluate-segmentation", data, "--masks", "--single-cell", "--out", tmp_path / "single",
                          "--device", "cpu", "--quiet")
    report = json.loads((tmp_path / "single" / "segmentation_metrics.json").read_text())
    assert code == 1 and report["single_cell"] and report["found"] == 1 and report["mean_iou"] > 0.3
    code, _, stderr = run("evaluate-segmentation", data, "--boxes", data, "--single-cell", "--out", tmp_path / "x")
    assert code == 2 and "--single-cell scores the centre cell of each image: give --masks" in stderr
