"""Hand-made cell features and the classical baselines (core/classical.py)."""

import numpy as np
import pytest

from napari_leukemia.core.classical import CLASSICAL_MODELS, FEATURE_NAMES, cell_features, classical_model, crop_features

SIDE = 96
BACKGROUND = (226, 196, 200)  # pale pink smear background
CYTOPLASM = (200, 180, 215)  # pale lilac
NUCLEUS = (80, 40, 150)  # Wright-Giemsa blue-violet


def synthetic_cell(rng, lobes: int, nucleus_radius: float) -> np.ndarray:
    """A crop as crop_cells cuts it (cell box = the central 1 / 1.5 of the side) with ``lobes`` nuclear discs."""
    yy, xx = np.mgrid[:SIDE, :SIDE] - (SIDE - 1) / 2
    crop = np.empty((SIDE, SIDE, 3), float)
    crop[:] = BACKGROUND
    cell_r = SIDE / 3
    crop[np.hypot(yy, xx) <= cell_r] = CYTOPLASM
    centres = [(0.0, 0.0)] if lobes == 1 else [(0.5 * cell_r * np.cos(a), 0.5 * cell_r * np.sin(a))
                                               for a in np.linspace(0, 2 * np.pi, lobes, endpoint=False)]
    for cy, cx in centres:
        crop[np.hypot(yy - cy, xx - cx) <= nucleus_radius] = NUCLEUS
    crop += rng.normal(0, 6, crop.shape)
    return np.clip(crop, 0, 255).astype(np.uint8)


def test_features_measure_the_nucleus_of_a_drawn_cell():
    rng = np.random.default_rng(0)
    names = list(FEATURE_NAMES)
    blast = cell_features(synthetic_cell(rng, 1, 0.8 * SIDE / 3))
    neutrophil = cell_features(synthetic_cell(rng, 3, 0.25 * SIDE / 3))
    assert blast.shape == (len(FEATURE_NAMES),) and np.isfinite(blast).all()
    assert blast[names.index("nucleus_fraction")] == pytest.approx(0.64, abs=0.06)  # (0.8)^2 of the cell disc
    assert blast[names.index("nucleus_lobes")] == 1 and neutrophil[names.index("nucleus_lobes")] == 3
    assert neutrophil[names.index("nucleus_fraction")] < 0.3
    assert blast[names.index("nucleus_mean_b")] < -20 < blast[names.index("cytoplasm_mean_b")]
    # a crop with no nuclear stain gives zeros for the nucleus, not NaN
    empty = cell_features(np.full((SIDE, SIDE, 3), BACKGROUND, np.uint8))
    assert np.isfinite(empty).all() and empty[names.index("nucleus_fraction")] == 0


def test_texture_is_measured_on_the_cell_not_on_the_background_around_it():
    """A flat background in the box's corners (a cut-out cell painted on a smear colour) leaves the disc's texture
    as it was; the texture over the whole box (feature SVMs fitted before session 20) moves."""
    rng = np.random.default_rng(2)
    crop = synthetic_cell(rng, 1, 0.7 * SIDE / 3)
    yy, xx = np.mgrid[:SIDE, :SIDE] - (SIDE - 1) / 2
    flat = crop.copy()
    flat[np.hypot(yy, xx) > SIDE / 3 + 1] = BACKGROUND  # the noise outside the cell's disc smoothed away
    glcm = [i for i, n in enumerate(FEATURE_NAMES) if n.startswith("glcm_")]
    disc, disc_flat = cell_features(crop)[glcm], cell_features(flat)[glcm]
    box, box_flat = cell_features(crop, texture="box")[glcm], cell_features(flat, texture="box")[glcm]
    assert np.allclose(disc, disc_flat, rtol=0.02, atol=1e-3)
    assert not np.allclose(box, box_flat, rtol=0.05)
    assert not np.allclose(disc, box, rtol=0.05)  # the two are different features: a fitted SVM keeps its own
    assert np.array_equal(cell_features(crop, texture="box")[:19], cell_features(crop)[:19])  # the rest is the same


