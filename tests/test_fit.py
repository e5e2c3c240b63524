"""Training and evaluating classifiers from a dataset: ``napari-leukemia train`` / ``evaluate`` over ``core.fit``.

Tiny real runs: 32 px crops of real cells, two epochs, random initialisation.
"""

from __future__ import annotations

import json
import shutil
import signal
from dataclasses import replace

import numpy as np
import pytest
from cli_run import run
from PIL import Image

from napari_leukemia.core.classes import default_leukemic
from napari_leukemia.core.datasets import read_dataset, split_by_group
from napari_leukemia.core.fit import FINAL_NAME, fit_classifier
from napari_leukemia.core.model import load_classifier

FAST = ["--size", "32", "--batch-size", "4", "--imagenet", "none", "--single-cells", "--device", "cpu", "--quiet"]
RUN_FILES = ["best.safetensors", "classifier.safetensors", "curves.png", "history.json", "last.safetensors",
             "last_state.pt", "run.json"]
METRICS = ["accuracy", "balanced_accuracy", "precision", "recall", "f1", "specificity", "roc_auc",
           "sensitivity_at_95_specificity", "ece", "confusion_matrix"]


def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst


def is_png(path) -> bool:
    with Image.open(path) as im:
        return im.format == "PNG" and min(im.size) > 50


