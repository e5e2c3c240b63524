"""Classical baselines of the published seeds: hand-made features of a cell crop (shape, nucleus and cytoplasm
colour, texture) and scikit-learn models on them (logistic regression, SVM, random forest, kNN).

The crops are those the networks see (:func:`~.preprocess.crop_cells`: the cell's bounding box with a margin,
unmasked), so the features need a mask of their own: the nucleus is the project's stain rule
(:func:`~.stain.nucleus_mask`, CIE b* below a threshold) and the cell is the disc inscribed in the box the crop
was cut around. Crops are scaled to one size, so the cell's absolute size is not a feature. The seeds' SVM "with
flow-cytometry data" has no counterpart here: no dataset of this project carries flow data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

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


#: Where the GLCM texture is measured: ``"disc"``, the cell's disc (what the other features call the cell; since
#: session 20), or ``"box"``, the whole box around it, corners of background included (a feature SVM fitted before
#: session 20 carries no ``texture`` and gets ``"box"``).
TEXTURES = ("disc", "box")


def cell_features(crop: np.ndarray, margin: float = CropConfig().margin, texture: str = TEXTURES[0]) -> np.ndarray:
    """The :data:`FEATURE_NAMES` of one cell crop.

    Parameters
    ----------
    crop : (S, S, 3) ndarray of uint8
        A crop of :func:`~.preprocess.crop_cells` (the cell centred, its bounding box ``1 / (1 + 2 margin)`` of
        the side).
    margin : float
        The crop's ``CropConfig.margin``.
    texture : {"disc", "box"}
        Where the GLCM texture is measured (:data:`TEXTURES`).

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
    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    if texture == "box":
        glcm = graycomatrix(grey[box, box], distances=[1, 3], angles=angles, levels=32, symmetric=True, normed=True)
    else:  # pixels off the disc get a 33rd level, whose pairs are dropped
        marked = np.where(cell, grey, 32).astype(np.uint8)[box, box]
        glcm = graycomatrix(marked, distances=[1, 3], angles=angles, levels=33, symmetric=True)[:32, :32]
        glcm = glcm / np.maximum(glcm.sum(axis=(0, 1), keepdims=True), 1)
    glcm_values = [v for p in ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
                   for v in graycoprops(glcm, p).mean(axis=1)]
    lbp = local_binary_pattern(grey, 8, 1, method="uniform")

    def lbp_histogram(mask):
        if not mask.any():
            return [0.0] * _LBP_BINS
        return list(np.bincount(lbp[mask].astype(int), minlength=_LBP_BINS)[:_LBP_BINS] / mask.sum())

    values = np.array([*shape, *granularity, *colour(nucleus), *colour(cytoplasm), *glcm_values,
                       *lbp_histogram(nucleus), *lbp_histogram(cytoplasm)], float)
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


def crop_features(images: np.ndarray, margin: float = CropConfig().margin, texture: str = TEXTURES[0]) -> np.ndarray:
    """:func:`cell_features` of every crop of ``images`` (N, S, S, 3): an (N, F) array."""
    if not len(images):
        return np.zeros((0, len(FEATURE_NAMES)))
    return np.stack([cell_features(im, margin, texture) for im in images])


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


def fit_feature_svm(features: np.ndarray, is_leukemic: np.ndarray, *, margin: float, seed: int = 0) -> "FeatureSvm":
    """Fit ``classical_model("svm")`` to feature rows and 0 / 1 targets; its arrays as a :class:`FeatureSvm`.

    Raises
    ------
    ValueError
        When the targets hold one class only.
    """
    y = np.asarray(is_leukemic).astype(int)
    if len(set(y.tolist())) < 2:
        raise ValueError("the feature SVM needs leukaemic and normal training cells")
    return FeatureSvm.from_pipeline(classical_model("svm", seed).fit(features, y), margin)


#: Tensor names of a :class:`FeatureSvm` inside a classifier checkpoint (:func:`~.model.save_classifier`).
FEATURE_SVM_PREFIX = "feature_svm."
_SVM_ARRAYS = ("mean", "scale", "support_vectors", "dual_coef")


