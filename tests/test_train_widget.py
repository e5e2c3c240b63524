"""The Train classifier dock widget: tiny real trainings (32 px, random weights) in its worker thread."""

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _widget(viewer, dataset, out, epochs):
    from napari_leukemia._napari.train_widget import TrainWidget

    widget = TrainWidget(viewer)
    widget._dataset.value = dataset
    widget._single.value = True
    widget._epochs.value = epochs
    widget._batch.value = 4
    widget._size.value = 32
    widget._imagenet.value = False
    widget._device.value = "cpu"
    widget._out.value = out
    return widget


def _wait(widget, qtbot):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)


def test_training_from_the_widget_hands_the_checkpoint_to_analyze(make_napari_viewer, qtbot, cell_dataset, tmp_path):
    from napari_leukemia._napari.widgets import AnalyzeWidget

    viewer, elsewhere = make_napari_viewer(), make_napari_viewer()
    analyze, other = AnalyzeWidget(viewer), AnalyzeWidget(elsewhere)
    viewer.window.add_dock_widget(analyze, name="Analyze smear")  # docks find each other through their viewer
    elsewhere.window.add_dock_widget(other, name="Analyze smear")
    widget = _widget(viewer, cell_dataset, tmp_path / "run", epochs=2)
    assert widget.start() is not None
    assert not widget._start_button.enabled and widget._stop_button.enabled
    _wait(widget, qtbot)
    assert widget.result is not None and not widget.result["stopped"], widget._status.value
    checkpoint = tmp_path / "run" / "classifier.safetensors"
    assert widget.result["checkpoint"] == str(checkpoint) and checkpoint.is_file()
    for ax in widget._axes:  # live curves: train and validation, one point per epoch
        assert [list(line.get_xdata()) for line in ax.lines] == [[1, 2], [1, 2]]
        assert all(np.isfinite(line.get_ydata()).all() for line in ax.lines)
    assert Path(analyze._classifier.value) == checkpoint and analyze.classifier == str(checkpoint)
    assert str(other._classifier.value) in ("", ".")  # another viewer's widget is left alone
    assert "done" in widget._status.value and "Research use only" in widget._disclaimer.value
    assert widget._start_button.enabled and not widget._stop_button.enabled


def test_stop_keeps_last_and_resume_finishes(make_napari_viewer, qtbot, cell_dataset, tmp_path):
    viewer = make_napari_viewer()
    out = tmp_path / "run"
    widget = _widget(viewer, cell_dataset, out, epochs=50)
    widget.start()
    qtbot.waitUntil(lambda: len(widget._history) >= 1, timeout=120_000)
    widget.stop()
    _wait(widget, qtbot)
    assert widget.result["stopped"] and "Resume" in widget._status.value
    assert (out / "last.safetensors").is_file() and not (out / "classifier.safetensors").exists()
    done = len(json.loads((out / "history.json").read_text()))
    # Start again into the same folder is refused; Resume continues the run to its end
    widget.start()
    _wait(widget, qtbot)
    assert "Error" in widget._status.value and "Resume" in widget._status.value
    widget._epochs.value = done + 1
    widget.start(resume=True)
    _wait(widget, qtbot)
    assert not widget.result["stopped"], widget._status.value
    assert (out / "classifier.safetensors").is_file()
    assert [h["epoch"] for h in widget.result["history"]] == list(range(1, done + 2))


def test_missing_settings_are_reported(make_napari_viewer, tmp_path):
    from napari_leukemia._napari.train_widget import TrainWidget

    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    assert widget.start() is None and "choose a dataset" in widget._status.value
    widget.set_dataset(tmp_path / "cells.csv", single_cells=True)
    assert widget._dataset.mode.value == "r" and widget._single.value
    assert widget.start() is None and "output folder" in widget._status.value