@pytest.fixture(scope="module")
def drawn_cells():
    """Features of 60 drawn cells: blasts (1: one large nucleus) and neutrophils (0: two to four small lobes)."""
    rng = np.random.default_rng(1)
    kinds = rng.integers(0, 2, 60)
    crops = np.stack([synthetic_cell(rng, 1, rng.uniform(0.7, 0.85) * SIDE / 3) if k
                      else synthetic_cell(rng, int(rng.integers(2, 5)), rng.uniform(0.2, 0.3) * SIDE / 3)
                      for k in kinds])
    return crop_features(crops), kinds


@pytest.mark.parametrize("name", CLASSICAL_MODELS)
def test_each_classical_model_tells_drawn_blasts_from_drawn_neutrophils(name, drawn_cells):
    x, kinds = drawn_cells
    model = classical_model(name).fit(x[:40], kinds[:40])
    assert (model.predict(x[40:]) == kinds[40:]).mean() >= 0.9
    assert model.predict_proba(x[40:]).shape == (20, 2)


def test_an_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown classical model 'xgboost'"):
        classical_model("xgboost")


@pytest.fixture(scope="module")
def drawn_svm(drawn_cells):
    """The seeds' SVM fitted on 40 drawn cells: the scikit-learn pipeline and its arrays."""
    from napari_leukemia.core.classical import FeatureSvm

    x, kinds = drawn_cells
    pipeline = classical_model("svm").fit(x[:40], kinds[:40])
    return pipeline, FeatureSvm.from_pipeline(pipeline)


def test_the_feature_svm_computes_what_scikit_learn_computes(drawn_cells, drawn_svm):
    from napari_leukemia.core.classical import FeatureSvm

    x, _ = drawn_cells
    pipeline, svm = drawn_svm
    expected = pipeline.predict_proba(x)[:, 1]
    assert np.abs(svm.p_leukemic_of_features(x) - expected).max() < 1e-9
    stored = FeatureSvm.from_tensors(*svm.to_tensors(), "svm.safetensors")  # float32 arrays in a checkpoint
    assert np.abs(stored.p_leukemic_of_features(x) - expected).max() < 1e-4
    assert len(np.unique(np.round(expected, 3))) > 10  # probabilities, not a constant


@pytest.fixture(scope="module")
def small_classifier_with_svm(tmp_path_factory, drawn_svm):
    """A small CNN classifier (random weights) carrying the drawn cells' SVM, saved and loaded back."""
    import torch

    from napari_leukemia.core.config import CropConfig
    from napari_leukemia.core.model import ClassifierInfo, load_classifier, new_classifier, save_classifier

    torch.manual_seed(0)
    clf = new_classifier(ClassifierInfo(architecture="small_cnn", crop=CropConfig(size=64)))
    clf.feature_svm = drawn_svm[1]
    path = tmp_path_factory.mktemp("svm") / "with_svm.safetensors"
    save_classifier(clf, path)
    return load_classifier(path, "cpu")


def pooled(p, q):
    """The leukaemic probability whose log-odds are the mean of those of ``p`` and ``q``."""
    z = (np.log(p) - np.log1p(-np.asarray(p)) + np.log(q) - np.log1p(-np.asarray(q))) / 2
    return 1 / (1 + np.exp(-z))


def test_a_checkpoint_pools_its_network_with_its_feature_svm(small_classifier_with_svm, drawn_svm, mosaic_smear):
    """The analysis's p_leukemic pools the network's and the feature SVM's (the mean of their log-odds), on the
    crops it cut."""
    from napari_leukemia.core.pipeline import classify_cells
    from napari_leukemia.core.predict import p_leukemic, predict_logits, probabilities
    from napari_leukemia.core.stain import stain_segment

    clf = small_classifier_with_svm
    assert clf.feature_svm is not None
    assert np.allclose(clf.feature_svm.support_vectors, drawn_svm[1].support_vectors, atol=1e-5)
    image = mosaic_smear[0]
    cells, cut = classify_cells(image, stain_segment(image), clf, batch_size=4)  # batches: the SVM goes batch by batch
    crops = cut.images
    p_network = p_leukemic(clf, probabilities(clf.__class__(net=clf.net, info=clf.info), predict_logits(clf, crops)))
    p_features = drawn_svm[0].predict_proba(crop_features(crops))[:, 1]
    assert len(crops) >= 6
    assert np.abs(cells["p_leukemic"].to_numpy() - pooled(p_network, p_features)).max() < 1e-3
    assert np.abs(cells["p_network"].to_numpy() - p_network).max() < 2e-3  # each part kept for review
    assert np.abs(cells["p_features"].to_numpy() - p_features).max() < 1e-3
    with pytest.raises(ValueError, match="pools its network with a feature SVM"):
        probabilities(clf, predict_logits(clf, crops))


