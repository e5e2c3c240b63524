import shutil
from collections import Counter

import numpy as np
import pytest

from napari_leukemia.core.classes import default_leukemic
from napari_leukemia.core.config import CropConfig, SegmentConfig
from napari_leukemia.core.datasets import DEEPAPL_CELL_TYPES, crops_for, read_dataset, split_by_group
from napari_leukemia.samples import sample_path


@pytest.fixture
def folder_dataset(tmp_path):
    for label, name in (("normal", "bccd"), ("leukemic", "deepapl")):
        (tmp_path / label).mkdir()
        for k in range(3):
            shutil.copy(sample_path(name), tmp_path / label / f"{name}_{k}.jpg")
    (tmp_path / "leukemic" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return tmp_path


def test_folder_and_csv_datasets(folder_dataset):
    samples = read_dataset(folder_dataset)
    assert {s.label for s in samples} == {"normal", "leukemic"} and len(samples) == 7
    table = folder_dataset / "cells.csv"
    table.write_text("path,label,group\nnormal/bccd_0.jpg,normal,p1\nleukemic/deepapl_0.jpg,leukemic,p2\n")
    rows = read_dataset(table)
    assert [(r.label, r.group) for r in rows] == [("normal", "p1"), ("leukemic", "p2")]
    assert rows[0].path == folder_dataset / "normal" / "bccd_0.jpg"
    (folder_dataset / "bad.csv").write_text("file,class\na.jpg,x\n")
    with pytest.raises(ValueError, match="bad.csv: needs columns path,label"):
        read_dataset(folder_dataset / "bad.csv")


def test_splits_are_by_group_and_keep_a_given_test_split():
    from napari_leukemia.core.datasets import Sample

    samples = [Sample(f"{g}_{i}.jpg", "x", f"patient{g}") for g in range(20) for i in range(5)]
    splits = split_by_group(samples, seed=1)
    groups = {k: {s.group for s in v} for k, v in splits.items()}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert (len(groups["train"]), len(groups["val"]), len(groups["test"])) == (14, 3, 3)
    given = samples + [Sample("t.jpg", "x", "patientT", "test")]
    splits = split_by_group(given)
    assert [s.group for s in splits["test"]] == ["patientT"]


def test_deepapl_manifest_labels(shared_data):
    samples = read_dataset(shared_data / "deepapl" / "manifest.csv")
    assert {s.label for s in samples} == {"leukemic", "normal"}
    assert {s.split for s in samples} == {"train", "test"} and len(samples) == 10628 - 52
    by_class = read_dataset(shared_data / "deepapl" / "manifest.csv", deepapl_labels="cell_class")
    assert "promyelocyte" in {s.label for s in by_class}
    by_type = read_dataset(shared_data / "deepapl" / "manifest.csv", deepapl_labels="cell_type")
    assert [s.path for s in by_type] == [s.path for s in by_class]
    assert {s.label for s in by_type} == set(DEEPAPL_CELL_TYPES.values())
    train = Counter(s.label for s in by_type if s.split == "train")
    assert min(train.values()) >= 80, train  # small classes are grouped
    binary = {s.path: s.label for s in samples}
    leukemic_types = {s.label for s in by_type if binary[s.path] == "leukemic"}
    assert leukemic_types == set(default_leukemic(sorted(train))) == {"blast", "promyelocyte_or_promonocyte"}


def test_crops_skip_unreadable_files_and_name_them(folder_dataset):
    samples = [s for s in read_dataset(folder_dataset) if s.label == "leukemic"]
    images, kept, skipped = crops_for(samples, CropConfig(size=32), segment=SegmentConfig(method="stain"))
    assert images.shape == (3, 32, 32, 3) and len(kept) == 3
    assert len(skipped) == 1 and "broken.jpg" in skipped[0]
    good = [s for s in samples if s.path.name.startswith("deepapl")][:1]
    single, _, _ = crops_for(good, CropConfig(size=32, margin=0), single_cells=True)
    assert single.shape == (1, 32, 32, 3)
    assert not np.array_equal(single[0], images[0])


def test_csv_margin_column_is_read_and_checked(tmp_path):
    (tmp_path / "a.csv").write_text("path,label,margin\nx.png,normal,0.25\ny.png,leukemic,\n")
    assert [s.margin for s in read_dataset(tmp_path / "a.csv")] == [0.25, 0.0]
    (tmp_path / "r.csv").write_text("path,label,red_cell_px\nx.png,normal,64\ny.png,leukemic,\n")
    assert [s.red_cell_px for s in read_dataset(tmp_path / "r.csv")] == [64.0, None]
    (tmp_path / "r.csv").write_text("path,label,red_cell_px\nx.png,normal,-3\n")
    with pytest.raises(ValueError, match="line 2: red_cell_px '-3'"):
        read_dataset(tmp_path / "r.csv")
    (tmp_path / "b.csv").write_text("path,label,margin\nx.png,normal,wide\n")
    with pytest.raises(ValueError, match="b.csv: line 2: margin 'wide'"):
        read_dataset(tmp_path / "b.csv")


def test_csv_saved_by_a_spreadsheet_as_utf8_is_read(tmp_path):
    """Spreadsheets' "CSV UTF-8" starts with a byte-order mark; it is not part of the first column's name."""
    (tmp_path / "a.csv").write_text("path,label,group\nleucémie/x.png,leukemic,p1\ny.png,normal,p2\n", encoding="utf-8-sig")
    samples = read_dataset(tmp_path / "a.csv")
    assert [(s.path.name, s.label, s.group) for s in samples] == [("x.png", "leukemic", "p1"), ("y.png", "normal", "p2")]
    assert samples[0].path == tmp_path / "leucémie" / "x.png"
