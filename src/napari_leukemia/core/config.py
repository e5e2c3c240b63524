"""Frozen settings dataclasses: the one home of every default."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

DISCLAIMER = "Research use only: not a diagnostic device."
#: Where the networks run: ``auto`` (the default) takes CUDA when there is a GPU.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: How leukocytes are found: the trained cellpose model (the default), or the stain-based baseline.
SEGMENTER_CHOICES = ("cellpose", "stain")
#: A cell is called blast equivalent (``leukemic``) when ``p_leukemic`` reaches this.
LEUKEMIC_THRESHOLD = 0.5
#: A found cell matches a ground-truth box or mask at this IoU or more (``evaluate-segmentation --iou``).
MATCH_IOU = 0.5
#: The object name of leukocyte boxes in Pascal VOC files (BCCD's ``WBC``; ``evaluate-segmentation --label``).
BOX_LABEL = "WBC"
#: Cells per batch when scoring a dataset.
EVAL_BATCH_SIZE = 64
#: The splits of a dataset, by group (patient); ``test`` is what training keeps aside.
SPLITS = ("train", "val", "test")
#: Train / val / test fractions of the groups (patients) when a dataset gives no split.
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
#: Which labels of DeepAPL's manifest a run learns: leukemic/normal (the default), the pathologist's cell classes,
#: or those classes grouped into cell types.
DEEPAPL_LABELS = ("binary", "cell_class", "cell_type")
#: Folds of patients in a cross-validation.
CV_FOLDS = 5
#: Fraction of the corrected slides (or cells, with fewer than 3 slides) that fine-tuning keeps aside to score the
#: model before and after.
HELD_OUT_FRACTION = 0.2
#: Adam learning rate for fine-tuning on corrections: 1e-3 (training from scratch) made the BCCD run forget
#: (DeepAPL test balanced accuracy 0.965 -> 0.875; docs/figures/fine_tune_bccd.json), 1e-4 did not.
FINE_TUNE_LR = 1e-4
#: Backbones a classifier can have, each with the same head. DenseNet201 is the design's (and the shipped
#: models'); the ResNets are lighter, e.g. to screen recipes by cross-validation on a CPU before DenseNet201.
#: VGG16 and EfficientNet-B0 are the published seeds' other torchvision backbones, ``small_cnn`` their small
#: custom CNN (four conv blocks) and ``cnn_transformer`` a ResNet18 stem followed by a Transformer encoder.
CLASSIFIER_ARCHITECTURES = ("densenet201", "resnet18", "resnet50", "vgg16", "efficientnet_b0", "small_cnn",
                            "cnn_transformer")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Serializable:
    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (JSON-serialisable)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build from :meth:`to_dict` output; unknown keys are refused."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown settings {sorted(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


@dataclass(frozen=True)
class CropConfig(_Serializable):
    """How one cell is cut out of a smear (shared by training and inference).

    Parameters
    ----------
    size : int
        Side of the square crop fed to the classifier, in pixels.
    margin : float
        Context around the cell's bounding box, as a fraction of its longer side, on each side.
    mask_outside : bool
        Replace pixels outside the cell mask (beyond ``margin``) by the crop's background colour.
    mean, std : tuple of float
        Per-channel normalisation applied after scaling to [0, 1].
    window : float
        0: the crop is fitted to each cell's bounding box (with ``margin``), so every cell fills it alike.
        Otherwise the side of a fixed square window, in red-cell diameters, centred on the cell's box: the
        crop keeps each cell's size against the red cells, which tells lymphocytes, neutrophils and
        monocytes apart. The red-cell diameter in pixels is given or measured on the image
        (:func:`~.preprocess.crop_cells`).
    """

    size: int = 224
    margin: float = 0.25
    mask_outside: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    window: float = 0.0

    def __post_init__(self):
        if not (self.window == 0 or 1 <= self.window <= 10):
            raise ValueError(f"crop window must be 0 (fitted to the cell) or 1-10 red-cell diameters, got {self.window}")
        if self.size < 16:
            raise ValueError(f"crop size must be at least 16 px, got {self.size}")
        if not 0 <= self.margin <= 2:
            raise ValueError(f"crop margin must be within [0, 2], got {self.margin}")


@dataclass(frozen=True)
class SegmentConfig(_Serializable):
    """How leukocytes are found in a smear.

    Parameters
    ----------
    method : {"cellpose", "stain"}
        The trained cellpose model, or the classical stain-based segmenter.
    diameter : float or None
        Expected leukocyte diameter in pixels; ``None`` estimates it from the stain.
    min_area_fraction : float
        Objects smaller than this fraction of the expected leukocyte area are dropped.
    cellprob_threshold, flow_threshold : float
        Passed to cellpose.
    tile_size : int
        Images with a side longer than this are segmented in tiles of this size (pixels), each
        read with a margin of ``tile_margin`` leukocyte diameters; memory is set by the tile size.
    tile_margin : float
        Margin around each tile, in leukocyte diameters. A cell belongs to the tile holding its
        centre, so it is never split or counted twice while it is narrower than twice the margin.
    """

    method: str = SEGMENTER_CHOICES[0]
    diameter: float | None = None
    min_area_fraction: float = 0.15
    cellprob_threshold: float = 0.0
    flow_threshold: float = 0.4
    tile_size: int = 2048
    tile_margin: float = 1.5

    def __post_init__(self):
        if self.method not in SEGMENTER_CHOICES:
            raise ValueError(f"segmentation method must be 'cellpose' or 'stain', got {self.method!r}")
        if self.diameter is not None and not self.diameter > 0:
            raise ValueError(f"leukocyte diameter must be positive, got {self.diameter}")
        if self.tile_size < 256 or self.tile_margin < 0.5:
            raise ValueError(f"tile_size must be >= 256 px and tile_margin >= 0.5 diameters, "
                             f"got {self.tile_size} and {self.tile_margin}")


@dataclass(frozen=True)
class AnalysisConfig(_Serializable):
    """Settings of one smear analysis.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
        Where the networks run; ``auto`` takes CUDA when present.
    gradcam : bool
        Compute a Grad-CAM heat map per cell.
    batch_size : int
        Cells classified at once.
    red_cell_diameter : float or None
        Red-cell diameter in pixels, the scale of a classifier whose crops are a fixed window
        (:attr:`CropConfig.window`); ``None`` measures it on the image. Unused by cell-fitted crops.
    single_cell : bool
        Each image is one cell at its centre (CellaVision exports, single-cell sets), at any magnification: only
        that cell is reported, found by segmentation or else taken as a centred crop (the cell table's
        ``found_by``); see :mod:`~.single_cell`. Batches of images are classified together, ``batch_size`` at once.
    """

    device: str = DEVICE_CHOICES[0]
    gradcam: bool = True
    batch_size: int = 32
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    red_cell_diameter: float | None = None
    single_cell: bool = False

    def __post_init__(self):
        if self.red_cell_diameter is not None and not self.red_cell_diameter > 0:
            raise ValueError(f"red-cell diameter must be positive, got {self.red_cell_diameter}")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["segment"] = self.segment.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        data = dict(data)
        seg = SegmentConfig.from_dict(data.pop("segment", {}))
        return super().from_dict({**data, "segment": seg})


#: Which weights :class:`TrainConfig` trains.
TUNE_CHOICES = ("all", "last_block", "head")
#: How an epoch draws its training cells (:attr:`TrainConfig.sampling`), each with what it does.
SAMPLING_HELP = {
    "cells": "every training cell once an epoch",
    "patients": "draw with equal chances per group (patient, slide), so that patients with many cells do not "
                "dominate",
    "cell_class": "draw each cell with a chance proportional to 1/sqrt(cells of its finer class: the dataset's "
                  "detail, DeepAPL's cell class), so that rare cell classes come up more often; refused when the "
                  "dataset gives no finer class",
}
SAMPLING_CHOICES = tuple(SAMPLING_HELP)


@dataclass(frozen=True)
class TrainConfig(_Serializable):
    """Classifier training settings (the seeds' recipe by default).

    Parameters
    ----------
    epochs : int
        Upper bound; early stopping usually ends sooner.
    batch_size : int
    lr : float
        Adam learning rate.
    weight_decay : float
        Adam's L2 penalty (0: none).
    patience : int
        Epochs without a better validation loss before stopping.
    cpu_minutes : float
        End training once it has spent this many minutes of the process's CPU time (all its threads, each
        finished epoch's validation included; on a GPU only the host's share counts): an equal budget for
        comparing architectures on a CPU. The epoch in progress ends at the next step and is validated
        (0: no limit).
    plateau_patience, plateau_factor
        Reduce-on-plateau of the learning rate.
    balance : {"weights", "none"}
        Class-weighted cross-entropy (inverse frequency) or plain.
    augment : bool
        Rotations, flips, zoom, brightness/contrast, HED stain jitter, blur.
    stain_jitter : float
        Standard deviation of the per-image scale (around 1) and shift (around 0) of each haematoxylin, eosin
        and DAB optical density (0: no stain jitter).
    stain_vector_jitter : float
        Standard deviation of a per-image random change of the stain colours themselves: each unit optical-density
        vector that turns stain amounts back into RGB gets Gaussian noise of this size and is renormalised, as a
        different dye batch, stain protocol or scanner would colour the same cell (0: off).
    blur_p : float
        Probability of a light Gaussian blur per image.
    lowres_p : float
        Probability per image of shrinking it 1.5-3 times and enlarging it back (lower imaging resolution; 0: off).
    imagenet : str
        ``"auto"`` (torchvision's cache if present), a path, or ``""`` for random initialisation.
    fast : bool
        channels_last + bf16 autocast on CPU, fp16 AMP on CUDA.
    tune : {"all", "last_block", "head"}
        Which weights train: every one, only the backbone's last block (DenseNet201: the last dense block
        with its final norm; ResNet: ``layer4``; VGG16: its last conv block; EfficientNet-B0: its last stage and
        final conv; small CNN: its fourth block; CNN-Transformer: the Transformer encoder) and the head, or the
        head alone. The frozen layers keep their batch-norm statistics; a frozen start trains several times faster
        (on a CPU) and keeps what the starting checkpoint learnt.
    sampling : {"cells", "patients", "cell_class"}
        An epoch takes every training cell once (``cells``), or draws as many cells (with replacement):
        ``patients`` with equal chances for every group (patient, slide), so that patients with many cells do
        not dominate; ``cell_class`` each cell with a chance proportional to ``1 / sqrt(n)``, n the training
        cells of its finer class (:attr:`~.datasets.Sample.detail`: DeepAPL's cell class, a CSV's ``detail``
        column), so that a class's share of the draws goes as ``sqrt(n)`` and rare classes come up more often
        (a dataset without finer classes is refused). The class weights follow the drawn mix.
    arch : str
        The backbone of a new classifier (:data:`CLASSIFIER_ARCHITECTURES`); ``""``: DenseNet201, or the
        starting checkpoint's when fine-tuning or resuming (which keep their own).
    feature_svm : bool
        Also fit the seeds' SVM on hand-made features of the training cells (:mod:`~.classical`) and let the
        checkpoint carry it: every analysis then pools its leukaemic probability with the network's (two
        classes only). The validation figures are those of the pool. Without it, a run that starts from a
        checkpoint carrying a feature SVM (fine-tuning) keeps that SVM as it is.

    Raises
    ------
    ValueError
        A setting out of its range (counts below 1, or below 0 where 0 means off; a learning rate that is not
        positive; negative decay or jitter; probabilities outside [0, 1]), naming the field.
    """

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 7
    cpu_minutes: float = 0.0
    plateau_patience: int = 3
    plateau_factor: float = 0.3
    balance: str = "weights"
    augment: bool = True
    stain_jitter: float = 0.05
    stain_vector_jitter: float = 0.0
    blur_p: float = 0.1
    lowres_p: float = 0.0
    seed: int = 0
    device: str = DEVICE_CHOICES[0]
    imagenet: str = "auto"
    fast: bool = True
    max_steps_per_epoch: int = 0
    tune: str = "all"
    arch: str = ""
    sampling: str = "cells"
    feature_svm: bool = False

    def __post_init__(self):
        if self.sampling not in SAMPLING_CHOICES:
            raise ValueError(f"TrainConfig.sampling must be one of {SAMPLING_CHOICES}, got {self.sampling!r}")
        if self.arch and self.arch not in CLASSIFIER_ARCHITECTURES:
            raise ValueError(f"TrainConfig.arch must be one of {CLASSIFIER_ARCHITECTURES}, got {self.arch!r}")
        if self.tune not in TUNE_CHOICES:
            raise ValueError(f"tune must be one of {TUNE_CHOICES}, got {self.tune!r}")
        if self.balance not in ("weights", "none"):
            raise ValueError(f"balance must be 'weights' or 'none', got {self.balance!r}")
        least = {"epochs": 1, "batch_size": 1, "patience": 1, "plateau_patience": 0, "max_steps_per_epoch": 0, "seed": 0}
        for name, low in least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"TrainConfig.{name} must be a whole number of at least {low}, got {value!r}")
        for name in ("lr", "weight_decay", "stain_jitter", "stain_vector_jitter", "blur_p", "lowres_p", "plateau_factor",
                     "cpu_minutes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"TrainConfig.{name} must be a finite number, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr (the learning rate) must be positive, got {self.lr!r}")
        for name in ("weight_decay", "stain_jitter", "stain_vector_jitter", "cpu_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must not be negative, got {getattr(self, name)!r}")
        for name in ("blur_p", "lowres_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"TrainConfig.{name} must be within [0, 1] (blur_p and lowres_p are probabilities), "
                                 f"got {getattr(self, name)!r}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"TrainConfig.plateau_factor must be within (0, 1), got {self.plateau_factor!r}")
