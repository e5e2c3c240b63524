"""The cell classifier (DenseNet201 by default, or another backbone with the same head) and its checkpoint format
(safetensors, plain-data metadata)."""

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
#: File names torchvision gives its ImageNet weights in its cache (``small_cnn`` and ``cnn_transformer`` have none).
TORCHVISION_WEIGHTS = {"densenet201": "densenet201-c1103571.pth", "resnet18": "resnet18-f37072fd.pth",
                       "resnet50": "resnet50-11ad3fa6.pth", "vgg16": "vgg16-397923af.pth",
                       "efficientnet_b0": "efficientnet_b0-7f5810bc.pth"}


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
    """A backbone's ``features`` + the seeds' head: GAP, Dense(hidden) + ReLU, Dropout, Dense(num_classes).

    Two output logits with a softmax are the two-class form of the seeds' single sigmoid unit. The network
    names its last block (``last_block``: the children of ``features`` that ``tune="last_block"`` trains besides
    the head) and the layer Grad-CAM explains (``cam_layer``).

    Parameters
    ----------
    architecture : str
        One of :data:`~.config.CLASSIFIER_ARCHITECTURES`.
    """
    import torch
    from torch import nn

    if architecture not in CLASSIFIER_ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {CLASSIFIER_ARCHITECTURES}")
    features, channels, last_block, cam_name = _backbone(architecture)

    class CellClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.architecture = architecture
            self.last_block = last_block
            self.cam_name = cam_name
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
            return self.features.get_submodule(self.cam_name)

        def forward(self, x):
            x = self.features(x)
            if self.architecture == "densenet201":
                # torchvision applies an in-place ReLU after DenseNet's `features`; a plain one keeps Grad-CAM's
                # hooks on norm5 valid
                x = torch.relu(x)
            return self.head(x)

    return CellClassifier()


def _backbone(architecture: str):
    """``(features, channels, last_block, cam_name)`` of ``architecture``: the feature extractor, its output
    channels, the names of its children that form the last block, and the (dotted) name of the Grad-CAM layer."""
    from torch import nn
    from torchvision import models

    if architecture == "densenet201":
        return models.densenet201(weights=None).features, 1920, ("denseblock4", "norm5"), "norm5"
    if architecture.startswith("resnet"):
        trunk = getattr(models, architecture)(weights=None)
        features = nn.Sequential(OrderedDict((n, m) for n, m in trunk.named_children() if n not in ("avgpool", "fc")))
        return features, trunk.fc.in_features, ("layer4",), "layer4"
    if architecture == "vgg16":
        # vgg16().features and its initialisation, without building the 120M weights of its classifier
        features = models.vgg.make_layers(models.vgg.cfgs["D"])
        for m in features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # the last block: the fifth conv block, children 24-30 (3 x conv + ReLU, max-pool); Grad-CAM on its last ReLU
        return features, 512, tuple(str(i) for i in range(24, 31)), "29"
    if architecture == "efficientnet_b0":
        # the last MBConv stage (7) and the final 1x1 conv to 1280 channels (8)
        return models.efficientnet_b0(weights=None).features, 1280, ("7", "8"), "8"
    if architecture == "small_cnn":
        return _small_cnn(), 256, ("block4",), "block4.2"
    return _cnn_transformer(), 256, ("transformer",), "layer3"


def _small_cnn(widths=(32, 64, 128, 256)):
    """The seeds' small custom CNN: blocks of conv3x3, batch norm, ReLU and 2x2 max-pool (about 390k weights)."""
    from torch import nn

    blocks, c_in = OrderedDict(), 3
    for i, c_out in enumerate(widths, 1):
        blocks[f"block{i}"] = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                                            nn.ReLU(), nn.MaxPool2d(2))
        c_in = c_out
    return nn.Sequential(blocks)