def test_a_feature_svm_only_fits_two_classes_and_a_damaged_one_is_refused(small_classifier_with_svm, tmp_path):
    import dataclasses

    from safetensors.numpy import load_file, save_file

    from napari_leukemia.core.checkpoint import CheckpointError
    from napari_leukemia.core.model import ClassifierInfo, load_classifier, new_classifier, save_classifier

    clf = small_classifier_with_svm
    three = new_classifier(ClassifierInfo(classes=("a", "b", "leukemic"), architecture="small_cnn"))
    three.feature_svm = clf.feature_svm
    with pytest.raises(CheckpointError, match="three.safetensors: a feature SVM can only be pooled with a classifier of two"):
        save_classifier(three, tmp_path / "three.safetensors")
    assert not (tmp_path / "three.safetensors").exists()
    save_classifier(clf, tmp_path / "ok.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ok.safetensors"), "np") as f:
        meta = f.metadata()
    state = load_file(tmp_path / "ok.safetensors")
    cut = dict(state, **{"feature_svm.dual_coef": state["feature_svm.dual_coef"][:-1]})
    save_file(cut, tmp_path / "cut.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match="cut.safetensors: its feature SVM has arrays of inconsistent shapes"):
        load_classifier(tmp_path / "cut.safetensors", "cpu")
    save_file(state, tmp_path / "bare.safetensors", metadata={k: v for k, v in meta.items() if k != "feature_svm"})
    with pytest.raises(CheckpointError, match="bare.safetensors: holds feature SVM arrays without their settings"):
        load_classifier(tmp_path / "bare.safetensors", "cpu")
    other = dict(meta, feature_svm=meta["feature_svm"].replace("nucleus_fraction", "nucleus_share"))
    save_file(state, tmp_path / "other.safetensors", metadata=other)
    with pytest.raises(CheckpointError, match="other.safetensors: its feature SVM was fitted on other features"):
        load_classifier(tmp_path / "other.safetensors", "cpu")
    assert dataclasses.replace(clf, feature_svm=None).feature_svm is None
    # an SVM fitted before session 20 (no "texture") measures texture over the box; an unknown region is refused
    old = dict(meta, feature_svm=meta["feature_svm"].replace(', "texture": "disc"', ""))
    assert old["feature_svm"] != meta["feature_svm"]
    save_file(state, tmp_path / "old.safetensors", metadata=old)
    assert load_classifier(tmp_path / "old.safetensors", "cpu").feature_svm.texture == "box"
    assert load_classifier(tmp_path / "ok.safetensors", "cpu").feature_svm.texture == "disc"
    odd = dict(meta, feature_svm=meta["feature_svm"].replace('"texture": "disc"', '"texture": "ring"'))
    save_file(state, tmp_path / "odd.safetensors", metadata=odd)
    with pytest.raises(CheckpointError, match="odd.safetensors: its feature SVM measures texture over 'ring'"):
        load_classifier(tmp_path / "odd.safetensors", "cpu")


def test_the_single_cell_path_pools_too(small_classifier_with_svm, deepapl_image, segmenter_path):
    """analyze --single-cell classifies all its cells in one batch: the feature SVM's part is there too."""
    from napari_leukemia import analyze_smear
    from napari_leukemia.core.config import AnalysisConfig

    result = analyze_smear(deepapl_image, classifier=small_classifier_with_svm, segmenter=segmenter_path,
                           config=AnalysisConfig(device="cpu", gradcam=False, single_cell=True))
    (row,) = result.cells.to_dict("records")
    assert row["p_leukemic"] == pytest.approx(pooled(row["p_network"], row["p_features"]), abs=1e-6)
