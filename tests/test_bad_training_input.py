"""Damaged or wrong files given to ``napari-leukemia train``: each refused with a message naming the file and what to
do (exit 2, no traceback), never read into a wrong result.

Real files in tmp_path; the run to resume is a real tiny run (32 px crops, random initialisation) stopped after
its first epoch.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from cli_run import run

from napari_leukemia.core import drain
from napari_leukemia.core.config import CropConfig, TrainConfig
from napari_leukemia.core.cropstore import iter_crops, load_crops, save_crops
from napari_leukemia.core.datasets import read_dataset
from napari_leukemia.core.fit import FINAL_NAME, fit_classifier

FAST = ["--size", "32", "--batch-size", "4", "--imagenet", "none", "--single-cells", "--device", "cpu", "--quiet"]


def refused(result, path, *words):
    """Exit 2 (after the usage) with one ``error:`` line naming ``path`` and ``words``; no traceback, never torch's advice."""
    code, _, stderr = result
    assert code == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(path) in errors[0], stderr
    assert "Traceback" not in stderr and "weights_only" not in stderr, stderr
    assert all(w in errors[0] for w in words), stderr


@pytest.fixture(scope="module")
def stopped_run(cell_dataset, tmp_path_factory):
    """An unfinished run: one epoch trained, then stopped (as by the Stop button) in the second."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    epochs = []
    config = TrainConfig(epochs=3, batch_size=4, imagenet="", device="cpu", max_steps_per_epoch=2)
    run = fit_classifier(cell_dataset, out, config=config, size=32, single_cells=True, should_stop=lambda: bool(epochs))
    result = drain(run, lambda event: event.stage == "epoch" and epochs.append(event))
    assert result["stopped"] and [h["epoch"] for h in result["history"]] == [1]
    assert (out / "last_state.pt").is_file() and not (out / FINAL_NAME).exists()
    return out


@pytest.fixture
def resumable(stopped_run, tmp_path):
    """A copy of the stopped run, to damage."""
    return shutil.copytree(stopped_run, tmp_path / "run")


def resume(cell_dataset, out, *extra):
    return run("train", cell_dataset, "--out", out, "--epochs", 2, "--resume", *FAST, *extra)


def _arbitrary_pickle(marker):
    class MakesAFolder:  # what a malicious state file does when unpickled without weights_only
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    return pickle.dumps({"optimizer": MakesAFolder()}, protocol=2)


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "empty", "arbitrary objects", "torch objects",
                                    "other tensors"])
def test_a_damaged_training_state_is_refused_and_nothing_in_it_runs(cell_dataset, resumable, tmp_path, damage):
    state = resumable / "last_state.pt"
    marker = tmp_path / "unpickled"
    if damage == "random bytes":
        state.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    elif damage == "truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif damage == "empty":
        state.write_bytes(b"")
    elif damage == "arbitrary objects":
        state.write_bytes(_arbitrary_pickle(marker))
    elif damage == "torch objects":  # a torch file holding a Python object other than tensors and plain data
        torch.save({"optimizer": {}, "scheduler": {}, "epoch": 1, "bad_epochs": 0, "best_loss": CropConfig()}, state)
    else:  # a readable torch file, but not a training state
        torch.save({"weight": torch.zeros(3)}, state)
    before = {p.name: p.read_bytes() for p in resumable.iterdir()}
    refused(resume(cell_dataset, resumable), state, "not a training state", "--overwrite",
            f"--init {resumable}/last.safetensors")
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in resumable.iterdir()} == before  # nothing written, nothing removed


def test_a_training_state_of_other_settings_is_refused(cell_dataset, resumable):
    # trained with every weight, resumed with the head alone: the optimizer's parameter groups differ
    refused(resume(cell_dataset, resumable, "--tune", "head"), resumable / "last_state.pt", "does not fit this run",
            "--tune", "--overwrite")


@pytest.mark.parametrize("content", ["{not json", "\xff\xfe".encode("latin-1"), "[]", '{"epoch": 1}',
                                     '[{"epoch": 1}]', "missing"])
def test_a_broken_history_is_refused_by_name(cell_dataset, resumable, content):
    history = resumable / "history.json"
    if content == "missing":
        history.unlink()
    elif isinstance(content, bytes):
        history.write_bytes(content)
    else:
        history.write_text(content)
    refused(resume(cell_dataset, resumable), history, "cannot be resumed", "--overwrite")


def test_a_broken_run_description_is_refused_by_name(cell_dataset, resumable):
    (resumable / "run.json").write_text('{"split": "abc", "commands": [')
    refused(resume(cell_dataset, resumable), resumable / "run.json", "damaged", "--overwrite")


def test_a_run_killed_between_its_history_and_its_state_resumes_at_the_state(cell_dataset, resumable):
    history = json.loads((resumable / "history.json").read_text())
    ghost = {**history[0], "epoch": 2, "val_loss": -1.0}  # written for epoch 2, whose state was never saved
    (resumable / "history.json").write_text(json.dumps(history + [ghost]))
    code, stdout, stderr = resume(cell_dataset, resumable)
    assert code == 0, stderr
    epochs = json.loads((resumable / "history.json").read_text())
    assert [h["epoch"] for h in epochs] == [1, 2] and epochs[1]["val_loss"] >= 0 and "epoch   2/2" in stdout


def _write_npz(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "missing keys", "table not JSON",
                                    "table not a mapping", "table of other crops"])
def test_a_damaged_crops_cache_is_refused_by_name(cell_dataset, tmp_path, damage):
    cache = tmp_path / "crops.npz"
    drain(iter_crops(read_dataset(cell_dataset)[:3], CropConfig(size=32), single_cells=True, cache=cache))
    images, table = load_crops(cache)
    assert len(images) == 3
    if damage == "random bytes":
        cache.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, np.uint8).tobytes())
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:-100])
    elif damage == "missing keys":
        _write_npz(cache, data=np.zeros(4, np.uint8))
    elif damage == "table not JSON":
        _write_npz(cache, data=np.zeros(0, np.uint8), offsets=np.zeros(1, np.int64),
                   table=np.frombuffer(b"{not json", np.uint8))
    elif damage == "table not a mapping":
        save_crops(cache, images, [1, 2, 3])
    else:  # the right settings, but two files for three crops
        save_crops(cache, images, {**table, "files": table["files"][:2]})
    before = cache.read_bytes()
    refused(run("train", cell_dataset, "--out", tmp_path / "run", "--crops-cache", cache, *FAST), cache,
            "not a crops cache", "delete the file")
    assert "allow_pickle" not in run("train", cell_dataset, "--out", tmp_path / "run", "--crops-cache", cache, *FAST)[2]
    assert cache.read_bytes() == before and not (tmp_path / "run" / "run.json").exists()


@pytest.mark.parametrize("content", ["image", "random bytes", "latin-1", "utf-16", "nul bytes"])
def test_a_dataset_table_that_is_not_utf8_text_is_refused_by_name(cell_dataset, tmp_path, content):
    table = tmp_path / "cells.csv"
    text = "path,label\nleukemic/leukémie.png,leukemic\n"
    data = {"image": (cell_dataset / "leukemic" / "leukemic_0.png").read_bytes(),  # an image renamed .csv
            "random bytes": np.random.default_rng(2).integers(0, 256, 3000, np.uint8).tobytes(),
            "latin-1": text.encode("latin-1"), "utf-16": text.encode("utf-16"),
            "nul bytes": text.encode("utf-16-le")}[content]
    table.write_bytes(data)
    refused(run("train", table, "--out", tmp_path / "run", *FAST), table, "not a UTF-8 text table")
    with pytest.raises(ValueError, match="cells.csv: not a UTF-8 text table"):
        read_dataset(table)