@pytest.fixture(scope="module")
def trained(cell_dataset, tmp_path_factory):
    """One CLI training run on the cell dataset plus an unreadable file: (dataset, out, code, stdout, stderr)."""
    data = copy_dataset(cell_dataset, tmp_path_factory.mktemp("data") / "cells")
    (data / "leukemic" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path_factory.mktemp("run") / "run"
    code, stdout, stderr = run("train", data, "--out", out, "--epochs", 2, *FAST)
    return data, out, code, stdout, stderr


def test_train_writes_checkpoints_curves_and_a_calibrated_classifier(trained):
    data, out, code, stdout, stderr = trained
    assert code == 1, stderr  # trained, but a file was skipped: named, exit 1
    assert "skipped:" in stderr and str(data / "leukemic" / "broken.png") in stderr
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES
    assert "epoch   1/2" in stdout and "epoch   2/2" in stdout and "Research use only" in stdout
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert is_png(out / "curves.png")
    clf = load_classifier(out / FINAL_NAME, "cpu")
    assert clf.info.classes == ("normal", "leukemic") and clf.info.leukemic == ("leukemic",)
    assert clf.info.crop.size == 32 and clf.info.temperature > 0
    prov = clf.info.provenance
    assert prov["command"].startswith("napari-leukemia train") and "--epochs 2" in prov["command"]
    splits = split_by_group(read_dataset(data), seed=0)
    usable = {name: [x for x in part if x.path.name != "broken.png"] for name, part in splits.items()}
    for name in ("train", "val"):
        assert prov["data"]["cells"][name] == {c: sum(x.label == c for x in usable[name]) for c in ("normal", "leukemic")}
    assert prov["data"]["skipped"] == 1 and prov["epochs_run"] == 2 and prov["seconds"] > 0 < prov["train_cpu_seconds"]
    assert prov["train_config"]["epochs"] == 2 and prov["hardware"] and "cores" in prov["hardware"]
    assert set(METRICS) <= set(prov["val_metrics"]) and prov["val_metrics"]["n"] == sum(prov["data"]["cells"]["val"].values())


def test_evaluate_writes_metrics_and_plots(trained, tmp_path):
    data, out, *_ = trained
    ev = tmp_path / "eval"
    code, stdout, stderr = run("evaluate", data, "--classifier", out / FINAL_NAME, "--out", ev, "--split", "all",
                               "--single-cells", "--device", "cpu", "--quiet")
    assert code == 1 and "broken.png" in stderr  # the unreadable file is named again
    assert sorted(p.name for p in ev.iterdir()) == ["confusion.png", "metrics.json", "roc.png"]
    assert is_png(ev / "roc.png") and is_png(ev / "confusion.png")
    m = json.loads((ev / "metrics.json").read_text())
    assert m["n_cells"] == 12 and m["split"] == "all" and m["split_matches_training"] is True
    overall = m["overall"]
    assert set(METRICS) <= set(overall)
    assert np.sum(overall["confusion_matrix"]) == 12 and 0 <= overall["ece"] <= 1
    assert 0 <= overall["roc_auc"] <= 1 and overall["balanced_accuracy"] == pytest.approx(
        (overall["recall"] + overall["specificity"]) / 2)
    per_class = m["per_class"]
    assert [c["support"] for c in per_class["per_class"].values()] == [6, 6]
    assert "macro_f1" in per_class and np.sum(per_class["confusion_matrix"]) == 12
    groups = m["per_group"]
    assert len(groups) == 12 and all(g["n"] == 1 for g in groups.values())
    g = groups["leukemic/leukemic_0"]
    assert g["labels"] == {"leukemic": 1} and g["called_leukemic"] in (0.0, 1.0)
    assert g["accuracy"] == float(g["called_leukemic"] == 1.0) and 0 <= g["mean_p_leukemic"] <= 1
    assert "accuracy" in stdout and "ROC-AUC" in stdout
    # never overwritten without --overwrite
    before = (ev / "metrics.json").read_bytes()
    code, _, stderr = run("evaluate", data, "--classifier", out / FINAL_NAME, "--out", ev, "--single-cells", "--quiet")
    assert code == 2 and "--overwrite" in stderr and (ev / "metrics.json").read_bytes() == before


def test_labels_outside_the_class_list_are_scored_leukaemic_vs_not(trained, cell_dataset, tmp_path):
    _, out, *_ = trained
    data = copy_dataset(cell_dataset, tmp_path / "cells")  # cell classes, like DeepAPL's --labels cell_class
    (data / "leukemic").rename(data / "blast")
    (data / "normal").rename(data / "lymphocyte")
    code, _, stderr = run("evaluate", data, "--classifier", out / FINAL_NAME, "--out", tmp_path / "eval",
                          "--split", "all", "--single-cells", "--device", "cpu", "--quiet")
    assert code == 0, stderr
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["per_class"] is None and m["truth_leukemic_labels"] == ["blast"]
    assert sorted(m["per_label"]) == ["blast", "lymphocyte"] and m["per_label"]["blast"]["n"] == 6
    assert "auc_vs_leukemic" in m["per_label"]["lymphocyte"] and "auc_vs_leukemic" not in m["per_label"]["blast"]
    assert "hard_pair" not in m  # no immature granulocytes labelled
    assert m["overall"]["confusion_matrix"][1][0] + m["overall"]["confusion_matrix"][1][1] == 6
    assert is_png(tmp_path / "eval" / "confusion.png")
    # immature granulocytes: the hard pair is scored apart
    (data / "lymphocyte").rename(data / "metamyelocyte")
    code, stdout, stderr = run("evaluate", data, "--classifier", out / FINAL_NAME, "--out", tmp_path / "eval_hard",
                               "--split", "all", "--single-cells", "--device", "cpu", "--quiet")
    assert code == 0, stderr
    m = json.loads((tmp_path / "eval_hard" / "metrics.json").read_text())
    assert m["hard_pair"]["normal_labels"] == ["metamyelocyte"] and m["hard_pair"]["n_leukemic"] == 6
    assert m["hard_pair"]["roc_auc"] == m["overall"]["roc_auc"] == m["per_label"]["metamyelocyte"]["auc_vs_leukemic"]
    assert "leukaemic cells against metamyelocyte" in stdout
    # no label looks leukaemic: name them
    (data / "blast").rename(data / "myelocyte")
    code, _, stderr = run("evaluate", data, "--classifier", out / FINAL_NAME, "--out", tmp_path / "eval2",
                          "--single-cells", "--quiet")
    assert code == 2 and "--leukemic-classes" in stderr


def test_a_finished_run_is_not_overwritten(trained):
    data, out, *_ = trained
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _, stderr = run("train", data, "--out", out, "--epochs", 2, *FAST)
    assert code == 2 and "classifier.safetensors exists" in stderr and "--overwrite" in stderr
    code, _, stderr = run("train", data, "--out", out, "--epochs", 2, "--resume", *FAST)
    assert code == 2 and "--overwrite" in stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_diverging_run_is_an_error_that_names_the_cure(cell_dataset, tmp_path):
    code, _, stderr = run("train", cell_dataset, "--out", tmp_path / "run", "--lr", "1e30", "--epochs", 2, *FAST)
    assert code == 1 and "error: the training loss became" in stderr and "lower the learning rate" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "run" / "classifier.safetensors").exists()


