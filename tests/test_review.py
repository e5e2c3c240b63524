"""core.review: review order, calls, re-classifying edited cells, saved reviews, training-set export."""

import json
from dataclasses import replace

import numpy as np
import pytest

from napari_leukemia.core import review as rv
from napari_leukemia.core import training_set as ts
from napari_leukemia.core.blast_count import blast_percentage
from napari_leukemia.core.config import AnalysisConfig
from napari_leukemia.core.pipeline import analyze_smear


def disc(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


@pytest.fixture(scope="session")
def analysed(bccd_image, hand_cells, classifier):
    return analyze_smear(bccd_image, labels=hand_cells, classifier=classifier,
                         config=AnalysisConfig(device="cpu", gradcam=False), name="smear")


def test_review_order_is_most_uncertain_first_with_filters(analysed, classifier):
    cells, classes, leukemic = analysed.cells, classifier.info.classes, classifier.info.leukemic
    order = rv.review_order(cells, classes, leukemic)
    expected = cells["label"].to_numpy()[np.argsort(np.abs(cells["p_leukemic"].to_numpy() - 0.5), kind="stable")]
    assert list(order) == list(expected) and len(order) == 4
    normal = rv.review_order(cells, classes, leukemic, call="normal")
    assert set(normal) == set(cells.loc[cells["predicted_class"] == "normal", "label"])
    done = rv.annotate(cells, int(order[0]), "leukemic", classes=classes)
    assert list(rv.review_order(done, classes, leukemic, unreviewed=True)) == list(order[1:])
    assert int(order[0]) in rv.review_order(done, classes, leukemic, call="leukemic")


def test_reviewed_summary_counts_calls_over_predictions(analysed, classifier):
    cells, classes, leukemic = analysed.cells, classifier.info.classes, classifier.info.leukemic
    before = rv.reviewed_summary(cells, leukemic)
    k = int(cells["leukemic"].sum())
    assert before == {"leukocytes": 4, "leukemic": k, "called_by_hand": 0, "excluded": 0,
                      "leukemic_fraction": cells["leukemic"].mean(), **blast_percentage(k, 4)}
    assert before["blast_pct"] == 25 * k and before["too_few_cells"]  # four cells cannot tell 20% from 10%
    normal = cells.loc[~cells["leukemic"], "label"].to_numpy()
    done = rv.annotate(cells, int(normal[0]), "leukemic", classes=classes)
    done = rv.annotate(done, int(normal[1]), rv.EXCLUDE, classes=classes)
    after = rv.reviewed_summary(done, leukemic)
    assert (after["leukocytes"], after["leukemic"]) == (3, before["leukemic"] + 1)
    assert (after["called_by_hand"], after["excluded"]) == (1, 1)


def test_three_class_uncertainty_is_one_minus_the_top_probability():
    import pandas as pd

    cells = pd.DataFrame({"label": [1, 2, 3], "p_normal": [0.4, 0.9, 0.34], "p_blast": [0.35, 0.05, 0.33],
                          "p_promyelocyte": [0.25, 0.05, 0.33]})
    u = rv.review_uncertainty(cells, ["normal", "blast", "promyelocyte"], ["blast", "promyelocyte"])
    assert np.allclose(u, [0.6, 0.1, 0.66])


def test_annotate_records_the_call_who_and_when(analysed, classifier):
    from datetime import datetime

    classes = classifier.info.classes
    cells = rv.annotate(analysed.cells, 2, rv.EXCLUDE, classes=classes, who="alice")
    row = cells.set_index("label").loc[2]
    assert (row["annotation"], row["annotated_by"]) == ("exclude", "alice")
    assert datetime.fromisoformat(row["annotated_at"]).tzinfo is not None
    assert (cells.set_index("label").drop(index=2)["annotation"] == "").all()
    assert list(rv.calls(cells)) == [c if i != 2 else "exclude" for i, c in zip(cells["label"], cells["predicted_class"])]
    cleared = rv.annotate(cells, 2, "", classes=classes)
    assert (cleared[list(rv.ANNOTATION_COLUMNS)] == "").all().all()
    with pytest.raises(ValueError, match="not a class"):
        rv.annotate(cells, 2, "monocyte", classes=classes)
    with pytest.raises(KeyError, match="cell 99"):
        rv.annotate(cells, 99, "normal", classes=classes)


def test_update_reclassifies_only_edited_cells_and_keeps_calls(analysed, bccd_image, classifier):
    classes = classifier.info.classes
    cells = rv.annotate(rv.annotate(analysed.cells, 1, "leukemic", classes=classes, who="a"), 3, "normal",
                        classes=classes, who="b")
    labels = analysed.labels.copy()
    labels[labels == 4] = 0  # erase a cell
    labels[disc(labels.shape, 240, 330, 30) & (labels == 0)] = 7  # paint a new one
    grow = labels[90:110, 70:90]
    grow[grow == 0] = 2  # and enlarge another
    assert [list(a) for a in rv.changed_cells(labels, cells)] == [[2, 7], [4]]
    update = rv.update_cells(bccd_image, labels, cells, classifier)
    assert list(update.changed) == [2, 7] and list(update.removed) == [4]
    new = update.cells.set_index("label")
    assert list(new.index) == [1, 2, 3, 7]
    old = cells.set_index("label")
    for i in (1, 3):  # untouched rows are kept as they were, calls included
        assert new.loc[i].equals(old.loc[i])
    assert new.loc[2, "area"] > old.loc[2, "area"] and new.loc[7, "annotation"] == ""
    # the re-classified rows are what a full classification of the edited cells gives
    full = analyze_smear(bccd_image, labels=labels, classifier=classifier, config=AnalysisConfig(device="cpu", gradcam=False))
    ref = full.cells.set_index("label")
    for i in (2, 7):
        assert ref.loc[i, "area"] == new.loc[i, "area"]
        assert ref.loc[i, "p_leukemic"] == pytest.approx(new.loc[i, "p_leukemic"], abs=2e-3)
    assert rv.changed_cells(labels, update.cells)[0].size == 0


def test_save_load_round_trip_and_no_silent_overwrite(analysed, bccd_image, classifier, tmp_path):
    classes = list(classifier.info.classes)
    cells = rv.annotate(analysed.cells, 3, "leukemic", classes=classes, who="carol")
    info = {"image": "smear", "image_sha256": rv.image_sha256(bccd_image), "classes": classes,
            "leukemic_classes": list(classifier.info.leukemic), "classifier": analysed.summary["classifier"]}
    path = rv.save_review(rv.review_path(tmp_path / "smear.jpg"), rv.Review(analysed.labels, cells, info))
    assert path == tmp_path / "smear.review" and sorted(p.name for p in path.iterdir()) == sorted(
        [rv.LABELS_FILE, rv.CELLS_FILE, rv.INFO_FILE])
    back = rv.load_review(path)
    assert np.array_equal(back.labels, analysed.labels) and back.labels.dtype == np.int32
    assert list(back.cells["annotation"]) == list(cells["annotation"]) and back.cells.set_index("label").loc[
        3, "annotated_by"] == "carol"
    assert np.allclose(back.cells["p_leukemic"], cells["p_leukemic"], rtol=0, atol=1e-12)
    assert back.info["image_sha256"] == info["image_sha256"] and back.info["annotated"] == 1
    assert rv.source_problem(back.info, bccd_image) == ""
    assert "differs" in rv.source_problem(back.info, bccd_image[:, ::-1])
    assert "not open" in rv.source_problem(back.info, None)
    assert rv.changed_cells(back.labels, back.cells)[0].size == 0  # geometry survives the CSV
    before = (path / rv.CELLS_FILE).read_bytes()
    with pytest.raises(FileExistsError, match="smear.review exists"):
        rv.save_review(path, rv.Review(analysed.labels, analysed.cells, info))
    assert (path / rv.CELLS_FILE).read_bytes() == before
    rv.save_review(path, rv.Review(analysed.labels, analysed.cells, info), overwrite=True)
    assert (rv.load_review(path).cells["annotation"] == "").all()
    foreign = tmp_path / "mine.review"
    foreign.mkdir()
    with pytest.raises(FileExistsError, match="not a napari-leukemia review"):
        rv.save_review(foreign, rv.Review(analysed.labels, cells, info), overwrite=True)


def _damage(path, what):
    import tifffile

    if what == "json":
        (path / rv.INFO_FILE).write_text('{"format": "napari-leukemia-review", "classes": [')
    elif what == "format":
        (path / rv.INFO_FILE).write_text(json.dumps({"format": "something else"}))
    elif what == "float labels":
        tifffile.imwrite(path / rv.LABELS_FILE, np.zeros((480, 640), np.float32))
    elif what == "3D labels":
        tifffile.imwrite(path / rv.LABELS_FILE, np.zeros((2, 480, 640), np.int32))
    elif what == "shape":
        tifffile.imwrite(path / rv.LABELS_FILE, np.zeros((48, 64), np.int32))
    elif what == "tiff":
        (path / rv.LABELS_FILE).write_bytes(b"II*\x00garbage")
    elif what == "column":
        text = (path / rv.CELLS_FILE).read_text().splitlines()
        (path / rv.CELLS_FILE).write_text("\n".join(line.replace("p_leukemic", "p_x", 1) for line in text))
    elif what == "class":
        (path / rv.CELLS_FILE).write_text((path / rv.CELLS_FILE).read_text().replace(",normal,", ",monocyte,"))
    elif what == "missing":
        (path / rv.CELLS_FILE).unlink()


@pytest.mark.parametrize("what, file, message", [
    ("json", rv.INFO_FILE, "not valid JSON"),
    ("format", rv.INFO_FILE, "not a napari-leukemia-review file"),
    ("float labels", rv.LABELS_FILE, "non-negative integer labels"),
    ("3D labels", rv.LABELS_FILE, "2D image"),
    ("shape", rv.LABELS_FILE, "differs from the image's"),
    ("tiff", rv.LABELS_FILE, "cannot be read"),
    ("column", rv.CELLS_FILE, "missing columns \\['p_leukemic'\\]"),
    ("class", rv.CELLS_FILE, "monocyte"),
    ("missing", rv.CELLS_FILE, "is missing"),
])
def test_damaged_reviews_are_refused_naming_the_file(analysed, classifier, tmp_path, what, file, message):
    info = {"image": "smear", "classes": list(classifier.info.classes), "leukemic_classes": ["leukemic"]}
    path = rv.save_review(tmp_path / "s.review", rv.Review(analysed.labels, analysed.cells, info))
    _damage(path, what)
    with pytest.raises(rv.ReviewError, match=message) as err:
        rv.load_review(path)
    assert file in str(err.value)


def test_export_reads_back_as_a_single_cell_training_set(analysed, bccd_image, classifier, tmp_path):
    from napari_leukemia.core.datasets import crops_for, read_dataset
    from napari_leukemia.core.preprocess import crop_cells

    classes, crop = classifier.info.classes, classifier.info.crop
    predicted = analysed.cells.set_index("label")["predicted_class"].astype(str)
    other = {c: next(k for k in classes if k != c) for c in classes}
    cells = rv.annotate(analysed.cells, 1, other[predicted[1]], classes=classes)  # a correction
    cells = rv.annotate(cells, 2, predicted[2], classes=classes)  # a confirmation
    cells = rv.annotate(cells, 3, rv.EXCLUDE, classes=classes)
    out = tmp_path / "dataset"
    report = ts.export_training_set(out, bccd_image, analysed.labels, cells, crop, source_image="/data/smear 1.jpg",
                                    include_confirmed=False)
    assert (report.added, report.replaced) == (1, 0)
    samples = read_dataset(out / ts.DATASET_CSV)
    assert [(s.label, s.group) for s in samples] == [(other[predicted[1]], "smear 1")]
    assert samples[0].path.is_file() and samples[0].path.parent == out / "crops"
    report = ts.export_training_set(out, bccd_image, analysed.labels, cells, crop, source_image="/data/smear 1.jpg",
                                    group="patient-7")
    assert (report.added, report.replaced) == (1, 1)  # the corrected cell replaced, the confirmed one added
    samples = read_dataset(out / ts.DATASET_CSV)
    assert sorted(s.label for s in samples) == sorted([other[predicted[1]], predicted[2]])
    assert {s.group for s in samples} == {"patient-7"}
    rows = (out / ts.DATASET_CSV).read_text().splitlines()
    assert rows[0] == ",".join(ts.DATASET_COLUMNS) and len(rows) == 3
    assert len(list((out / "crops").iterdir())) == 2
    # the crops are the classifier's input with its context margin: single-cell training cuts them as inference does
    assert {s.margin for s in samples} == {crop.margin}
    images, kept, skipped = crops_for(samples, crop, single_cells=True)
    assert not skipped and images.shape == (2, crop.size, crop.size, 3)
    ids = [int(r.split(",")[-2]) for r in rows[1:]]
    reference = crop_cells(bccd_image, analysed.labels, crop, ids=ids).images
    assert np.array_equal(images, reference)
    padded = crops_for([replace(s, margin=0.0) for s in samples], crop, single_cells=True)[0]  # margin taken as cell
    assert np.abs(padded.astype(int) - reference.astype(int)).mean() > 10
    # a cell excluded later leaves the training set
    cells = rv.annotate(cells, 2, rv.EXCLUDE, classes=classes)
    report = ts.export_training_set(out, bccd_image, analysed.labels, cells, crop, source_image="/data/smear 1.jpg")
    assert report.removed == 1 and len(read_dataset(out / ts.DATASET_CSV)) == 1
    assert len(list((out / "crops").iterdir())) == 1


def test_fixed_window_export_reads_back_unchanged(analysed, bccd_image, classifier, tmp_path):
    from napari_leukemia.core.datasets import crops_for, read_dataset
    from napari_leukemia.core.preprocess import crop_cells, measure_red_cells

    crop = replace(classifier.info.crop, window=3.5)
    cells = rv.annotate(analysed.cells, 1, "normal", classes=classifier.info.classes)
    ts.export_training_set(tmp_path, bccd_image, analysed.labels, cells, crop, source_image="smear.jpg")
    images, _, skipped = crops_for(read_dataset(tmp_path / ts.DATASET_CSV), crop, single_cells=True)
    reference = crop_cells(bccd_image, analysed.labels, crop, ids=[1], red_cell_px=measure_red_cells(bccd_image))
    assert not skipped and np.array_equal(images, reference.images)
