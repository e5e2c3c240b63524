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