@pytest.mark.parametrize("problem, message", [
    ("one image", "class 'normal' has a single image"),
    ("empty class", "class folder(s) normal hold no images"),
    ("one class", "one class (leukemic)"),
])
def test_unusable_datasets_are_refused(cell_dataset, tmp_path, problem, message):
    data = copy_dataset(cell_dataset, tmp_path / "cells")
    normal = sorted((data / "normal").iterdir())
    for path in normal[1:] if problem == "one image" else normal:
        path.unlink()
    if problem == "one class":
        (data / "normal").rmdir()
    code, _, stderr = run("train", data, "--out", tmp_path / "run", *FAST)
    assert code == 2 and message in stderr
    if problem == "one image":
        assert "normal_0.png" in stderr
    assert not (tmp_path / "run").exists()


def test_fine_tuning_keeps_the_class_list(trained, cell_dataset, tmp_path):
    _, out, *_ = trained
    # another class list: refused before anything is written
    other = copy_dataset(cell_dataset, tmp_path / "other")
    (other / "leukemic").rename(other / "blast")
    code, _, stderr = run("train", other, "--out", tmp_path / "refused", "--init", out / FINAL_NAME, *FAST)
    assert code == 2 and "trained for classes ['normal', 'leukemic']" in stderr and "['blast', 'normal']" in stderr
    assert not (tmp_path / "refused").exists()
    # the same class list: fine-tuned at the checkpoint's crop size
    code, stdout, stderr = run("train", cell_dataset, "--out", tmp_path / "tuned", "--init", out / FINAL_NAME,
                               "--epochs", 1, *[a for a in FAST if a not in ("--size", "32")])
    assert code == 0, stderr
    assert "fine-tuned from" in stdout
    tuned = load_classifier(tmp_path / "tuned" / FINAL_NAME, "cpu")
    assert tuned.info.crop.size == 32 and tuned.info.provenance["init"].startswith("fine-tuned from")


def test_a_new_head_learns_another_class_list_on_the_same_features(trained, cell_dataset, tmp_path):
    import torch

    _, out, *_ = trained
    other = copy_dataset(cell_dataset, tmp_path / "other")
    (other / "leukemic").rename(other / "blast")
    (other / "normal").rename(other / "lymphocyte")
    code, stdout, stderr = run("train", other, "--out", tmp_path / "types", "--init", out / FINAL_NAME, "--new-head",
                               "--tune", "head", "--window", 3.5, "--mask-outside", "--margin", 0.1, "--epochs", 1,
                               *[a for a in FAST if a not in ("--size", "32")])
    assert code == 0, stderr
    types = load_classifier(tmp_path / "types" / FINAL_NAME, "cpu")
    start = load_classifier(out / FINAL_NAME, "cpu")
    assert types.info.classes == ("blast", "lymphocyte") and types.info.leukemic == ("blast",)
    assert "new head" in types.info.provenance["init"]
    # a fixed window, masked neighbours and a margin, kept in the checkpoint (analyses crop the same way)
    assert types.info.crop == replace(start.info.crop, window=3.5, mask_outside=True, margin=0.1)
    assert not start.info.crop.mask_outside and start.info.crop.margin == 0.25
    a, b = start.net.features.state_dict(), types.net.features.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # --tune head: the features are the checkpoint's
    code, _, stderr = run("train", other, "--out", tmp_path / "no_init", "--new-head", *FAST)
    assert code == 2 and "init" in stderr


def test_another_backbone_trains_and_fine_tunes_as_itself(cell_dataset, tmp_path):
    code, stdout, stderr = run("train", cell_dataset, "--out", tmp_path / "r18", "--arch", "resnet18", "--epochs", 1,
                               *FAST)
    assert code == 0, stderr
    r18 = load_classifier(tmp_path / "r18" / FINAL_NAME, "cpu")
    assert r18.info.architecture == "resnet18" and r18.info.provenance["train_config"]["arch"] == "resnet18"
    code, _, stderr = run("train", cell_dataset, "--out", tmp_path / "refused", "--init", tmp_path / "r18" / FINAL_NAME,
                          "--arch", "densenet201", "--epochs", 1, *FAST)
    assert code == 2 and "is a resnet18; it cannot continue as a densenet201" in stderr
    code, _, stderr = run("train", cell_dataset, "--out", tmp_path / "tuned", "--init", tmp_path / "r18" / FINAL_NAME,
                          "--epochs", 1, *FAST)
    assert code == 0, stderr
    assert load_classifier(tmp_path / "tuned" / FINAL_NAME, "cpu").info.architecture == "resnet18"


