"""The cell classifier (DenseNet201 by default, or another torchvision backbone with the same head) and its
checkpoint format (safetensors, plain-data metadata)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, check_weights, classifier_metadata, read_safetensors
from .config import CLASSIFIER_ARCHITECTURES, CropConfig

CLASSIFIER_FORMAT = "napari-leukemia-classifier"
#: The backbone of the shipped classifiers and of a new one unless another is asked for.
ARCHITECTURE = "densenet201"
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
#: The classifiers shipped in the package, by the name that chooses them (``load_classifier("leukemic")``).
SHIPPED_CLASSIFIERS = {
    "leukemic": MODELS_DIR / "densenet201_leukemia.safetensors",
    "cell_type": MODELS_DIR / "densenet201_celltype.safetensors",
}
DEFAULT_CLASSIFIER = SHIPPED_CLASSIFIERS["leukemic"]
#: File names torchvision gives its ImageNet weights in its cache.
TORCHVISION_WEIGHTS = {"densenet201": "densenet201-c1103571.pth", "resnet18": "resnet18-f37072fd.pth",
                       "resnet50": "resnet50-11ad3fa6.pth"}


@dataclass(frozen=True)
class ClassifierInfo:
    """Everything a checkpoint carries besides weights.

    Parameters
    ----------
    classes : tuple of str
        Output classes, in logit order.
    leukemic : tuple of str
        The classes whose probabilities sum to ``p_leukemic``.
    crop : CropConfig
        The preprocessing the model was trained with (applied automatically at inference).
    temperature : float
        Logits are divided by it before the softmax (calibration).
    hidden, dropout
        Head shape.
    architecture : str
        The backbone (:data:`~.config.CLASSIFIER_ARCHITECTURES`).
    provenance : dict
        Data, command, metrics: free-form plain data.
    """

    classes: tuple[str, ...] = ("normal", "leukemic")
    leukemic: tuple[str, ...] = ("leukemic",)
    crop: CropConfig = field(default_factory=CropConfig)
    temperature: float = 1.0
    hidden: int = 512
    dropout: float = 0.5
    provenance: dict = field(default_factory=dict)
    architecture: str = ARCHITECTURE

    def __post_init__(self):
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"a classifier needs at least two distinct classes, got {self.classes}")
        missing = set(self.leukemic) - set(self.classes)
        if missing:
            raise ValueError(f"leukemic classes {sorted(missing)} are not among the classes {self.classes}")

    def to_metadata(self) -> dict[str, str]:
        d = dataclasses.asdict(self)
        d["crop"] = self.crop.to_dict()
        architecture = d.pop("architecture")
        return {"format": CLASSIFIER_FORMAT, "architecture": architecture, **{k: json.dumps(v) for k, v in d.items()}}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path="checkpoint") -> "ClassifierInfo":
        """Build from :meth:`to_metadata` output, every field checked by :func:`~.checkpoint.classifier_metadata`.

        Raises
        ------
        CheckpointError
            A field missing, not JSON, of another type or out of range, named with ``path``.
        """
        return cls(**classifier_metadata(meta, path))


def build_network(architecture: str, num_classes: int, hidden: int = 512, dropout: float = 0.5):
    """A torchvision backbone's ``features`` + the seeds' head: GAP, Dense(hidden) + ReLU, Dropout, Dense(num_classes).

    Two output logits with a softmax are the two-class form of the seeds' single sigmoid unit. The network
    names its last block (``last_block``: what ``tune="last_block"`` trains besides the head) and the layer
    Grad-CAM explains (``cam_layer``).

    Parameters
    ----------
    architecture : str
        One of :data:`~.config.CLASSIFIER_ARCHITECTURES`.
    """
    import torch
    from torch import nn
    from torchvision import models

    if architecture not in CLASSIFIER_ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {CLASSIFIER_ARCHITECTURES}")
    if architecture == "densenet201":
        features, channels, last_block = models.densenet201(weights=None).features, 1920, ("denseblock4", "norm5")
    else:
        trunk = getattr(models, architecture)(weights=None)
        features = nn.Sequential(OrderedDict((n, m) for n, m in trunk.named_children() if n not in ("avgpool", "fc")))
        channels, last_block = trunk.fc.in_features, ("layer4",)

    class CellClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.architecture = architecture
            self.last_block = last_block
            self.features = features
            self.head = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(channels, hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )

        @property
        def cam_layer(self):
            return getattr(self.features, self.last_block[-1])

        def forward(self, x):
            # torchvision applies an in-place ReLU after DenseNet's `features`; a plain one keeps Grad-CAM's hooks
            # valid (after a ResNet's last block, which ends in a ReLU, it changes nothing)
            return self.head(torch.relu(self.features(x)))

    return CellClassifier()


@dataclass
class Classifier:
    """A loaded classifier: the network (eval mode) and its :class:`ClassifierInfo`."""

    net: object
    info: ClassifierInfo
    path: str = ""

    @property
    def name(self) -> str:
        return Path(self.path).name if self.path else "in-memory"

    def leukemic_index(self) -> np.ndarray:
        return np.array([self.info.classes.index(c) for c in self.info.leukemic], int)


def new_classifier(info: ClassifierInfo, imagenet_weights=None) -> Classifier:
    """A fresh classifier of ``info.architecture``; its features start from ImageNet when weights are found.

    Parameters
    ----------
    imagenet_weights : path, "auto" or None
        A torchvision state dict of that architecture (``.pth``, loaded with ``weights_only=True``), ``"auto"``
        to look in torchvision's cache, or ``None`` for random initialisation. Nothing is downloaded.
    """
    net = build_network(info.architecture, len(info.classes), info.hidden, info.dropout)
    if imagenet_weights == "auto":
        imagenet_weights = find_imagenet_weights(info.architecture)
    if imagenet_weights:
        load_imagenet_features(net, imagenet_weights)
    return Classifier(net=net, info=info)


def with_new_head(classifier: Classifier, info: ClassifierInfo) -> Classifier:
    """A classifier for ``info``'s classes with ``classifier``'s features (and architecture) and a fresh head."""
    info = dataclasses.replace(info, architecture=classifier.info.architecture)
    net = build_network(info.architecture, len(info.classes), info.hidden, info.dropout)
    net.features.load_state_dict(classifier.net.features.state_dict())
    return Classifier(net=net, info=info)


def find_imagenet_weights(architecture: str = ARCHITECTURE) -> Path | None:
    """torchvision's cached ImageNet weights of ``architecture``, if this machine has them."""
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS[architecture]
    return path if path.is_file() else None


