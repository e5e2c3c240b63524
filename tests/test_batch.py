"""Many images into one output folder (``napari-leukemia analyze``, ``core.batch``): safe names, nothing written
outside ``--out``, a summary kept up to date, resume after a killed run."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_leukemia import cli
from napari_leukemia.core.batch import result_folders
from napari_leukemia.core.results import OUTPUT_FILES, is_complete, save_result


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fast(classifier_path) -> list:
    return ["--classifier", classifier_path, "--method", "stain", "--no-gradcam", "--device", "cpu", "--quiet"]


def field(path: Path, seed: int = 0) -> Path:
    """A pale pink field without leukocytes: valid, and quick to analyse."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array([232, 200, 205]) + rng.normal(0, 6, (80, 96, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")  # by name: PIL sees no suffix in "...jpg"
    return path


def summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_result_folders_stay_inside_the_output_folder():
    names = result_folders(["a/...jpg", "b/..jpg", "summary.csv.jpg", "c/.jpg", "x y#.png", "A.png", "a.png", "Summary.png"])
    assert names == ["image", "image_2", "summary.csv_image", "jpg", "x_y_", "A", "a_2", "Summary_image"]
    assert all(n and not n.startswith(".") and "/" not in n for n in names)


def test_odd_image_names_write_only_inside_out(tmp_path, capsys, classifier_path):
    src = tmp_path / "in"
    src.mkdir()
    images = [field(src / "...jpg", 1), field(src / "..jpg", 2), field(src / "summary.csv.jpg", 3)]
    out = tmp_path / "parent" / "out"
    out.parent.mkdir()
    (out.parent / "labels.tif").write_bytes(b"the user's own file")
    code, _, err = run(capsys, "analyze", *images, "--out", out, *fast(classifier_path))
    assert code == 0, err
    assert (out.parent / "labels.tif").read_bytes() == b"the user's own file"
    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.tif", "out"]
    assert sorted(p.name for p in out.iterdir()) == ["image", "image_2", "summary.csv", "summary.csv_image"]
    assert [r["stem"] for r in summary(out)] == ["image", "image_2", "summary.csv_image"]
    assert all(is_complete(out / r["stem"]) for r in summary(out))


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_analysis(tmp_path, capsys, classifier_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = run(capsys, "analyze", field(tmp_path / "f.png"), "--out", blocker / "out", *fast(classifier_path))
    assert code == 2 and "cannot write into the output folder" in err and str(blocker / "out") in err


def test_an_empty_folder_named_as_an_image_fails_alone(tmp_path, capsys, classifier_path):
    (tmp_path / "x.jpg").mkdir()
    good = field(tmp_path / "good.png")
    code, _, err = run(capsys, "analyze", tmp_path / "x.jpg", good, "--out", tmp_path / "out", *fast(classifier_path))
    assert code == 1 and "folder holding no images" in err
    assert [(r["stem"], r["status"]) for r in summary(tmp_path / "out")] == [("x", "failed"), ("good", "ok")]


def test_overwrite_removes_the_stale_results_of_an_image_that_now_fails(tmp_path, capsys, classifier_path):
    image = field(tmp_path / "smear.png")
    out = tmp_path / "out"
    assert run(capsys, "analyze", image, "--out", out, *fast(classifier_path))[0] == 0
    (out / "smear" / "my_notes.txt").write_text("the user's own notes")
    image.write_bytes(b"\x89PNG\r\n\x1a\n broken now")
    code, _, err = run(capsys, "analyze", image, "--out", out, "--overwrite", *fast(classifier_path))
    assert code == 1 and str(image) in err
    assert sorted(p.name for p in (out / "smear").iterdir()) == ["my_notes.txt"]  # results gone, the user's file kept
    assert summary(out)[0]["status"] == "failed"


def test_a_killed_run_resumes_where_it_stopped(tmp_path, capsys, classifier_path):
    first, second = field(tmp_path / "first.png", 1), field(tmp_path / "second.png", 2)
    out = tmp_path / "out"
    assert run(capsys, "analyze", first, "--out", out, *fast(classifier_path))[0] == 0
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / "first").iterdir()}
    # what kill -9 leaves in the middle of writing the second image: temporary files of atomic writes
    (out / "second").mkdir()
    (out / "second" / ".labels.tif.k1ll3d.tif").write_bytes(b"partial")
    (out / ".summary.csv.k1ll3d.csv").write_text("partial")
    code, _, err = run(capsys, "analyze", first, second, "--out", out, *fast(classifier_path))
    assert code == 2 and "--resume" in err  # a finished summary is never replaced unasked
    code, _, err = run(capsys, "analyze", first, second, "--out", out, "--resume", *fast(classifier_path))
    assert code == 0, err
    assert "done before" in err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "first").iterdir()} == done_before  # not analysed again
    assert sorted(p.name for p in (out / "second").iterdir()) == sorted(OUTPUT_FILES)
    assert not list(out.glob(".*")) and [r["stem"] for r in summary(out)] == ["first", "second"]


def test_summary_is_written_after_every_image(tmp_path, classifier_path):
    from napari_leukemia.core.batch import analyze_images
    from napari_leukemia.core.config import AnalysisConfig, SegmentConfig
    from napari_leukemia.core.model import load_classifier

    images = [field(tmp_path / f"f{i}.png", i) for i in range(3)]
    config = AnalysisConfig(device="cpu", gradcam=False, segment=SegmentConfig(method="stain"))
    run_ = analyze_images(images, tmp_path / "out", classifier=load_classifier(classifier_path, "cpu"), config=config)
    for i in range(3):
        event = next(run_)
        assert event.done == i + 1 and len(summary(tmp_path / "out")) == i + 1  # on disk before the next image
        assert event.stage == "image" and event.total == 3 and event.payload["row"]["image"] == str(images[i])
    run_.close()


def test_save_result_refuses_to_replace_unasked(tmp_path, classifier_path, bccd_image):
    from napari_leukemia.core.config import AnalysisConfig, SegmentConfig
    from napari_leukemia.core.pipeline import analyze_smear

    config = AnalysisConfig(device="cpu", gradcam=False, segment=SegmentConfig(method="stain"))
    result = analyze_smear(bccd_image, classifier=classifier_path, config=config)
    written = save_result(result, tmp_path / "r", bccd_image)
    assert [p.name for p in written] == list(OUTPUT_FILES) and is_complete(tmp_path / "r")
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_result(result, tmp_path / "r", bccd_image)
    os.utime(tmp_path / "r" / "cells.csv", ns=(0, 0))
    save_result(result, tmp_path / "r", bccd_image, overwrite=True)
    assert (tmp_path / "r" / "cells.csv").stat().st_mtime_ns > 0