def test_ctrl_c_stops_cleanly_and_resume_finishes(cell_dataset, tmp_path, monkeypatch):
    from napari_leukemia.cli import training

    printed = training.print_training_event

    def interrupt_after_first_epoch(event):
        printed(event)
        if event.stage == "epoch" and event.done == 1 and not event.payload["stopped"]:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C sends; the run ends at its next step

    monkeypatch.setattr(training, "print_training_event", interrupt_after_first_epoch)
    handler = signal.getsignal(signal.SIGINT)
    out = tmp_path / "run"
    code, _, stderr = run("train", cell_dataset, "--out", out, "--epochs", 5, *FAST)
    assert code == 130 and "--resume" in stderr
    assert (out / "last.safetensors").is_file() and not (out / FINAL_NAME).exists()
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1]
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    monkeypatch.undo()
    code, _, stderr = run("train", cell_dataset, "--out", out, "--epochs", 2, "--resume", "--margin", 0.1, *FAST)
    assert code != 0 and "margin 0.25" in stderr and "margin 0.1" in stderr  # other crops: refused, named
    code, stdout, stderr = run("train", cell_dataset, "--out", out, "--epochs", 2, "--resume", *FAST)
    assert code == 0, stderr
    assert "epoch   2/2" in stdout and "epoch   1/2" not in stdout
    clf = load_classifier(out / FINAL_NAME, "cpu")
    assert clf.info.provenance["epochs_run"] == 2 and len(clf.info.provenance["commands"]) == 2


def test_csv_groups_are_split_by_group_and_evaluate_uses_the_held_out_ones(trained, cell_dataset, tmp_path):
    _, out, *_ = trained
    files = sorted(cell_dataset.rglob("*.png"))
    rows = ["path,label,group"] + [f"{f},{f.parent.name},patient{k % 6}" for k, f in enumerate(files)]
    table = tmp_path / "cells.csv"
    table.write_text("\n".join(rows) + "\n")
    samples = read_dataset(table)
    splits = split_by_group(samples, seed=0)
    groups = {name: {s.group for s in part} for name, part in splits.items()}
    assert groups["train"] and groups["val"] and groups["test"]
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert not (groups["val"] & groups["test"])
    assert sum(len(p) for p in splits.values()) == len(files)
    # training sees only train + val: its data report counts them, and the test groups stay aside
    run_gen = fit_classifier(table, tmp_path / "run", single_cells=True, size=32)
    data = next(e for e in run_gen if e.stage == "data").payload
    run_gen.close()
    assert sum(data["cells"]["test"].values()) == len(splits["test"]) and data["groups"]["test"] == len(groups["test"])
    # evaluate --split test scores exactly the held-out groups
    code, _, stderr = run("evaluate", table, "--classifier", out / FINAL_NAME, "--out", tmp_path / "eval",
                          "--single-cells", "--device", "cpu", "--quiet")
    assert code == 0, stderr
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(m["per_group"]) == groups["test"] and m["n_cells"] == len(splits["test"])
    # a group given in two splits is refused
    table.write_text("path,label,group,split\n" + f"{files[0]},leukemic,p1,test\n{files[1]},leukemic,p1,train\n")
    with pytest.raises(ValueError, match="group 'p1' is given in two splits"):
        split_by_group(read_dataset(table))


def test_crops_cache_is_reused_and_checked(cell_dataset, tmp_path):
    from napari_leukemia.core import drain
    from napari_leukemia.core.config import CropConfig
    from napari_leukemia.core.cropstore import iter_crops

    def crop(samples, size):
        events = []
        gen = iter_crops(samples, CropConfig(size=size), single_cells=True, cache=tmp_path / "crops.npz")
        return events, drain(gen, events.append)

    samples = read_dataset(cell_dataset)
    events, first = crop(samples[:5], 32)
    assert events[0].payload["cached"] == 0 and events[-1].done == 5 and (tmp_path / "crops.npz").is_file()
    events, again = crop(samples, 32)  # the first five are read back, the others cropped and added
    assert events[0].payload["cached"] == 5 and len(again.samples) == len(samples)
    assert np.abs(again.images[:5].astype(float) - first.images).mean() < 4  # stored as JPEG, quality 95
    assert crop(samples, 32)[0][0].payload["cached"] == len(samples)
    from napari_leukemia.core.cropstore import load_crops, save_crops

    images, table = load_crops(tmp_path / "crops.npz")
    del table["settings"]["crop"]["window"]  # made before fixed windows existed: the default, still valid
    save_crops(tmp_path / "crops.npz", images, table)
    assert crop(samples, 32)[0][0].payload["cached"] == len(samples)
    with pytest.raises(ValueError, match="crops.npz: these crops were made with other settings"):
        crop(samples, 48)


