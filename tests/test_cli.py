"""The ``napari-leukemia analyze`` command line (run in-process through ``cli.main``)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.morphology import dilation
from skimage.segmentation import find_boundaries

from napari_leukemia import cli
from napari_leukemia.core.render import LEUKEMIC_RGBA, NORMAL_RGBA
from napari_leukemia.samples import sample_path

COLUMNS = ["image", "stem", "status", "leukocytes", "leukemic", "leukemic_fraction", "blast_pct", "blast_pct_low",
           "blast_pct_high", "too_few_cells",
           "segmenter", "found_by", "classifier", "seconds", "error"]
FILES = ["labels.tif", "cells.csv", "summary.json", "overlay.png"]
DISCLAIMER = "Research use only: not a diagnostic device."


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fast(classifier_path) -> list:
    """Options of a quick run: the test classifier, stain segmentation, no Grad-CAM, CPU, no bar."""
    return ["--classifier", classifier_path, "--method", "stain", "--no-gradcam", "--device", "cpu", "--quiet"]


def read_summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def cell_free_image(path: Path, seed: int = 0) -> Path:
    """A pale pink noise field: a valid smear image holding no leukocyte (no classification needed)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array([232, 200, 205]) + rng.normal(0, 6, (80, 96, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_help_does_not_import_torch():
    code = (
        "import sys; from napari_leukemia import cli; rc = cli.main(['analyze', '--help']); "
        "assert rc == 0, rc; heavy = [m for m in ('torch', 'cellpose', 'napari', 'qtpy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--overwrite" in proc.stdout


def test_disclaimer_matches_the_pipeline():
    from napari_leukemia.core.config import DISCLAIMER as PIPELINE_DISCLAIMER

    assert cli.DISCLAIMER == PIPELINE_DISCLAIMER == DISCLAIMER


def test_command_line_defaults_and_choices_come_from_config():
    """config.py is the one home of defaults: the parsed defaults of ``train`` and ``evaluate`` are its values."""
    from napari_leukemia.core import config

    parser = cli.build_parser()
    t = parser.parse_args(["train", "--out", "x", "DATA"])
    d = config.TrainConfig()
    assert (t.epochs, t.batch_size, t.lr, t.patience, t.seed, t.device, t.imagenet, t.tune, t.sampling) == (
        d.epochs, d.batch_size, d.lr, d.patience, d.seed, d.device, d.imagenet, d.tune, d.sampling)
    assert (t.stain_jitter, t.stain_vector_jitter, t.lowres_p, t.steps_per_epoch) == (
        d.stain_jitter, d.stain_vector_jitter, d.lowres_p, d.max_steps_per_epoch)
    assert (t.method, t.labels, t.diameter) == (config.SegmentConfig().method, config.DEEPAPL_LABELS[0], None)
    assert parser.parse_args(["train", "--out", "x", "DATA", "--cv"]).cv == config.CV_FOLDS
    e = parser.parse_args(["evaluate", "--out", "x", "DATA"])
    assert (e.batch_size, e.device, e.method) == (config.EVAL_BATCH_SIZE, d.device, config.SegmentConfig().method)
    train = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions if a.dest == "device")
    assert tuple(train.choices) == config.DEVICE_CHOICES
    a = parser.parse_args(["analyze", "--out", "x", "IMAGE"])
    c = config.AnalysisConfig()
    assert (a.device, a.method, a.diameter, a.workers, a.scheduler) == (c.device, c.segment.method, None, None, None)
    s = parser.parse_args(["evaluate-segmentation", "--out", "x", "IMAGE", "--masks"])
    assert (s.iou, s.label, s.device, s.method) == (config.MATCH_IOU, config.BOX_LABEL, c.device, c.segment.method)


def test_no_images_is_a_usage_error(tmp_path, capsys):
    code, _, err = run(capsys, "analyze", "--out", tmp_path / "out")
    assert code == 2
    assert "no images" in err
    assert not (tmp_path / "out").exists()


def test_analyze_bundled_samples(tmp_path, capsys, classifier_path):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "analyze", "--sample", "bccd", "--sample", "deepapl", "--out", out,
                            *fast(classifier_path))
    assert code == 0, err
    rows = read_summary(out)
    assert [r["stem"] for r in rows] == ["bccd_smear", "deepapl_blast"]
    assert [r["image"] for r in rows] == [str(sample_path("bccd")), str(sample_path("deepapl"))]
    assert all(r["status"] == "ok" and r["error"] == "" for r in rows)
    for row in rows:  # the table printed gives the interval written (widened by the classifier's cv_rates)
        assert f"{float(row['blast_pct_low']):.1f}-{float(row['blast_pct_high']):.1f}%" in stdout
    for row in rows:
        folder = out / row["stem"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
        image = np.asarray(Image.open(row["image"]).convert("RGB"))
        labels = tifffile.imread(folder / "labels.tif")
        assert labels.dtype == np.int32 and labels.shape == image.shape[:2]
        summary = json.loads((folder / "summary.json").read_text())
        with open(folder / "cells.csv", newline="") as f:
            cells = list(csv.DictReader(f))
        assert len(cells) == summary["leukocytes"] == int(row["leukocytes"]) == labels.max()
        assert sum(c["leukemic"] == "True" for c in cells) == summary["leukemic"] == int(row["leukemic"])
        assert summary["image_path"] == str(Path(row["image"]).resolve())
        assert summary["segmenter"] == row["segmenter"] == "stain-based"
        assert row["classifier"].startswith(Path(classifier_path).name + "@")
        # the overlay is the smear with coloured outlines: changed pixels lie on cells' borders only
        picture = np.asarray(Image.open(folder / "overlay.png"))
        assert picture.shape == image.shape and picture.dtype == np.uint8
        changed = (picture != image).any(axis=-1)
        assert changed.any() == (summary["leukocytes"] > 0)
        outlines = dilation(find_boundaries(labels, mode="inner"), np.ones((3, 3), bool))
        assert not (changed & ~outlines).any()
        leukemic, normal = (np.array(rgba[:3]) * 255 for rgba in (LEUKEMIC_RGBA, NORMAL_RGBA))
        colours = [np.asarray(c, np.uint8) for c in (np.rint(leukemic), np.rint(normal))]
        assert (np.all(picture[changed] == colours[0], axis=-1) | np.all(picture[changed] == colours[1], axis=-1)).all()
    assert stdout.count(DISCLAIMER) == 1
    assert "bccd_smear" in stdout and "deepapl_blast" in stdout
    assert "total:" in stdout


def test_gradcam_run(tmp_path, capsys, classifier_path):
    out = tmp_path / "out"
    code, _, err = run(capsys, "analyze", sample_path("deepapl"), "--out", out, "--classifier", classifier_path,
                       "--method", "stain", "--device", "cpu", "--quiet")
    assert code == 0, err
    folder = out / "deepapl_blast"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["config"]["gradcam"] is True
    assert "gradcam_s" in summary["timings"]


def test_bad_image_does_not_stop_the_others(tmp_path, capsys, classifier_path):
    data = sample_path("bccd").read_bytes()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(data[: len(data) // 2])
    good = tmp_path / "good.jpg"
    shutil.copyfile(sample_path("deepapl"), good)
    out = tmp_path / "out"
    code, _, err = run(capsys, "analyze", broken, good, "--out", out, *fast(classifier_path))
    assert code == 1
    assert "error:" in err and str(broken) in err
    rows = read_summary(out)
    assert [(r["stem"], r["status"]) for r in rows] == [("broken", "failed"), ("good", "ok")]
    assert str(broken) in rows[0]["error"]
    assert rows[0]["leukocytes"] == ""
    assert sorted(p.name for p in (out / "good").iterdir()) == sorted(FILES)
    assert not (out / "broken").exists()


def test_existing_results_are_not_overwritten(tmp_path, capsys, classifier_path):
    image = cell_free_image(tmp_path / "smear.png")
    out = tmp_path / "out"
    assert run(capsys, "analyze", image, "--out", out, *fast(classifier_path))[0] == 0
    before, summary_before = snapshot(out / "smear"), (out / "summary.csv").read_bytes()

    # a second run into the same folder is refused up front
    code, _, err = run(capsys, "analyze", image, "--out", out, *fast(classifier_path))
    assert code == 2
    assert "summary.csv exists; pass --resume to continue that run, --overwrite to replace it" in err
    assert (out / "summary.csv").read_bytes() == summary_before

    # without the run summary, the image's own results are still protected
    (out / "summary.csv").unlink()
    code, _, err = run(capsys, "analyze", image, "--out", out, *fast(classifier_path))
    assert code == 1
    assert "exists; pass --overwrite to replace it" in err
    assert snapshot(out / "smear") == before
    [row] = read_summary(out)
    assert row["status"] == "failed" and "--overwrite" in row["error"]

    # --overwrite replaces them
    code, _, err = run(capsys, "analyze", image, "--out", out, "--overwrite", *fast(classifier_path))
    assert code == 0, err
    after = snapshot(out / "smear")
    assert sorted(after) == sorted(FILES)
    assert all(after[name][0] != before[name][0] for name in FILES)
    assert read_summary(out)[0]["status"] == "ok"


def test_folder_expands_to_its_images(tmp_path, capsys, classifier_path):
    folder = tmp_path / "smears"
    folder.mkdir()
    cell_free_image(folder / "b.png", 1)
    cell_free_image(folder / "a.JPG", 2)
    cell_free_image(folder / "c.tif", 3)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    cell_free_image(folder / "sub" / "d.png", 4)
    other = tmp_path / "other"
    other.mkdir()
    cell_free_image(other / "a.bmp", 5)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "analyze", folder, other / "a.bmp", "--out", out, *fast(classifier_path))
    assert code == 0, err
    rows = read_summary(out)
    assert [r["image"] for r in rows] == [str(folder / "a.JPG"), str(folder / "b.png"), str(folder / "c.tif"),
                                          str(other / "a.bmp")]
    assert [r["stem"] for r in rows] == ["a", "b", "c", "a_2"]
    assert all(r["status"] == "ok" and r["leukocytes"] == "0" for r in rows)
    for stem in ("a", "b", "c", "a_2"):
        assert sorted(p.name for p in (out / stem).iterdir()) == sorted(FILES)
    assert not (out / "d").exists()
    assert "no leukocytes found" in err
    assert "0 leukocytes" in stdout


@pytest.mark.parametrize("which", ["foreign", "missing"])
def test_bad_classifier_fails_fast(tmp_path, capsys, which):
    checkpoint = tmp_path / "x.safetensors"
    if which == "foreign":
        checkpoint.write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / "out"
    code, _, err = run(capsys, "analyze", "--sample", "deepapl", "--out", out, "--classifier", checkpoint,
                       "--method", "stain", "--device", "cpu", "--quiet")
    assert code == 2
    assert str(checkpoint) in err and "classifier" in err
    assert not out.exists()


def test_bad_segmenter_fails_fast(tmp_path, capsys, classifier_path):
    checkpoint = tmp_path / "seg.safetensors"
    shutil.copyfile(classifier_path, checkpoint)  # a real checkpoint, but of the wrong kind
    out = tmp_path / "out"
    code, _, err = run(capsys, "analyze", "--sample", "deepapl", "--out", out, "--classifier", classifier_path,
                       "--segmenter", checkpoint, "--device", "cpu", "--quiet")
    assert code == 2
    assert str(checkpoint) in err and "segmenter" in err
    assert not out.exists()


def test_cellpose_segmenter(tmp_path, capsys, classifier_path, segmenter_path):
    out = tmp_path / "out"
    code, _, err = run(capsys, "analyze", "--sample", "deepapl", "--out", out, "--classifier", classifier_path,
                       "--segmenter", segmenter_path, "--no-gradcam", "--device", "cpu", "--quiet")
    assert code == 0, err
    [row] = read_summary(out)
    assert row["segmenter"].startswith(Path(segmenter_path).name + "@")
    labels = tifffile.imread(out / "deepapl_blast" / "labels.tif")
    assert labels.dtype == np.int32 and labels.max() == int(row["leukocytes"])


def test_interrupt_keeps_the_summary_of_finished_images(tmp_path, capsys, classifier_path, monkeypatch):
    first, second = cell_free_image(tmp_path / "first.png", 1), cell_free_image(tmp_path / "second.png", 2)
    from napari_leukemia.core import pipeline

    real = pipeline.analyze_smear

    def interrupted(image, *args, name="", **kwargs):
        if name == second.name:
            raise KeyboardInterrupt  # Ctrl-C twice, in the middle of the second image
        return real(image, *args, name=name, **kwargs)

    monkeypatch.setattr(pipeline, "analyze_smear", interrupted)
    out = tmp_path / "out"
    code, _, err = run(capsys, "analyze", first, second, "--out", out, *fast(classifier_path))
    assert code == 130
    assert "interrupted" in err
    assert [(r["stem"], r["status"]) for r in read_summary(out)] == [("first", "ok")]


def test_failed_overwrite_leaves_no_stale_results(tmp_path, capsys, classifier_path, monkeypatch):
    image = cell_free_image(tmp_path / "smear.png")
    out = tmp_path / "out"
    assert run(capsys, "analyze", image, "--out", out, *fast(classifier_path))[0] == 0
    before = snapshot(out / "smear")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)  # overlay.png is written after labels.tif and cells.csv
    code, _, err = run(capsys, "analyze", image, "--out", out, "--overwrite", *fast(classifier_path))
    assert code == 1
    assert "No space left on device" in err and str(image) in err
    assert before and not (out / "smear").exists()  # with --overwrite, the earlier results would be stale: removed
    assert read_summary(out)[0]["status"] == "failed"


def test_evaluate_segmentation_scores_boxes_and_reports_bad_files(tmp_path):
    import json
    import shutil

    from napari_leukemia.cli import main
    from napari_leukemia.samples import sample_path

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sample_path("bccd"), images / "BloodImage_00023.jpg")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    boxes = Path(__file__).parent / "data"
    code = main(["evaluate-segmentation", str(images), "--boxes", str(boxes), "--out", str(tmp_path / "eval"),
                 "--method", "stain", "--quiet"])
    assert code == 1  # the broken file is reported, the good one scored
    report = json.loads((tmp_path / "eval" / "segmentation_metrics.json").read_text())
    assert report["images"] == 1 and report["precision"] == 1.0 and report["recall"] == 1.0
    assert report["mean_iou"] > 0.5 and any("broken.jpg" in e for e in report["errors"])
    again = main(["evaluate-segmentation", str(images), "--boxes", str(boxes), "--out", str(tmp_path / "eval"),
                  "--method", "stain", "--quiet"])
    assert again == 2  # never overwrites without --overwrite