def _cnn_transformer(width=256, grid=16, layers=2, heads=4):
    """A CNN-Transformer hybrid: ResNet18 up to ``layer3`` (stride 16, 256 channels), then its map as tokens
    through a Transformer encoder, reshaped back into a map.

    The learned positional embedding is a ``grid`` x ``grid`` map (that of a 256 px crop), resized bilinearly to
    the feature map of any crop size.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torchvision import models

    class MapTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.position = nn.Parameter(torch.zeros(1, width, grid, grid))
            nn.init.trunc_normal_(self.position, std=0.02)
            layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, activation="gelu",
                                               batch_first=True, norm_first=True)
            # no nested tensors: they only help padded sequences, and warn with norm_first
            self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(width), enable_nested_tensor=False)

        def forward(self, x):
            n, c, h, w = x.shape
            x = x + F.interpolate(self.position, size=(h, w), mode="bilinear", align_corners=False)
            tokens = self.encoder(x.flatten(2).transpose(1, 2))  # (N, h*w, c)
            return tokens.transpose(1, 2).reshape(n, c, h, w)

    trunk = models.resnet18(weights=None)
    stem = [(n, m) for n, m in trunk.named_children() if n not in ("layer4", "avgpool", "fc")]
    return nn.Sequential(OrderedDict([*stem, ("transformer", MapTransformer())]))


@dataclass
class Classifier:
    """A loaded classifier: the network (eval mode) and its :class:`ClassifierInfo`."""

    net: object
    info: ClassifierInfo
    path: str = ""
    feature_svm: object = None  #: a :class:`~.classical.FeatureSvm` pooled with the network (binary classes only)

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
    """torchvision's cached ImageNet weights of ``architecture``, if this machine has them (never for an
    architecture without ImageNet weights: ``small_cnn``, ``cnn_transformer``)."""
    import torch

    if architecture not in TORCHVISION_WEIGHTS:
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS[architecture]
    return path if path.is_file() else None


def load_imagenet_features(net, path) -> None:
    """Load a torchvision ImageNet state dict of ``net``'s architecture into ``net.features`` (safely, no unpickling
    of code).

    Raises
    ------
    CheckpointError
        Not a state dict of that architecture, or an architecture without ImageNet weights.
    """
    import torch

    if net.architecture not in TORCHVISION_WEIGHTS:
        raise CheckpointError(f"{path}: {net.architecture} has no ImageNet weights; start it from random weights")
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
        if key.startswith("features."):  # DenseNet, VGG, EfficientNet: their `features`, not the classifier
            features[key[len("features.") :]] = value
        elif net.architecture.startswith("resnet") and not key.startswith("fc."):  # ResNet: all but the classifier
            features[key] = value
    try:
        net.features.load_state_dict(features)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: not {net.architecture} ImageNet weights ({err})") from err


def save_classifier(classifier: Classifier, path, half: bool = True) -> None:
    """Write weights (half precision by default) and :class:`ClassifierInfo` to safetensors, atomically."""
    import torch
    from safetensors.torch import save_file

    from .io import atomic_path

    state = {}
    for k, v in classifier.net.state_dict().items():
        v = v.detach().to("cpu")
        state[k] = (v.half() if half and v.is_floating_point() else v).contiguous()
    meta = classifier.info.to_metadata()
    if classifier.feature_svm is not None:
        check_feature_svm_fits(classifier.info, path)
        arrays, meta["feature_svm"] = classifier.feature_svm.to_tensors()
        state.update({k: torch.from_numpy(v) for k, v in arrays.items()})
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def check_feature_svm_fits(info: ClassifierInfo, path) -> None:
    """A feature SVM gives one leukaemic probability: only a classifier of two classes may carry one."""
    if len(info.classes) != 2:
        raise CheckpointError(f"{path}: a feature SVM can only be pooled with a classifier of two classes, not of "
                              f"{list(info.classes)}")


def classifier_file(path=None) -> Path:
    """The checkpoint file ``path`` names: a file, a shipped classifier's name (:data:`SHIPPED_CLASSIFIERS`), or
    None for the default."""
    return SHIPPED_CLASSIFIERS.get(str(path), Path(path)) if path else DEFAULT_CLASSIFIER


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

    path = classifier_file(path)
    meta, state = read_safetensors(path, CLASSIFIER_FORMAT)
    info = ClassifierInfo.from_metadata(meta, path)
    check_weights(state, path)
    feature_svm = _feature_svm_of(meta, state, info, path)
    net = build_network(info.architecture, len(info.classes), info.hidden, info.dropout)
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit a {info.architecture} with classes {list(info.classes)} "
                              f"({err})") from err
    net.eval().to(resolve_device(device))
    return Classifier(net=net, info=info, path=str(path), feature_svm=feature_svm)


def _feature_svm_of(meta: dict, state: dict, info: ClassifierInfo, path):
    """The checkpoint's :class:`~.classical.FeatureSvm` (its tensors taken out of ``state``), or None."""
    from .classical import FEATURE_SVM_PREFIX, FeatureSvm

    arrays = {k: state.pop(k).float().numpy() for k in [k for k in state if k.startswith(FEATURE_SVM_PREFIX)]}
    if "feature_svm" not in meta and not arrays:
        return None
    if "feature_svm" not in meta:
        raise CheckpointError(f"{path}: holds feature SVM arrays without their settings (metadata 'feature_svm')")
    check_feature_svm_fits(info, path)
    return FeatureSvm.from_tensors(arrays, meta["feature_svm"], path)
