"""Fine-tuning on corrected cells (``core.fine_tune.fine_tune``): held-out corrections score the model before and after.

Tiny real runs: 32 px crops of real cells, random initialisation, one or two epochs.
"""

import csv
import json

import pytest

from napari_leukemia.core import drain
from napari_leukemia.core.config import TrainConfig
from napari_leukemia.core.datasets import Sample, hold_out
from napari_leukemia.core.fine_tune import FINE_TUNE_REPORT, fine_tune
from napari_leukemia.core.fit import FINAL_NAME, fit_classifier
from napari_leukemia.core.io import finite
from napari_leukemia.core.model import load_classifier

CONFIG = TrainConfig(epochs=1, batch_size=4, imagenet="", device="cpu", seed=0)


def run(gen):
    """Drive a training generator to its end; (events, result)."""
    events = []
    return events, drain(gen, events.append)


@pytest.fixture(scope="module")
def base_model(cell_dataset, tmp_path_factory):
    """A 32 px leukaemic/normal classifier trained one epoch on the real cell crops."""
    out = tmp_path_factory.mktemp("base") / "run"
    _, result = run(fit_classifier(cell_dataset, out, config=CONFIG, size=32, single_cells=True))
    return result["checkpoint"]


def corrections_csv(cell_dataset, folder, slides_per_class=0):
    """A corrections table like the Review panel's export, of the real crops: all from one slide, or each class's
    cells spread over ``slides_per_class`` slides of their own."""
    files = sorted(cell_dataset.glob("*/*.png"))
    folder.mkdir()
    with open(folder / "dataset.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group"])
        for i, f in enumerate(files):
            label = f.parent.name
            w.writerow([f, label, f"{label}_slide_{i % slides_per_class}" if slides_per_class else "smear_1"])
    return folder / "dataset.csv"


def test_hold_out_takes_whole_groups_per_class_and_keeps_two():
    samples = [Sample(f"{g}-{i}.png", label, g) for label, groups in (("a", "pqrstu"), ("b", "vw"))
               for g in groups for i in range(2)]
    kept, held = hold_out(samples, 0.34, seed=1)
    held_groups = {s.group for s in held}
    assert len(held_groups) == 2 and held_groups <= set("pqrstu")  # "b" has two groups: both train
    assert not held_groups & {s.group for s in kept}
    assert hold_out(samples, 0.0)[1] == []
    with pytest.raises(ValueError, match="held-out fraction"):
        hold_out(samples, 1.0)


def test_fine_tune_on_one_slide_holds_out_cells_and_reports_before_and_after(base_model, cell_dataset, tmp_path):
    table = corrections_csv(cell_dataset, tmp_path / "corrections")
    out = tmp_path / "tuned"
    events, result = run(fine_tune(table, out, init=base_model, held_out=0.2, config=CONFIG))
    assert not result["stopped"] and result["checkpoint"] == str(out / FINAL_NAME)
    assert result["held_out_by"] == "cell" and result["held_out"] == 2  # one cell of each class of 6
    data = next(e for e in events if e.stage == "data").payload
    assert sum(data["cells"]["train"].values()) + sum(data["cells"]["val"].values()) == 10
    for name in ("before", "after"):
        assert 0 <= result[name]["accuracy"] <= 1 and result[name]["class_accuracy"] is not None
    assert result["before"]["classifier"] != result["after"]["classifier"]
    report = json.loads((out / FINE_TUNE_REPORT).read_text())
    assert report["held_out_by"] == "cell"
    assert report["after"] == json.loads(json.dumps(finite(result["after"])))  # JSON keeps floats exactly
    tuned = load_classifier(out / FINAL_NAME, "cpu")
    assert tuned.info.crop.size == 32 and tuned.info.provenance["init"].startswith("fine-tuned from")


def test_fine_tune_holds_out_whole_slides_and_mixes_in_the_original_data(base_model, cell_dataset, tmp_path):
    table = corrections_csv(cell_dataset, tmp_path / "corrections", slides_per_class=3)  # 2 cells per slide
    events, result = run(fine_tune(table, tmp_path / "tuned", init=base_model, mix=cell_dataset,
                                   mix_single_cells=True, held_out=0.25, config=CONFIG))
    assert result["held_out_by"] == "slide" and result["held_out"] == 4  # one slide of three per class
    data = next(e for e in events if e.stage == "data").payload
    assert sum(data["cells"]["train"].values()) + sum(data["cells"]["val"].values()) == 8 + 12


def test_fine_tune_refuses_without_the_model_the_corrections_were_made_on(cell_dataset, tmp_path):
    table = corrections_csv(cell_dataset, tmp_path / "corrections")
    with pytest.raises(ValueError, match="fine-tuning needs the classifier"):
        run(fine_tune(table, tmp_path / "tuned", init=None, config=CONFIG))
