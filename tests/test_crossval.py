"""Cross-validation by patient (``napari-leukemia train --cv K``, ``core.crossval``): folds, resume, the report.

Tiny real runs: 32 px crops of real cells, one epoch, random initialisation.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from cli_run import run
from PIL import Image

from napari_leukemia.core.blast_count import wilson_interval
from napari_leukemia.core.crossval import patient_folds
from napari_leukemia.core.cv_report import cv_report, write_cv_report
from napari_leukemia.core.datasets import Sample, read_dataset

FAST = ["--size", "32", "--batch-size", "4", "--imagenet", "none", "--single-cells", "--device", "cpu", "--quiet"]


def write_patient_table(cell_dataset, folder: Path, copies: int = 1) -> Path:
    """Six patients: three with blasts (APL), three with normal cells (AML), two cells each, each cell ``copies``
    times (copied files: more cells a patient)."""
    rows = []
    for label, stratum, first in (("leukemic", "APL", 0), ("normal", "AML", 3)):
        for k, f in enumerate(sorted((cell_dataset / label).iterdir())):
            for copy in range(copies):
                path = f
                if copies > 1:
                    path = folder / "cells" / f"{f.stem}_{copy}.png"
                    path.parent.mkdir(exist_ok=True)
                    shutil.copy(f, path)
                rows.append({"path": str(path), "label": label, "group": f"p{first + k // 2}", "stratum": stratum})
    table = folder / "cells.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return table


@pytest.fixture
def patient_table(cell_dataset, tmp_path):
    """Six patients of two cells each: three with blasts (APL), three with normal cells (AML)."""
    return write_patient_table(cell_dataset, tmp_path)


def test_cv_trains_one_model_per_fold_scores_each_patient_once_and_resumes(patient_table, tmp_path):
    out = tmp_path / "cv"
    code, stdout, stderr = run("train", patient_table, "--cv", 3, "--out", out, "--epochs", 1, *FAST)
    assert code == 0, stderr
    assert "fold 3/3: training" in stdout and "per patient, blast-equivalent %" in stdout
    report = json.loads((out / "cv.json").read_text())
    assert report["k"] == 3 and report["n_cells"] == 12 and report["n_patients"] == 6
    assert [f["fold"] for f in report["per_fold"]] == [0, 1, 2] and all(f["patients"] == 2 for f in report["per_fold"])
    patients = {r["patient"]: r for r in report["patients"]}
    assert sorted(patients) == [f"p{i}" for i in range(6)] and all(r["cells"] == 2 for r in patients.values())
    assert all(patients[f"p{i}"]["true_pct"] == (100 if i < 3 else 0) for i in range(6))
    for r in patients.values():
        assert r["interval_low"] <= r["predicted_pct"] <= r["interval_high"]
        assert r["difference"] == pytest.approx(r["predicted_pct"] - r["true_pct"])
    assert set(report["targets"]) >= {"roc_auc", "patient_max_abs_error"}
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and len({r["path"] for r in rows}) == 12  # every cell scored once, out of fold
    folds = json.loads((out / "folds.json").read_text())["folds"]
    fold_of = {g: i for i, f in enumerate(folds) for g in f}
    assert all(fold_of[r["group"]] == int(r["fold"]) for r in rows)
    for i in range(3):  # the fold's model never saw its patients
        run_json = json.loads((out / f"fold_{i}" / "run.json").read_text())
        assert sum(run_json["cells"]["test"].values()) == 4 and run_json["groups"]["test"] == 2
    with Image.open(out / "patients.png") as im:
        assert im.format == "PNG"

    (out / "fold_2" / "predictions.csv").unlink()  # as if killed after training fold 2, before scoring it
    code, stdout, stderr = run("train", patient_table, "--cv", 3, "--out", out, "--epochs", 1, *FAST)
    assert code == 0, stderr
    assert "fold 1/3: done" in stdout and "fold 2/3: done" in stdout and "fold 3/3: scoring" in stdout
    assert "epoch" not in stdout  # nothing trained again
    again = json.loads((out / "cv.json").read_text())
    assert again["pooled"] == report["pooled"] and again["patients"] == report["patients"]

    code, _, stderr = run("train", patient_table, "--cv", 4, "--out", out, "--epochs", 1, *FAST)
    assert code == 2 and "other data, folds or seed" in stderr


def test_cv_folds_run_by_separate_processes_share_one_report(patient_table, tmp_path):
    out = tmp_path / "cv"
    code, stdout, stderr = run("train", patient_table, "--cv", 3, "--fold", 0, 2, "--out", out, "--epochs", 1, *FAST)
    assert code == 0, stderr
    assert "fold 1/3: training" in stdout and "fold 3/3: training" in stdout and "fold 2/3" not in stdout
    assert "waits for fold(s) 1" in stdout and not (out / "cv.json").exists() and not (out / "fold_1").exists()
    code, stdout, stderr = run("train", patient_table, "--cv", 3, "--fold", 1, "--out", out, "--epochs", 1, *FAST)
    assert code == 0, stderr
    assert "fold 2/3: training" in stdout and "fold 1/3" not in stdout and "per patient, blast-equivalent %" in stdout
    report = json.loads((out / "cv.json").read_text())
    assert report["n_cells"] == 12 and [f["fold"] for f in report["per_fold"]] == [0, 1, 2]
    folds = json.loads((out / "folds.json").read_text())
    assert len(folds["commands"]) == 2 and all("--fold" in c for c in folds["commands"])
    for i, fold in enumerate(folds["folds"]):
        with open(out / f"fold_{i}" / "predictions.csv", newline="") as fh:
            assert {r["group"] for r in csv.DictReader(fh)} == set(fold)
    for bad, says in ((["--fold", "3"], "folds 0 to 2"), (["--fold", "0", "--final"], "--fold ... final"),
                      (["--fold", "0", "--overwrite"], "every fold"), (["--fold", "last"], "or 'final'")):
        code, _, stderr = run("train", patient_table, "--cv", 3, *bad, "--out", out, "--epochs", 1, *FAST)
        assert code == 2 and says in stderr, (bad, stderr)
    code, _, stderr = run("train", patient_table, "--fold", 0, "--out", tmp_path / "one", *FAST)
    assert code == 2 and "belong to a cross-validation" in stderr


def test_the_final_model_trains_as_a_fold_beside_the_others_and_takes_the_figures_of_the_last(patient_table,
                                                                                           tmp_path):
    """`--fold 0 final` trains the final model before the report exists; the process of the last fold writes the
    report and adds its figures to it."""
    from napari_leukemia.core.model import load_classifier

    out = tmp_path / "cv"
    code, stdout, stderr = run("train", patient_table, "--cv", 3, "--fold", 0, "final", "--out", out, "--epochs", 1,
                               *FAST)
    assert code == 0, stderr
    assert "training the final model" in stdout and "waits for fold(s) 1, 2" in stdout
    assert not (out / "cv.json").exists() and not (out / "fold_1").exists()
    final = out / "final" / "classifier.safetensors"
    assert "cv_rates" not in load_classifier(final, "cpu").info.provenance
    trained = final.stat().st_mtime_ns
    code, stdout, stderr = run("train", patient_table, "--cv", 3, "--fold", 1, 2, "--out", out, "--epochs", 1, *FAST)
    assert code == 0, stderr
    assert "final model, trained on every patient" in stdout and "training the final model" not in stdout
    report = json.loads((out / "cv.json").read_text())
    provenance = load_classifier(final, "cpu").info.provenance
    assert provenance["cv_rates"] == report["cv_rates"]
    assert provenance["cross_validation"]["n_patients"] == report["n_patients"] == 6
    carried = final.stat().st_mtime_ns
    assert carried != trained
    code, stdout, stderr = run("train", patient_table, "--cv", 3, "--final", "--out", out, "--epochs", 1, *FAST)
    assert code == 0 and "training the final model" not in stdout, stderr
    assert final.stat().st_mtime_ns == carried  # nothing to add: the file is left as it is


def _other_lab(cell_dataset, folder: Path, name: str) -> Path:
    """A CSV of copies of the normal cells, as another lab's cells (each image its own group)."""
    folder.mkdir()
    rows = []
    for k, f in enumerate(sorted((cell_dataset / "normal").iterdir())):
        shutil.copy(f, folder / f"{name}_{k}{f.suffix}")
        rows.append({"path": f"{name}_{k}{f.suffix}", "label": "normal", "group": f"{name}/{k}",
                     "detail": "lymphocyte" if k % 2 else "neutrophil"})
    with open(folder / f"{name}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / f"{name}.csv"


def test_cv_trains_every_fold_on_extra_cells_and_scores_other_data_with_every_fold(patient_table, cell_dataset,
                                                                                   tmp_path):
    extra, other = _other_lab(cell_dataset, tmp_path / "lab2", "lab2"), _other_lab(cell_dataset, tmp_path / "lab3", "lab3")
    out = tmp_path / "cv"
    code, stdout, stderr = run("train", patient_table, "--cv", 3, "--out", out, "--epochs", 1, "--extra-train", extra,
                               "--score-also", other, *FAST)
    assert code == 0, stderr
    plain = tmp_path / "plain"
    assert run("train", patient_table, "--cv", 3, "--out", plain, "--epochs", 1, *FAST)[0] == 0
    for i in range(3):  # each fold trains on its 8 patients' cells plus the 6 extra ones, and scores lab3 once
        run_json = json.loads((out / f"fold_{i}" / "run.json").read_text())
        assert sum(run_json["cells"]["train"].values()) + sum(run_json["cells"]["val"].values()) == 8 + 6
        without = json.loads((plain / f"fold_{i}" / "run.json").read_text())
        assert run_json["cells"]["val"] == without["cells"]["val"]  # the extra cells only train; val is the same
        assert sum(run_json["cells"]["train"].values()) == sum(without["cells"]["train"].values()) + 6
        with open(out / f"fold_{i}" / "other_lab3.csv", newline="") as fh:
            assert sorted(r["path"] for r in csv.DictReader(fh)) == sorted(str(p) for p in (tmp_path / "lab3").glob("*.png"))
    report = json.loads((out / "cv.json").read_text())
    assert report["n_cells"] == 12 and report["extra_train_cells"] == 6  # extra cells are never scored
    lab3 = report["other_data"]["lab3"]
    assert lab3["n_cells"] == 6 and len(lab3["per_fold"]) == 3
    assert lab3["called_leukemic"] == pytest.approx(np.mean(lab3["per_fold"]))
    assert set(lab3["per_detail"]) == {"lymphocyte", "neutrophil"} and lab3["per_detail"]["lymphocyte"]["n"] == 3
    assert "lab3: 6 cells no fold trained on" in stdout
    code, _, stderr = run("train", patient_table, "--cv", 3, "--out", out, "--epochs", 1, *FAST)
    assert code == 2 and "other data, folds or seed" in stderr  # the folds were trained with the extra cells
    code, _, stderr = run("train", patient_table, "--out", tmp_path / "one", "--extra-train", extra, *FAST)
    assert code == 2 and "belong to a cross-validation" in stderr


def test_cv_refuses_a_dataset_without_patient_ids(cell_dataset, tmp_path):
    code, _, stderr = run("train", cell_dataset, "--cv", 3, "--out", tmp_path / "cv", "--epochs", 1, *FAST)
    assert code == 2 and "no patient" in stderr
    assert not (tmp_path / "cv" / "fold_0").exists()


def test_patient_folds_are_disjoint_balanced_by_stratum_and_seeded():
    samples = [Sample(f"{g}_{c}.jpg", "leukemic" if c == 0 else "normal", f"P{g:02d}", stratum="APL" if g % 3 == 0 else "AML")
               for g in range(30) for c in range(1 + g % 4)]
    folds = patient_folds(samples, 5, seed=1)
    assert sorted(g for f in folds for g in f) == sorted({s.group for s in samples})
    stratum = {s.group: s.stratum for s in samples}
    for f in folds:
        assert Counter(stratum[g] for g in f) == {"APL": 2, "AML": 4}
    assert folds == patient_folds(samples, 5, seed=1) and folds != patient_folds(samples, 5, seed=2)
    with pytest.raises(ValueError, match="at least 3 folds"):
        patient_folds(samples, 2)
    with pytest.raises(ValueError, match="cannot fill"):
        patient_folds(samples[:4], 5)


def test_cv_report_per_patient_table_and_wilson_interval(tmp_path):
    rows = [{"fold": 0, "path": f"a{i}", "group": "A", "stratum": "AML", "label": "normal", "detail": "myelocyte",
             "truth": 0, "p_leukemic": 0.9 if i < 3 else 0.1} for i in range(10)]
    rows += [{"fold": 1, "path": f"b{i}", "group": "B", "stratum": "APL", "label": "leukemic", "detail": "promyelocyte",
              "truth": 1, "p_leukemic": 0.8} for i in range(4)]  # all 4 called: Wilson's top rounds below 1
    rows = [{k: str(v) for k, v in r.items()} for r in rows]
    report = cv_report(rows)
    write_cv_report(tmp_path, report)  # the plot's error bars need the interval around the called %
    assert (tmp_path / "patients.png").is_file()
    a, b = report["patients"]
    assert (a["patient"], a["true_pct"], a["predicted_pct"], a["difference"]) == ("A", 0, 30, 30)
    assert b["true_pct"] == 100 and b["difference"] == 0
    assert report["patient_errors"]["max_abs_error"] == 30 and report["patient_errors"]["over_10_points"] == 1
    assert report["per_detail"]["myelocyte"]["called_leukemic"] == pytest.approx(0.3)
    assert report["hard_pair"]["n_normal"] == 10 and not report["targets"]["patient_max_abs_error"]["met"]
    lo, hi = wilson_interval(20, 100)  # a true 20% on 100 cells: about 13-29%
    assert 0.12 < lo < 0.14 and 0.28 < hi < 0.30
    assert wilson_interval(0, 34)[0] == 0 and np.isnan(wilson_interval(0, 0)[0])
    assert all(wilson_interval(k, n)[0] <= k / n <= wilson_interval(k, n)[1] for n in range(1, 300) for k in range(n + 1))


def test_cv_report_gives_each_patient_the_summary_interval_with_the_error_rates_of_the_other_folds():
    def cells(fold, group, truth, n, n_called):
        return [{"fold": fold, "path": f"{group}{truth}{i}", "group": group, "stratum": "AML", "label": "x",
                 "detail": "", "truth": truth, "p_leukemic": 0.9 if i < n_called else 0.1} for i in range(n)]

    rows = cells(0, "A", 0, 10, 3) + cells(1, "B", 1, 5, 4) + cells(2, "C", 0, 10, 1) + cells(2, "C", 1, 10, 9)
    report = cv_report([{k: str(v) for k, v in r.items()} for r in rows])
    c = report["patients"][2]
    # folds 0 and 1: false-positive rate 3/10, sensitivity 4/5; C calls 10 of 20: (0.5 - 0.3) / (0.8 - 0.3) = 40%
    assert c["predicted_pct"] == 50 and c["adjusted_pct"] == pytest.approx(40)
    assert c["adjusted_low"] < 40 < c["adjusted_high"]
    lo, hi = wilson_interval(10, 20)  # the summary's interval: counting, widened to hold the corrected one
    assert c["interval_low"] == min(100 * lo, c["adjusted_low"]) == 0
    assert c["interval_high"] == max(100 * hi, c["adjusted_high"]) == pytest.approx(100 * (hi - 0.3) / 0.5)
    assert report["cv_rates"] == {"sensitivity": pytest.approx(13 / 15), "false_positive_rate": pytest.approx(4 / 20)}
    assert report["patient_errors_adjusted"]["max_abs_error"] >= 10
    assert report["patient_errors_mean_p"]["mean_abs_error"] > 0


def test_deepapl_binary_target_is_who_blast_equivalents(shared_data):
    samples = read_dataset(shared_data / "deepapl" / "manifest.csv")
    with open(shared_data / "deepapl" / "manifest.csv", newline="") as fh:
        truth = {r["file"]: r for r in csv.DictReader(fh)}
    root = shared_data / "deepapl"
    aml_pro = [s for s in samples if s.detail == "promyelocyte" and s.stratum == "AML"]
    apl_pro = [s for s in samples if s.detail == "promyelocyte" and s.stratum == "APL"]
    assert aml_pro and apl_pro
    assert all(s.label == "normal" for s in aml_pro) and all(s.label == "leukemic" for s in apl_pro)
    assert all((s.label == "leukemic") == (truth[str(s.path.relative_to(root))]["blast_equivalent"] == "1")
               for s in samples)
    assert len({s.group for s in samples}) == 94


def test_pbc_cells_of_another_lab_are_all_normal(shared_data):
    samples = read_dataset(shared_data / "pbc" / "manifest.csv")
    assert len(samples) == 2000 and {s.label for s in samples} == {"normal"}
    assert all(s.path.is_file() for s in samples[::97]) and len({s.group for s in samples}) == 2000
    assert {"MY", "MMY", "PMY"} <= {s.detail for s in samples} and {s.stratum for s in samples} == {"PBC"}
    types = read_dataset(shared_data / "pbc" / "manifest.csv", deepapl_labels="cell_class")
    assert Counter(s.label for s in types)["ig"] == 800
    with pytest.raises(ValueError, match="erythroblast"):
        read_dataset(shared_data / "pbc" / "manifest.csv", deepapl_labels="cell_type")


def test_evaluate_on_normal_cells_only_reports_the_call_rate_not_nan(cell_dataset, tmp_path):
    """Another lab's normal cells (one truth only): no ROC exists; the fraction called leukaemic is the figure."""
    table = tmp_path / "normal.csv"
    files = sorted((cell_dataset / "normal").iterdir())
    table.write_text("path,label,group,detail\n" + "".join(
        f"{f},normal,donor{i},{'MY' if i % 2 else 'SNE'}\n" for i, f in enumerate(files)))
    code, stdout, stderr = run("evaluate", table, "--single-cells", "--split", "all", "--classifier", "leukemic",
                               "--out", tmp_path / "out", "--device", "cpu", "--quiet")
    assert code == 0, stderr
    assert "all normal" in stdout and "called leukaemic" in stdout and "nan" not in stdout.lower()
    assert "MY" in stdout and "SNE" in stdout  # the call rate per cell class
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["overall"]["roc_auc"] is None and set(report["per_detail"]) == {"MY", "SNE"}


def test_cv_with_a_feature_svm_keeps_each_part_and_the_final_model_carries_its_figures(cell_dataset, tmp_path):
    """--cv with --feature-svm: every fold's checkpoint carries its SVM, p_leukemic is the mean, and the network's
    and the SVM's probabilities are kept beside it (scripts/cv_table.py reports each part alone). --final then
    trains on every patient a model that carries the cross-validation's figures and error rates."""
    from napari_leukemia.core.model import load_classifier

    table = write_patient_table(cell_dataset, tmp_path, copies=3)  # enough training cells of each class for the SVM
    out = tmp_path / "cv"
    code, stdout, stderr = run("train", table, "--cv", 3, "--out", out, "--epochs", 1, "--arch", "small_cnn",
                               "--feature-svm", "--final", *FAST)
    assert code == 0, stderr
    final = load_classifier(out / "final" / "classifier.safetensors", "cpu")
    report = json.loads((out / "cv.json").read_text())
    assert final.feature_svm is not None and final.info.provenance["cv_rates"] == report["cv_rates"]
    assert final.info.provenance["cross_validation"]["pooled"] == report["pooled"]
    cells = json.loads((out / "final" / "run.json").read_text())["cells"]
    assert not cells["test"] and sum(cells["train"].values()) + sum(cells["val"].values()) == 36  # every patient
    assert "final model, trained on every patient" in stdout
    with open(out / "predictions.csv", newline="") as fh:
        predictions = list(csv.DictReader(fh))
    assert len(predictions) == 36
    p, net, feat = (np.array([float(r[c]) for r in predictions]) for c in ("p_leukemic", "p_network", "p_features"))
    log_odds = lambda q: np.log(q) - np.log1p(-q)  # noqa: E731
    assert np.allclose(log_odds(p), (log_odds(net) + log_odds(feat)) / 2, atol=1e-4)  # their geometric pool
    assert not np.allclose(net, feat, atol=1e-3)
    assert ((0 <= net) & (net <= 1) & (0 <= feat) & (feat <= 1)).all()