def load_imagenet_features(net, path) -> None:
    """Load a torchvision ImageNet state dict of ``net``'s architecture into ``net.features`` (safely, no unpickling
    of code)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign or damaged files
        raise CheckpointError(f"{path}: not a loadable torchvision state dict ({err})") from err
    # old torchvision keys: 'denselayer1.norm.1.weight' -> 'denselayer1.norm1.weight'
    stat = r"(?:weight|bias|running_mean|running_var|num_batches_tracked)"
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\." + stat + r")$")
    features = {}
    for key, value in state.items():
        m = pattern.match(key)
        if m:
            key = m.group(1) + m.group(2)
        if key.startswith("features."):
            features[key[len("features.") :]] = value
        elif net.architecture != "densenet201" and not key.startswith("fc."):  # ResNet: everything but the classifier
            features[key] = value
    try:
        net.features.load_state_dict(features)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: not {net.architecture} ImageNet weights ({err})") from err


def save_classifier(classifier: Classifier, path, half: bool = True) -> None:
    """Write weights (half precision by default) and :class:`ClassifierInfo` to safetensors, atomically."""
    from safetensors.torch import save_file

    from .io import atomic_path

    state = {}
    for k, v in classifier.net.state_dict().items():
        v = v.detach().to("cpu")
        state[k] = (v.half() if half and v.is_floating_point() else v).contiguous()
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=classifier.info.to_metadata())


def load_classifier(path=None, device: str = "auto") -> Classifier:
    """Load a classifier checkpoint (safetensors only: no code is unpickled).

    Parameters
    ----------
    path : path or str, optional
        A checkpoint file, the name of a shipped one (:data:`SHIPPED_CLASSIFIERS`: ``"leukemic"``, leukaemic
        vs normal, the default; ``"cell_type"``, the DeepAPL cell types), or None for the default.
    device : str

    Raises
    ------
    CheckpointError
        Missing, damaged, foreign, of another architecture or class list than its weights, with metadata out of
        :func:`~.checkpoint.classifier_metadata`'s schema, or with weights that are not finite floats.
    """
    from .device import resolve_device

    path = SHIPPED_CLASSIFIERS.get(str(path), Path(path)) if path else DEFAULT_CLASSIFIER
    meta, state = read_safetensors(path, CLASSIFIER_FORMAT)
    info = ClassifierInfo.from_metadata(meta, path)
    check_weights(state, path)
    net = build_network(info.architecture, len(info.classes), info.hidden, info.dropout)
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit a {info.architecture} with classes {list(info.classes)} "
                              f"({err})") from err
    net.eval().to(resolve_device(device))
    return Classifier(net=net, info=info, path=str(path))