def test_crops_cache_refuses_crops_of_another_segmenter(deepapl_image, segmenter_path, tmp_path):
    """Crops cut around the cells one segmenter found are not reused for another (a new shipped segmenter)."""
    from PIL import Image
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from napari_leukemia.core import drain
    from napari_leukemia.core.config import CropConfig
    from napari_leukemia.core.cropstore import iter_crops, load_crops, save_crops
    from napari_leukemia.core.datasets import Sample

    Image.fromarray(deepapl_image).save(tmp_path / "field.png")
    samples = [Sample(str(tmp_path / "field.png"), "leukemic", "p1")]
    other = tmp_path / "other_segmenter.safetensors"  # the same weights, another provenance: another file
    with safe_open(str(segmenter_path), "pt") as f:
        meta = f.metadata()
    save_file(load_file(str(segmenter_path)), str(other), metadata={**meta, "provenance": json.dumps({"note": "other"})})

    def crop(segmenter):
        return drain(iter_crops(samples, CropConfig(size=32), segmenter=segmenter, cache=tmp_path / "crops.npz",
                                device="cpu"))

    assert len(crop(segmenter_path).samples) == 1
    assert len(crop(segmenter_path).samples) == 1  # read back
    with pytest.raises(ValueError, match=r"crops.npz: these crops were cut around cells found by "
                                         r"leukocyte_cellpose.safetensors@\w+, not by other_segmenter.safetensors@"):
        crop(other)
    images, table = load_crops(tmp_path / "crops.npz")
    del table["settings"]["segment"]["segmenter"]  # a cache made before caches recorded their segmenter
    save_crops(tmp_path / "crops.npz", images, table)
    with pytest.raises(ValueError, match="found by a segmenter it did not record, not by leukocyte_cellpose"):
        crop(segmenter_path)


def test_crops_cache_is_written_while_cropping(cell_dataset, tmp_path, monkeypatch):
    """A run killed in the middle of a long cropping keeps what it cropped (no ``finally`` runs on kill -9)."""
    from napari_leukemia.core import cropstore
    from napari_leukemia.core.config import CropConfig

    monkeypatch.setattr(cropstore, "CACHE_SAVE_EVERY", cropstore.CROP_CHUNK)
    samples = read_dataset(cell_dataset)
    gen = cropstore.iter_crops(samples, CropConfig(size=32), single_cells=True, cache=tmp_path / "crops.npz")
    next(gen), next(gen)  # the first chunk is cropped; the generator is left open, as a killed process leaves it
    images, table = cropstore.load_crops(tmp_path / "crops.npz")
    assert len(table["files"]) == cropstore.CROP_CHUNK == len(images)


def test_given_splits_are_kept_whole():
    from napari_leukemia.core.datasets import Sample

    samples = [Sample(f"{g}_{i}.png", "ab"[g % 2], f"p{g}") for g in range(10) for i in range(3)]
    samples += [Sample("t0.png", "a", "p0", "test")]  # one image of p0 is given as test: all of p0 is test
    splits = split_by_group(samples)
    assert {s.group for s in splits["test"]} == {"p0"} and len(splits["test"]) == 4
    # stratified by class: both classes reach train and val
    for name in ("train", "val"):
        assert {s.label for s in splits[name]} == {"a", "b"}
    given = [Sample(s.path, s.label, s.group, "val" if s.group == "p1" else "") for s in samples[:-1]]
    assert {s.group for s in split_by_group(given)["val"]} == {"p1"}
    assert not split_by_group(given)["test"]


def test_default_leukemic_classes():
    cell_classes = ["basophil", "blast_no_lineage_spec", "lymphocyte", "myelocyte", "promonocyte", "promyelocyte"]
    assert default_leukemic(cell_classes) == ("blast_no_lineage_spec", "promonocyte", "promyelocyte")
    assert default_leukemic(["normal", "leukemic"]) == ("leukemic",)
    assert default_leukemic(["ALL", "hem"]) == ("ALL",)
    assert default_leukemic(["non_leukaemic", "leukaemic"]) == ("leukaemic",)


