import json

import numpy as np
import pytest

from napari_leukemia.core.config import CropConfig, TrainConfig
from napari_leukemia.core.evaluate import binary_metrics, expected_calibration_error, fit_temperature
from napari_leukemia.core.model import ClassifierInfo, load_classifier
from napari_leukemia.core.train import CropSet, class_weights, train_epochs


@pytest.fixture(scope="module")
def tiny_set(deepapl_image, bccd_image):
    """Real crops at 32 px: DeepAPL cells (class 1) vs BCCD cells (class 0), with flips for variety."""
    from napari_leukemia.core.preprocess import crop_cells
    from napari_leukemia.core.stain import stain_segment

    crops = []
    for image, y in ((deepapl_image, 1), (bccd_image, 0)):
        c = crop_cells(image, stain_segment(image), CropConfig(size=32)).images
        crops += [(im, y) for im in c]
    images = np.stack([v for im, y in crops for v in (im, im[::-1], im[:, ::-1], im.transpose(1, 0, 2))])
    targets = np.array([y for im, y in crops for _ in range(4)])
    return CropSet(images, targets, np.arange(len(targets)).astype(str))


def _cfg(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 4, "imagenet": "", "max_steps_per_epoch": 2, "patience": 5, **kw})


def test_train_writes_checkpoints_and_history_then_resumes(tiny_set, tmp_path):
    info = ClassifierInfo(crop=CropConfig(size=32))
    reports = list(train_epochs(tiny_set, tiny_set, info, _cfg(), tmp_path))
    assert [r["epoch"] for r in reports] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["val_accuracy"] <= 1 for r in reports)
    for name in ("best.safetensors", "last.safetensors", "last_state.pt", "history.json"):
        assert (tmp_path / name).is_file()
    assert load_classifier(tmp_path / "best.safetensors").info.crop.size == 32
    more = list(train_epochs(tiny_set, tiny_set, info, _cfg(epochs=3), tmp_path, resume=True))
    assert [r["epoch"] for r in more] == [3]
    assert len(json.loads((tmp_path / "history.json").read_text())) == 3


def test_the_small_cnn_trains_into_a_checkpoint_of_its_own(tiny_set, tmp_path):
    info = ClassifierInfo(crop=CropConfig(size=32), architecture="small_cnn")
    reports = list(train_epochs(tiny_set, tiny_set, info, _cfg(epochs=1, imagenet="auto", tune="last_block"), tmp_path))
    assert [r["epoch"] for r in reports] == [1] and np.isfinite(reports[0]["train_loss"])
    clf = load_classifier(tmp_path / "best.safetensors", "cpu")
    assert clf.info.architecture == "small_cnn" and clf.info.crop.size == 32


def test_a_cpu_budget_ends_training_after_the_step_that_spends_it_and_counts_resumed_epochs(tiny_set, tmp_path):
    info = ClassifierInfo(crop=CropConfig(size=32))
    reports = list(train_epochs(tiny_set, tiny_set, info, _cfg(epochs=3, max_steps_per_epoch=4, cpu_minutes=1e-6),
                                tmp_path))
    assert [(r["epoch"], r["steps"], r["stopped"]) for r in reports] == [(1, 1, False)]
    assert reports[0]["cpu_seconds"] > 0 and (tmp_path / "best.safetensors").is_file()
    unlimited = list(train_epochs(tiny_set, tiny_set, info, _cfg(epochs=2, max_steps_per_epoch=4), tmp_path / "u"))
    assert [r["steps"] for r in unlimited] == [2, 2]  # the whole tiny set
    spent = unlimited[0]["cpu_seconds"] / 60  # a budget the first epoch has already spent when resumed
    more = list(train_epochs(tiny_set, tiny_set, info, _cfg(epochs=3, max_steps_per_epoch=4, cpu_minutes=spent),
                             tmp_path / "u", resume=True))
    assert [(r["epoch"], r["steps"]) for r in more] == [(3, 1)]


def test_stop_request_keeps_a_checkpoint(tiny_set, tmp_path):
    calls = iter(range(100))
    reports = list(train_epochs(tiny_set, tiny_set, ClassifierInfo(crop=CropConfig(size=32)), _cfg(), tmp_path,
                                should_stop=lambda: next(calls) >= 3))
    assert reports[-1]["stopped"]
    assert (tmp_path / "last.safetensors").is_file()


