"""Classical baselines of the published seeds: hand-made features of a cell crop (shape, nucleus and cytoplasm
colour, texture) and scikit-learn models on them (logistic regression, SVM, random forest, kNN).

The crops are those the networks see (:func:`~.preprocess.crop_cells`: the cell's bounding box with a margin,
unmasked), so the features need a mask of their own: the nucleus is the project's stain rule
(:func:`~.stain.nucleus_mask`, CIE b* below a threshold) and the cell is the disc inscribed in the box the crop
was cut around. Crops are scaled to one size, so the cell's absolute size is not a feature. The seeds' SVM "with
flow-cytometry data" has no counterpart here: no dataset of this project carries flow data.
"""

from __future__ import annotations

import numpy as np

from .config import CropConfig

#: The scikit-learn models compared (:func:`classical_model`).
CLASSICAL_MODELS = ("logistic_regression", "svm", "random_forest", "knn")
_LBP_BINS = 10  # uniform LBP with 8 neighbours: 9 uniform codes and one for the rest
_REGIONS = ("nucleus", "cytoplasm")
FEATURE_NAMES = (
    ("nucleus_fraction", "nucleus_lobes", "nucleus_solidity", "nucleus_eccentricity", "nucleus_roundness",
     "nucleus_offset", "granularity")
    + tuple(f"{r}_{s}_{c}" for r in _REGIONS for s in ("mean", "std") for c in ("L", "a", "b"))
    + tuple(f"glcm_{p}_d{d}" for p in ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
            for d in (1, 3))
    + tuple(f"{r}_lbp_{i}" for r in _REGIONS for i in range(_LBP_BINS))
)


def cell_features(crop: np.ndarray, margin: float = CropConfig().margin) -> np.ndarray:
    """The :data:`FEATURE_NAMES` of one cell crop.

    Parameters
    ----------
    crop : (S, S, 3) ndarray of uint8
        A crop of :func:`~.preprocess.crop_cells` (the cell centred, its bounding box ``1 / (1 + 2 margin)`` of
        the side).
    margin : float
        The crop's ``CropConfig.margin``.

    Returns
    -------
    (F,) ndarray of float64
        Finite values; where the crop shows no nuclear stain the nucleus features are 0.
    """
    from scipy import ndimage as ndi
    from skimage import color, measure
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    from .stain import nucleus_mask

    side = crop.shape[0]
    lab = color.rgb2lab(crop)
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    cell = np.hypot(yy, xx) <= side / (2 * (1 + 2 * margin))
    nucleus = ndi.binary_fill_holes(nucleus_mask(crop, lab) & cell)
    cytoplasm = cell & ~nucleus
    n_cell = cell.sum()

    shape = np.zeros(6)
    parts = measure.regionprops(measure.label(nucleus))
    big = [p for p in parts if p.area >= 0.01 * n_cell]
    if big:
        main = max(big, key=lambda p: p.area)
        cy, cx = np.mean([p.centroid for p in big], axis=0) - (side - 1) / 2
        shape[:] = (nucleus.sum() / n_cell, len(big), main.solidity, main.eccentricity,
                    4 * np.pi * main.area / max(main.perimeter, 1.0) ** 2, np.hypot(cy, cx) / side)
    lightness = lab[..., 0]
    granules = lightness - ndi.gaussian_filter(lightness, 2.0)
    granularity = [granules[cytoplasm].std() if cytoplasm.any() else 0.0]

    def colour(mask):
        if not mask.any():
            return [0.0] * 6
        values = lab[mask]
        return [*values.mean(axis=0), *values.std(axis=0)]

    grey = np.clip(lightness * 2.55, 0, 255).astype(np.uint8) // 8  # 32 grey levels
    box = slice(int(side * margin / (1 + 2 * margin)), side - int(side * margin / (1 + 2 * margin)))
    glcm = graycomatrix(grey[box, box], distances=[1, 3], angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32,
                        symmetric=True, normed=True)
    texture = [v for p in ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
               for v in graycoprops(glcm, p).mean(axis=1)]
    lbp = local_binary_pattern(grey, 8, 1, method="uniform")

    def lbp_histogram(mask):
        if not mask.any():
            return [0.0] * _LBP_BINS
        return list(np.bincount(lbp[mask].astype(int), minlength=_LBP_BINS)[:_LBP_BINS] / mask.sum())

    values = np.array([*shape, *granularity, *colour(nucleus), *colour(cytoplasm), *texture,
                       *lbp_histogram(nucleus), *lbp_histogram(cytoplasm)], float)
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


def crop_features(images: np.ndarray, margin: float = CropConfig().margin) -> np.ndarray:
    """:func:`cell_features` of every crop of ``images`` (N, S, S, 3): an (N, F) array."""
    return np.stack([cell_features(im, margin) for im in images]) if len(images) else np.zeros((0, len(FEATURE_NAMES)))


def classical_model(name: str, seed: int = 0):
    """A scikit-learn pipeline of one of :data:`CLASSICAL_MODELS`, with fixed settings (none tuned on the data).

    Features are standardised; classes are weighted by their inverse frequency where the model takes weights
    (kNN does not); the SVM's probabilities come from Platt scaling on internal folds.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    models = {
        "logistic_regression": lambda: LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000),
        "svm": lambda: CalibratedClassifierCV(SVC(C=1.0, kernel="rbf", class_weight="balanced", random_state=seed),
                                              method="sigmoid", ensemble=False),
        "random_forest": lambda: RandomForestClassifier(n_estimators=300, min_samples_leaf=2,
                                                        class_weight="balanced_subsample", random_state=seed,
                                                        n_jobs=1),
        "knn": lambda: KNeighborsClassifier(n_neighbors=25, weights="distance"),
    }
    if name not in models:
        raise ValueError(f"unknown classical model {name!r}; choose one of {CLASSICAL_MODELS}")
    return make_pipeline(StandardScaler(), models[name]())
