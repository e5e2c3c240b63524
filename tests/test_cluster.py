"""Many images on a dask.distributed LocalCluster (``analyze --workers N`` / ``--scheduler``, ``core.cluster``): the
same result folders and summary as one process, a corrupt image or a failing task costing only its rows."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pandas as pd
import pytest
from cli_run import run

from napari_leukemia.core import drain
from napari_leukemia.core.batch import analyze_images
from napari_leukemia.core.config import AnalysisConfig, SegmentConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    from napari_leukemia.core.cluster import close_client, start_client

    client = start_client(workers=2)
    yield client
    close_client(client)


@pytest.fixture(scope="module")
def images(field_folder) -> list[Path]:
    """Real fields: the two bundled samples, four DeepAPL fields, and a file that is not an image."""
    return sorted(field_folder.iterdir())


def summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def same_results(a: Path, b: Path) -> None:
    assert summary(a) == summary(b)
    for row in summary(a):
        if row["status"] == "ok":
            pd.testing.assert_frame_equal(pd.read_csv(a / row["stem"] / "cells.csv"),
                                          pd.read_csv(b / row["stem"] / "cells.csv"))


def test_cli_on_a_cluster_equals_one_process(tmp_path, images, client, classifier_path):
    common = ["--classifier", classifier_path, "--no-gradcam", "--device", "cpu", "--quiet"]
    code, _, err = run("analyze", *images, "--out", tmp_path / "one", *common)
    assert code == 1, err  # the broken file fails; the others do not
    code, _, err = run("analyze", *images, "--out", tmp_path / "many", *common,
                       "--scheduler", client.scheduler.address)
    assert code == 1, err
    rows = summary(tmp_path / "many")
    assert [r["status"] for r in rows] == ["failed" if p.name == "broken.jpg" else "ok" for p in images]
    assert "broken.jpg" in next(r["error"] for r in rows if r["status"] == "failed")
    assert sum(int(r["leukocytes"]) for r in rows if r["status"] == "ok") >= 5
    same_results(tmp_path / "one", tmp_path / "many")


def test_single_cell_images_on_a_cluster_equal_one_process(tmp_path, images, client, classifier, segmenter_path):
    from napari_leukemia.core.segment import load_segmenter

    cells = [p for p in images if p.name != "broken.jpg" and "bccd" not in p.name]
    config = AnalysisConfig(device="cpu", gradcam=False, single_cell=True, batch_size=2)
    segmenter = load_segmenter(segmenter_path, "cpu")
    drain(analyze_images(cells, tmp_path / "one", classifier=classifier, segmenter=segmenter, config=config))
    many = drain(analyze_images(cells, tmp_path / "many", classifier=classifier, segmenter=segmenter, config=config,
                                client=client))
    assert [r["status"] for r in many["rows"]] == ["ok"] * len(cells)
    same_results(tmp_path / "one", tmp_path / "many")
    assert [r["image"] for r in many["rows"]] == [str(p) for p in cells]


def test_a_task_that_keeps_failing_costs_only_its_rows(tmp_path, images, client, classifier_path):
    from napari_leukemia.core.model import load_classifier

    copy = tmp_path / "classifier.safetensors"
    shutil.copy(classifier_path, copy)
    classifier = load_classifier(copy, "cpu")
    copy.write_bytes(b"damaged after loading")  # the workers load it from the file, and fail
    config = AnalysisConfig(device="cpu", gradcam=False, segment=SegmentConfig(method="stain"))
    result = drain(analyze_images(images[:2], tmp_path / "out", classifier=classifier, config=config, client=client))
    assert [r["status"] for r in result["rows"]] == ["failed", "failed"]
    assert all("not analysed on the cluster" in r["error"] and str(copy) in r["error"] for r in result["rows"])
    assert len(summary(tmp_path / "out")) == 2


def test_in_memory_models_are_refused_with_a_reason(tmp_path, images, client, classifier):
    import dataclasses

    in_memory = dataclasses.replace(classifier, path="")
    with pytest.raises(ValueError, match="not loaded from a file"):
        drain(analyze_images(images[:1], tmp_path / "out", classifier=in_memory,
                             config=AnalysisConfig(device="cpu", gradcam=False), client=client))


def test_the_model_files_are_checked_before_a_cluster_starts(tmp_path, images, classifier_path):
    """On a cluster the workers load the models; the main process checks their files (metadata and weights) first,
    so that a damaged one is refused at once, by name, and not in every image's row."""
    truncated = tmp_path / "classifier.safetensors"
    truncated.write_bytes(Path(classifier_path).read_bytes()[: 100_000])
    code, _, err = run("analyze", images[0], "--out", tmp_path / "out", "--classifier", truncated, "--workers", "1",
                       "--quiet")
    assert code == 2 and "cannot load the classifier" in err and str(truncated) in err
    assert not (tmp_path / "out" / "summary.csv").exists()
    from napari_leukemia.core.cluster import checked_model_file

    assert checked_model_file(None, "classifier").endswith(".safetensors")
    assert checked_model_file(classifier_path, "classifier") == str(Path(classifier_path).resolve())