def test_a_run_stopped_in_its_first_epoch_resumes_without_a_history(tiny_set, tmp_path):
    info = ClassifierInfo(crop=CropConfig(size=32))
    reports = list(train_epochs(tiny_set, tiny_set, info, _cfg(), tmp_path, should_stop=lambda: True))
    assert reports == [{"epoch": 0, "stopped": True, "checkpoint": str(tmp_path / "last.safetensors")}]
    assert (tmp_path / "last_state.pt").is_file() and not (tmp_path / "history.json").exists()
    more = list(train_epochs(tiny_set, tiny_set, info, _cfg(epochs=1), tmp_path, resume=True))
    assert [r["epoch"] for r in more] == [1]
    assert [h["epoch"] for h in json.loads((tmp_path / "history.json").read_text())] == [1]


@pytest.mark.parametrize("field, value", [("cpu_minutes", -1.0), ("cpu_minutes", float("nan")), ("epochs", 0),
                                          ("batch_size", 0), ("batch_size", -4), ("batch_size", 2.5),
                                          ("patience", 0), ("plateau_patience", -1), ("max_steps_per_epoch", -1),
                                          ("seed", -1), ("lr", 0.0), ("lr", -1e-3), ("lr", float("nan")),
                                          ("lr", float("inf")), ("weight_decay", -1e-4), ("blur_p", -0.1),
                                          ("blur_p", 1.5), ("lowres_p", 2.0), ("plateau_factor", 1.0),
                                          ("plateau_factor", 0.0), ("stain_jitter", -0.1), ("arch", "alexnet"),
                                          ("sampling", "slides")])
def test_train_settings_out_of_range_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}\b.*got {value!r}"):
        TrainConfig(**{field: value})


def test_train_settings_at_their_limits_are_accepted():
    cfg = TrainConfig(epochs=1, batch_size=1, patience=1, plateau_patience=0, max_steps_per_epoch=0, seed=0,
                      lr=1e-9, weight_decay=0.0, blur_p=0.0, lowres_p=1.0, stain_jitter=0.0, plateau_factor=0.5)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig(epochs=np.int64(3)).epochs == 3  # numpy whole numbers are whole numbers


def test_empty_class_and_empty_sets_are_refused(tiny_set, tmp_path):
    with pytest.raises(ValueError, match="every class needs"):
        class_weights(np.zeros(5, int), 2)
    empty = tiny_set.subset(np.zeros(len(tiny_set), bool))
    with pytest.raises(ValueError, match="validation set is empty"):
        next(train_epochs(tiny_set, empty, ClassifierInfo(crop=CropConfig(size=32)), _cfg(), tmp_path))


def test_a_diverging_run_stops_with_a_clear_message_and_keeps_finished_epochs(tiny_set, tmp_path):
    info = ClassifierInfo(crop=CropConfig(size=32))
    list(train_epochs(tiny_set, tiny_set, info, _cfg(epochs=1), tmp_path))
    kept = (tmp_path / "best.safetensors").read_bytes()
    with pytest.raises(FloatingPointError, match="lower the learning rate"):  # Adam steps of 1e30 overflow at once
        list(train_epochs(tiny_set, tiny_set, info, _cfg(epochs=3, lr=1e30), tmp_path))
    assert (tmp_path / "best.safetensors").read_bytes() == kept  # no diverged weights written


@pytest.mark.parametrize("failure", ["cuda", "cpu"])
def test_running_out_of_memory_suggests_a_smaller_batch(tiny_set, tmp_path, monkeypatch, failure):
    import torch
    import torch.nn.functional as F

    def out_of_memory(*args, **kwargs):  # what torch raises when a batch does not fit (simulated: no 100 GB here)
        if failure == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(F, "cross_entropy", out_of_memory)
    with pytest.raises(MemoryError, match="batch size 4 .*try a smaller batch size"):
        list(train_epochs(tiny_set, tiny_set, ClassifierInfo(crop=CropConfig(size=32)), _cfg(), tmp_path))


def test_binary_metrics_against_hand_counts():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.3, 0.9, 0.8, 0.4, 0.7])
    m = binary_metrics(y, p)
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert m["accuracy"] == 0.75 and m["specificity"] == 0.75 and m["recall"] == 0.75
    assert m["roc_auc"] == pytest.approx(15 / 16)


def test_temperature_recovers_a_known_scale():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 2))
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = (rng.random(4000) < p[:, 1]).astype(int)
    t = fit_temperature(true_logits * 3, y)
    assert t == pytest.approx(3, rel=0.15)
    assert expected_calibration_error(y, p[:, 1]) < 0.03


