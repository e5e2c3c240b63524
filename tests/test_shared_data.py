"""Slow checks on real data from ../shared (CI has it): held-out BCCD fields and DeepAPL test patients."""

import csv

import numpy as np
import pytest

from napari_leukemia.core.boxes import detection_summary, label_boxes, match_boxes, read_voc_boxes
from napari_leukemia.core.config import AnalysisConfig, SegmentConfig
from napari_leukemia.core.io import ImageError, read_image
from napari_leukemia.core.segment import load_segmenter, segment_leukocytes

pytestmark = pytest.mark.slow


def test_cellpose_detects_leukocytes_on_held_out_bccd_fields(shared_data, segmenter_path):
    model = load_segmenter(segmenter_path, "cpu")
    root = shared_data / "bccd"
    files = [f for f in sorted((root / "JPEGImages").glob("*.jpg")) if int(f.stem.split("_")[-1]) % 5 == 0][:30]
    matches = [
        match_boxes(label_boxes(segment_leukocytes(read_image(f), SegmentConfig(), model=model)),
                    read_voc_boxes(root / "Annotations" / f"{f.stem}.xml"))
        for f in files
    ]
    s = detection_summary(matches)
    assert s["precision"] >= 0.95 and s["recall"] >= 0.95, s


def _deepapl_rows(shared_data, split, per_class):
    rows = list(csv.DictReader(open(shared_data / "deepapl" / "manifest.csv")))
    picked, seen = [], {}
    for r in rows:
        if r["split"] == split and r["decode_ok"] == "1" and r["duplicate_in_other_class"] == "0":
            k = r["coarse_label"]
            if seen.get(k, 0) < per_class:
                seen[k] = seen.get(k, 0) + 1
                picked.append(r)
    return picked


def test_pipeline_calls_deepapl_test_cells(shared_data, classifier_path, segmenter_path):
    from napari_leukemia import analyze_smear
    from napari_leukemia.core.preprocess import centre_cell

    rows = _deepapl_rows(shared_data, "test", per_class=6)
    correct = 0
    for r in rows:
        result = analyze_smear(read_image(shared_data / "deepapl" / r["file"]), name=r["file"],
                               config=AnalysisConfig(device="cpu", gradcam=False))
        cell = centre_cell(result.labels)
        assert cell, f"no centre cell found in {r['file']}"
        called = bool(result.cells.set_index("label").loc[cell, "leukemic"])
        correct += called == r["coarse_label"].startswith("leukemic")
    assert correct / len(rows) >= 0.8, f"{correct} of {len(rows)} test cells called right"


def test_truncated_deepapl_files_are_reported_by_name(shared_data):
    bad = [r for r in csv.DictReader(open(shared_data / "deepapl" / "manifest.csv")) if r["decode_ok"] == "0"]
    assert len(bad) == 4
    for r in bad:
        with pytest.raises(ImageError, match=r["file"].split("/")[-1]):
            read_image(shared_data / "deepapl" / r["file"])


def test_cli_over_a_folder_of_bccd_fields(shared_data, tmp_path, classifier_path):
    import shutil

    from napari_leukemia.cli import main

    folder = tmp_path / "slides"
    folder.mkdir()
    for f in sorted((shared_data / "bccd" / "JPEGImages").glob("*.jpg"))[:4]:
        shutil.copy(f, folder)
    assert main(["analyze", str(folder), "--out", str(tmp_path / "out"), "--no-gradcam", "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert all(int(r["leukocytes"]) >= 1 for r in rows)
    assert np.mean([float(r["leukemic_fraction"]) for r in rows]) <= 0.5  # normal blood