@dataclass(frozen=True, eq=False)
class FeatureSvm:
    """A fitted RBF SVM on :data:`FEATURE_NAMES` as plain arrays: the classical model a classifier checkpoint may
    carry as a second opinion, its leukaemic probability pooled with the network's (:func:`~.predict.probabilities`).

    Its probability is that of the scikit-learn pipeline of :func:`classical_model` ``("svm")`` it was taken
    from (:meth:`from_pipeline`), computed in numpy, so that a checkpoint holds no pickled object.
    ``p = 1 / (1 + exp(platt_a * d + platt_b))``, ``d = dual_coef . exp(-gamma |z - support_vectors|^2) +
    intercept``, ``z = (features - mean) / scale``.
    """

    mean: np.ndarray
    scale: np.ndarray
    support_vectors: np.ndarray
    dual_coef: np.ndarray
    intercept: float
    gamma: float
    platt_a: float
    platt_b: float
    margin: float = CropConfig().margin
    texture: str = TEXTURES[0]  #: where its features' GLCM texture is measured (:data:`TEXTURES`)

    @classmethod
    def from_pipeline(cls, pipeline, margin: float = CropConfig().margin, texture: str = TEXTURES[0]) -> "FeatureSvm":
        """The arrays of a fitted ``classical_model("svm")`` whose classes are 0 (normal) and 1 (leukaemic)."""
        scaler, calibrated = pipeline[0], pipeline[-1]
        if list(calibrated.classes_) != [0, 1] or len(calibrated.calibrated_classifiers_) != 1:
            raise ValueError("expected an SVM fitted to 0 / 1 targets with one Platt scaling (ensemble=False)")
        fitted = calibrated.calibrated_classifiers_[0]
        svc, platt = fitted.estimator, fitted.calibrators[0]
        return cls(mean=scaler.mean_.astype(np.float64), scale=scaler.scale_.astype(np.float64),
                   support_vectors=svc.support_vectors_.astype(np.float64),
                   dual_coef=svc.dual_coef_.ravel().astype(np.float64), intercept=float(svc.intercept_[0]),
                   gamma=float(svc._gamma), platt_a=float(platt.a_), platt_b=float(platt.b_), margin=float(margin),
                   texture=texture)

    def p_leukemic_of_features(self, features: np.ndarray) -> np.ndarray:
        """Leukaemic probability ``(N,)`` of feature rows ``(N, F)``."""
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        sq = (z**2).sum(1)[:, None] + (self.support_vectors**2).sum(1)[None, :] - 2 * z @ self.support_vectors.T
        d = np.exp(-self.gamma * np.maximum(sq, 0.0)) @ self.dual_coef + self.intercept
        return 1.0 / (1.0 + np.exp(self.platt_a * d + self.platt_b))

    def p_leukemic(self, crops: np.ndarray) -> np.ndarray:
        """Leukaemic probability ``(N,)`` of uint8 cell crops ``(N, S, S, 3)`` (:func:`crop_features`)."""
        return self.p_leukemic_of_features(crop_features(crops, self.margin, self.texture))

    def to_tensors(self) -> tuple[dict[str, np.ndarray], str]:
        """Its arrays (named with :data:`FEATURE_SVM_PREFIX`) and its metadata entry (a JSON string)."""
        arrays = {FEATURE_SVM_PREFIX + k: np.ascontiguousarray(getattr(self, k), np.float32) for k in _SVM_ARRAYS}
        meta = {"features": list(FEATURE_NAMES), "intercept": self.intercept, "gamma": self.gamma,
                "platt": [self.platt_a, self.platt_b], "margin": self.margin, "texture": self.texture}
        return arrays, json.dumps(meta)

    @classmethod
    def from_tensors(cls, arrays: dict[str, np.ndarray], meta: str, path) -> "FeatureSvm":
        """Rebuild from :meth:`to_tensors`, every part checked.

        Raises
        ------
        CheckpointError
            Naming ``path`` and the part at fault: not JSON, other features than :data:`FEATURE_NAMES`, a number
            out of range, an array missing, of another shape or not finite.
        """
        from .checkpoint import CheckpointError

        def bad(problem):
            return CheckpointError(f"{path}: its feature SVM {problem}")

        try:
            info = json.loads(meta)
            numbers = [float(info[k]) for k in ("intercept", "gamma", "margin")] + [float(v) for v in info["platt"]]
        except (TypeError, ValueError, KeyError) as err:
            raise bad(f"has unreadable settings ({err!r})") from err
        if info.get("features") != list(FEATURE_NAMES):
            raise bad("was fitted on other features than this version of napari-leukemia computes")
        if len(numbers) != 5 or not all(np.isfinite(numbers)) or numbers[1] <= 0 or numbers[2] < 0:
            raise bad(f"has settings out of range ({info})")
        texture = info.get("texture", "box")  # fitted before session 20: texture over the whole box
        if texture not in TEXTURES:
            raise bad(f"measures texture over {texture!r}, which this version of napari-leukemia does not know "
                      f"(one of {list(TEXTURES)})")
        missing = [k for k in _SVM_ARRAYS if FEATURE_SVM_PREFIX + k not in arrays]
        if missing:
            raise bad(f"lacks its arrays {missing}")
        a = {k: np.asarray(arrays[FEATURE_SVM_PREFIX + k], np.float64) for k in _SVM_ARRAYS}
        n = len(FEATURE_NAMES)
        if (a["mean"].shape != (n,) or a["scale"].shape != (n,) or a["support_vectors"].ndim != 2
                or a["support_vectors"].shape[1] != n or a["dual_coef"].shape != (len(a["support_vectors"]),)
                or not len(a["dual_coef"])):
            raise bad(f"has arrays of inconsistent shapes ({ {k: v.shape for k, v in a.items()} })")
        if not all(np.isfinite(v).all() for v in a.values()) or (a["scale"] <= 0).any():
            raise bad("holds NaN, infinite or non-positive scale values")
        intercept, gamma, margin, platt_a, platt_b = numbers
        return cls(**a, intercept=intercept, gamma=gamma, platt_a=platt_a, platt_b=platt_b, margin=margin,
                   texture=texture)