@pytest.mark.parametrize("tune", ["head", "last_block"])
def test_tune_trains_only_the_chosen_weights(tiny_set, tmp_path, tune):
    import torch

    from napari_leukemia.core.model import new_classifier

    info = ClassifierInfo(crop=CropConfig(size=32))
    start = new_classifier(info)
    before = {k: v.clone() for k, v in start.net.state_dict().items()}
    list(train_epochs(tiny_set, tiny_set, info, _cfg(epochs=1, tune=tune), tmp_path, init=start))
    after = load_classifier(tmp_path / "last.safetensors").net.state_dict()
    changed = {k for k in before if not torch.equal(before[k].float(), after[k].float())}
    assert changed, "nothing trained"
    assert any(k.startswith("head.") for k in changed)
    trainable = ("head.",) if tune == "head" else ("head.", "features.denseblock4.", "features.norm5.")
    assert all(k.startswith(trainable) for k in changed), sorted(changed)[:5]  # batch-norm statistics included


def test_sampling_by_patient_gives_every_patient_equal_chances_and_weights_classes_by_the_mix():
    from napari_leukemia.core.train import class_weights, draw_chances, epoch_order

    groups = np.array(["A"] * 90 + ["B"] * 10)
    targets = np.array([0] * 90 + [1] * 10)
    assert draw_chances(groups, "cells") is None
    chances = draw_chances(groups, "patients")
    order = epoch_order(100, chances, np.random.default_rng(0))
    assert len(order) == 100 and 35 < (order >= 90).sum() < 65  # about half from the 10 cells of B
    assert np.allclose(class_weights(targets, 2, chances), [1, 1])  # the drawn mix is balanced already
    assert class_weights(targets, 2)[1] > 5 * class_weights(targets, 2)[0]


def test_sampling_by_cell_class_draws_each_class_by_the_square_root_of_its_cells():
    from napari_leukemia.core.train import draw_chances, epoch_order

    details = np.array(["neutrophil"] * 100 + ["myelocyte"] * 25 + ["basophil"] * 4)
    targets = np.array([0] * 100 + [0] * 25 + [1] * 4)
    chances = draw_chances(np.arange(129).astype(str), "cell_class", details)
    assert chances.sum() == pytest.approx(1)
    per_class = {d: chances[details == d].sum() for d in ("neutrophil", "myelocyte", "basophil")}
    assert per_class == pytest.approx({"neutrophil": 10 / 17, "myelocyte": 5 / 17, "basophil": 2 / 17})  # sqrt(n)
    assert chances[0] / chances[-1] == pytest.approx(np.sqrt(4 / 100))  # each cell 1/sqrt(n)
    rng = np.random.default_rng(0)
    drawn = np.concatenate([epoch_order(129, chances, rng) for _ in range(20)])
    assert 0.09 < (drawn >= 125).mean() < 0.15  # about 2/17 basophils drawn, against 4/129 once each
    # the class weights follow the drawn mix (15/17 class 0, 2/17 class 1), not the cell counts (125 / 4)
    w = class_weights(targets, 2, chances)
    assert w[1] / w[0] == pytest.approx(15 / 2)
    assert class_weights(targets, 2)[1] / class_weights(targets, 2)[0] == pytest.approx(125 / 4)


@pytest.mark.parametrize("details, message", [(None, "no cell has one"),
                                              (np.array(["myelocyte", "", "blast"]), "1 of 3 cells lack it")])
def test_sampling_by_cell_class_refuses_cells_without_a_finer_class(details, message):
    from napari_leukemia.core.train import draw_chances

    with pytest.raises(ValueError, match=f"sampling 'cell_class' .*{message}.*detail column"):
        draw_chances(np.array(["a", "b", "c"]), "cell_class", details)
    assert draw_chances(np.array(["a", "b", "c"]), "patients", details) == pytest.approx([1 / 3] * 3)


def test_a_crop_set_keeps_its_finer_classes_in_subsets_and_trains_by_them(tiny_set, tmp_path):
    details = np.where(np.arange(len(tiny_set)) % 3 == 0, "rare", "common")
    data = CropSet(tiny_set.images, tiny_set.targets, tiny_set.groups, details)
    part = data.subset(np.arange(len(data)) < 10)
    assert part.details.tolist() == details[:10].tolist()
    assert tiny_set.subset(np.arange(len(tiny_set)) < 10).details is None
    reports = list(train_epochs(data, data, ClassifierInfo(crop=CropConfig(size=32)),
                                _cfg(epochs=1, sampling="cell_class"), tmp_path))
    assert [r["epoch"] for r in reports] == [1]
    with pytest.raises(ValueError, match="sampling 'cell_class'"):
        next(train_epochs(tiny_set, tiny_set, ClassifierInfo(crop=CropConfig(size=32)),
                          _cfg(epochs=1, sampling="cell_class"), tmp_path / "refused"))