def test_train_widget_opens_through_the_manifest_and_finds_the_docked_analyze_widget(make_napari_viewer):
    from napari_leukemia._napari.widgets import analyze_widgets

    viewer, elsewhere = make_napari_viewer(), make_napari_viewer()
    _, analyze = viewer.window.add_plugin_dock_widget("napari-leukemia", "Analyze smear")
    _, train = viewer.window.add_plugin_dock_widget("napari-leukemia", "Train classifier")
    elsewhere.window.add_plugin_dock_widget("napari-leukemia", "Analyze smear")
    # napari gives each plugin widget its own proxy of the viewer: the viewer behind it holds the docks
    assert analyze_widgets(train._viewer) == [analyze]


def test_widgets_find_only_the_docks_of_their_own_viewer(make_napari_viewer):
    """The hand-off between docks is the viewer's state, not a global registry: a widget made for another viewer,
    one never docked, or a dock the user closed takes no part (a closed Analyze dock once chose the classifier that
    Train fine-tuned)."""
    from napari_leukemia._napari import docked
    from napari_leukemia._napari.train_widget import TrainWidget
    from napari_leukemia._napari.widgets import AnalyzeWidget, analyze_widgets

    viewer, elsewhere = make_napari_viewer(), make_napari_viewer()
    analyze = AnalyzeWidget(viewer)
    assert analyze_widgets(viewer) == []  # made, never docked
    viewer.window.add_dock_widget(analyze, name="Analyze smear")
    other = AnalyzeWidget(elsewhere)
    elsewhere.window.add_dock_widget(other, name="Analyze smear")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train classifier")
    assert analyze_widgets(viewer) == [analyze] and analyze_widgets(elsewhere) == [other]
    assert docked(viewer, TrainWidget) == [train] and docked(elsewhere, TrainWidget) == []
    analyze.use_classifier(__file__)  # any existing file stands for a checkpoint here
    assert train._current_classifier() == __file__
    viewer.window.remove_dock_widget(analyze.native)  # the user closes the Analyze dock
    assert analyze_widgets(viewer) == [] and analyze_widgets(elsewhere) == [other]
    assert train._current_classifier() != __file__


def test_new_head_and_frozen_weights_reach_the_core(make_napari_viewer, tmp_path):
    from napari_leukemia._napari.train_widget import TrainWidget
    from napari_leukemia.core.fit import fit_classifier
    from napari_leukemia.core.model import DEFAULT_CLASSIFIER

    widget = TrainWidget(make_napari_viewer())
    widget.set_dataset(tmp_path / "types.csv")
    widget._out.value = tmp_path / "run"
    widget._init.value = DEFAULT_CLASSIFIER
    widget._new_head.value = True
    widget._tune.value = "last_block"
    widget._feature_svm.value = True
    train, settings = widget._settings(resume=False)
    assert train is fit_classifier and settings["new_head"] and settings["config"].tune == "last_block"
    assert settings["config"].feature_svm
    assert settings["init"] == str(DEFAULT_CLASSIFIER)


def test_curves_wear_napari_theme_and_count_whole_epochs(make_napari_viewer):
    """The curves were a white matplotlib canvas on napari's dark theme, with an x axis of 0.96-1.04 for one epoch."""
    from matplotlib.colors import to_hex
    from napari.utils.theme import get_theme

    from napari_leukemia._napari.train_widget import TrainWidget

    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    for theme in ("dark", "light"):
        viewer.theme = theme
        widget._history = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.6, "train_accuracy": 0.5, "val_accuracy": 0.6}]
        widget._draw()
        colours = get_theme(theme)
        assert to_hex(widget._canvas.figure.get_facecolor()) == colours.background.as_hex()
        for ax in widget._axes:
            assert to_hex(ax.get_facecolor()) == colours.background.as_hex()
            assert to_hex(ax.xaxis.label.get_color()) == colours.text.as_hex()
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert lo <= 0 and hi >= 2 and ticks == [round(t) for t in ticks]  # whole epochs