def test_sampling_by_cell_class_trains_from_the_datasets_detail_and_refuses_a_dataset_without_one(cell_dataset,
                                                                                                  tmp_path):
    files = sorted(cell_dataset.rglob("*.png"))
    details = {"leukemic": "blast", "normal": "neutrophil"}
    rows = ["path,label,detail"] + [f"{f},{f.parent.name},{'myelocyte' if k % 3 == 0 else details[f.parent.name]}"
                                    for k, f in enumerate(files)]
    table = tmp_path / "cells.csv"
    table.write_text("\n".join(rows) + "\n")
    code, _, stderr = run("train", table, "--out", tmp_path / "run", "--epochs", 1, "--sampling", "cell_class", *FAST)
    assert code == 0, stderr
    clf = load_classifier(tmp_path / "run" / FINAL_NAME, "cpu")
    assert clf.info.provenance["train_config"]["sampling"] == "cell_class"
    # class folders give no finer class: refused by name before any cropping (no run files written)
    code, _, stderr = run("train", cell_dataset, "--out", tmp_path / "refused", "--sampling", "cell_class", *FAST)
    assert code == 2 and "sampling 'cell_class'" in stderr and "12 of 12 cells lack it" in stderr
    assert not (tmp_path / "refused").exists()


def test_train_feature_svm_is_carried_by_the_checkpoint_and_measured_in_validation(cell_dataset, tmp_path):
    """--feature-svm: the SVM on hand-made features of the training cells rides in the checkpoint; the validation
    figures and every later analysis are of its pool with the network."""
    from napari_leukemia.core import drain
    from napari_leukemia.core.cropstore import iter_crops
    from napari_leukemia.core.model import load_classifier
    from napari_leukemia.core.predict import classify_crops, network_part, p_leukemic, predict_logits, probabilities

    code, _, stderr = run("train", cell_dataset, "--out", tmp_path / "few", "--epochs", 1, "--feature-svm", *FAST)
    assert code == 2 and "needs at least 5 training cells of each class" in stderr
    assert not (tmp_path / "few" / "best.safetensors").exists()  # refused before any training
    cells = tmp_path / "cells"  # each cell three times (its own group each time): enough for the SVM's 5 folds
    for png in cell_dataset.glob("*/*.png"):
        (cells / png.parent.name).mkdir(parents=True, exist_ok=True)
        for k in range(3):
            shutil.copy(png, cells / png.parent.name / f"{png.stem}_{k}.png")
    cell_dataset = cells
    code, _, stderr = run("train", cell_dataset, "--out", tmp_path / "run", "--epochs", 1, "--arch", "small_cnn",
                          "--feature-svm", *FAST)
    assert code == 0, stderr
    clf = load_classifier(tmp_path / "run" / "classifier.safetensors", "cpu")
    assert clf.feature_svm is not None and clf.info.provenance["feature_svm"]["support_vectors"] >= 2
    crops = drain(iter_crops(read_dataset(cell_dataset), clf.info.crop, single_cells=True)).images
    both = p_leukemic(clf, classify_crops(clf, crops))
    network = p_leukemic(clf, probabilities(replace(clf, feature_svm=None), predict_logits(clf, crops)))
    opinion = clf.feature_svm.p_leukemic(crops)
    log_odds = lambda q: np.log(q) - np.log1p(-q)  # noqa: E731
    assert np.allclose(log_odds(both), (log_odds(network) + log_odds(opinion)) / 2, atol=1e-4)  # geometric pool
    assert np.allclose(network_part(both, opinion), network, atol=1e-5)  # the table's p_network
    assert not np.allclose(both, network, atol=1e-3)  # the SVM moves the call
    # fine-tuning keeps the SVM the starting checkpoint carries (refitted only with --feature-svm)
    code, _, stderr = run("train", cell_dataset, "--out", tmp_path / "tuned", "--epochs", 1, "--init",
                          tmp_path / "run" / "classifier.safetensors", *FAST)
    assert code == 0, stderr
    tuned = load_classifier(tmp_path / "tuned" / "classifier.safetensors", "cpu")
    assert np.array_equal(tuned.feature_svm.support_vectors, clf.feature_svm.support_vectors)
    assert tuned.info.provenance["feature_svm"] == "kept from the checkpoint this run started from"
    # a feature SVM gives one leukaemic probability: more than two classes are refused before any training
    three = tmp_path / "three"
    shutil.copytree(cell_dataset, three)
    shutil.copytree(three / "normal", three / "other")
    code, _, stderr = run("train", three, "--out", tmp_path / "run3", "--epochs", 1, "--feature-svm", *FAST)
    assert code == 2 and "needs two classes" in stderr and not (tmp_path / "run3" / "best.safetensors").exists()
