"""Leukocyte segmentation: the trained cellpose model (default) or the stain-based baseline.

This is the only module that imports cellpose.
"""

from __future__ import annotations

import functools
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, read_safetensors
from .config import SegmentConfig

SEGMENTER_FORMAT = "napari-leukemia-segmenter"
DEFAULT_SEGMENTER = Path(__file__).resolve().parent.parent / "models" / "leukocyte_cellpose.safetensors"


def cellpose_input(image: np.ndarray, lab: np.ndarray | None = None) -> np.ndarray:
    """The two channels cellpose sees: cell density and nuclear stain.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8

    Returns
    -------
    (H, W, 2) ndarray of float32
        Channel 0 is inverted luminance (every cell is bright), channel 1 is the blue-violet
        nuclear stain (-b* of CIE L*a*b*, clipped at 0).
    """
    if lab is None:
        from skimage import color

        lab = color.rgb2lab(image)
    density = 100.0 - lab[..., 0]
    nuclear = np.clip(-lab[..., 2], 0, None)
    return np.stack([density, nuclear], axis=-1).astype(np.float32)


def resolve_device(device: str = "auto"):
    """``"auto"`` -> CUDA when available, else CPU; refuses ``"cuda"`` without a GPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU; use 'cpu' or 'auto'")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return torch.device(device)


def save_segmenter(net, path, *, provenance: dict | None = None) -> None:
    """Save a cellpose 3 network as half-precision safetensors with its diameters and provenance."""
    from safetensors.torch import save_file

    from .io import atomic_path

    state = {k: v.detach().to("cpu").half().contiguous() for k, v in net.state_dict().items()}
    meta = {
        "format": SEGMENTER_FORMAT,
        "architecture": "cellpose3-cpnet",
        "diam_mean": str(float(net.diam_mean.item())),
        "nbase": json.dumps([int(n) for n in net.nbase]),
        "provenance": json.dumps(provenance or {}),
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


@functools.lru_cache(maxsize=4)
def load_segmenter(path=None, device: str = "auto"):
    """Load a leukocyte cellpose model saved by :func:`save_segmenter` (cached).

    Raises
    ------
    CheckpointError
        If the file is missing, damaged or not a napari-leukemia segmenter.
    """
    import torch

    path = Path(path) if path else DEFAULT_SEGMENTER
    meta, state = read_safetensors(path, SEGMENTER_FORMAT)
    dev = resolve_device(device)
    model = new_cellpose(float(meta["diam_mean"]), json.loads(meta.get("nbase", "[2, 32, 64, 128, 256]")), dev)
    state = {k: v.float() for k, v in state.items()}
    try:
        model.net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit a cellpose 3 network ({err})") from err
    model.net.eval()
    model.diam_mean = float(meta["diam_mean"])
    model.diam_labels = model.diam_mean
    model.provenance = json.loads(meta.get("provenance", "{}"))
    model.path = str(path)
    with torch.no_grad():
        model.net.diam_mean.fill_(model.diam_mean)
    return model


def new_cellpose(diam_mean: float, nbase, device):
    """An untrained cellpose 3 model whose U-Net has channel widths ``nbase`` (``[2, ...]``)."""
    import torch
    from cellpose import models
    from cellpose.resnet_torch import CPnet

    model = models.CellposeModel(pretrained_model=False, diam_mean=diam_mean, device=device, gpu=device.type == "cuda")
    if list(nbase) != list(model.nbase):

        class NarrowCPnet(CPnet):
            """CPnet with other widths; its style vector is zero-padded to the 256 values cellpose expects."""

            def forward(self, data):
                y, style, downsampled = super().forward(data)
                return y, torch.nn.functional.pad(style, (0, 256 - style.shape[1])), downsampled

        model.nbase = list(nbase)
        model.net = NarrowCPnet(model.nbase, model.nclasses, sz=3, mkldnn=model.mkldnn, max_pool=True,
                                diam_mean=diam_mean).to(device)
    model.net.nbase = list(model.nbase)
    return model


def segment_leukocytes(
    image: np.ndarray, cfg: SegmentConfig = SegmentConfig(), *, model=None, device: str = "auto"
) -> np.ndarray:
    """Find every leukocyte in an RGB smear.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
    cfg : SegmentConfig
        Method, expected diameter (estimated from the stain when ``None``) and thresholds.
    model : cellpose model, optional
        From :func:`load_segmenter`; the shipped model when omitted.

    Returns
    -------
    labels : (H, W) ndarray of int32
        0 is background, 1..N the leukocytes, numbered without gaps.
    """
    from skimage import color

    from .stain import estimate_diameter, stain_segment

    lab = color.rgb2lab(image)  # once: the stain estimate, the stain segmenter and cellpose's input share it
    diameter = cfg.diameter or estimate_diameter(image, lab)
    if diameter is None:
        # no blue-violet nuclear stain anywhere: a Wright-Giemsa field without leukocytes (give a
        # diameter to run the segmenter regardless, e.g. on another stain)
        return np.zeros(image.shape[:2], np.int32)
    if cfg.method == "stain":
        return stain_segment(image, diameter, cfg.min_area_fraction, lab)
    model = model or load_segmenter(None, device)
    x = cellpose_input(image, lab)
    labels = _cellpose_at(x, diameter, cfg, model)
    if labels.max() == 0 and cfg.diameter is None:
        # the stain estimate runs large where a nucleus fills its cell (blasts): look again at a smaller scale
        diameter /= RETRY_FACTOR
        labels = _cellpose_at(x, diameter, cfg, model)
    return labels


#: When nothing is found at an estimated diameter, cellpose runs once more at the diameter over this.
RETRY_FACTOR = 1.6


def _cellpose_at(x: np.ndarray, diameter: float, cfg: SegmentConfig, model) -> np.ndarray:
    """Run cellpose on ``x`` (:func:`cellpose_input`) resized so leukocytes of ``diameter`` px match the model."""
    import cv2
    from skimage.segmentation import relabel_sequential

    scale = model.diam_mean / diameter
    h, w = x.shape[:2]
    small = (max(16, round(w * scale)), max(16, round(h * scale)))
    x = cv2.resize(x, small, interpolation=cv2.INTER_AREA)
    # an empty field is a normal outcome here, not a warning; torch's sparse-tensor notice is noise
    logging.getLogger("cellpose.dynamics").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
        masks = model.eval(
            x,
            channel_axis=-1,
            diameter=model.diam_mean,
            flow_threshold=cfg.flow_threshold,
            cellprob_threshold=cfg.cellprob_threshold,
            min_size=-1,
        )[0]
    labels = upscale_labels(masks, (h, w))
    areas = np.bincount(labels.ravel())
    small_ids = np.nonzero(areas < cfg.min_area_fraction * np.pi / 4 * diameter**2)[0]
    labels[np.isin(labels, small_ids[small_ids > 0])] = 0
    return relabel_sequential(labels)[0].astype(np.int32)


def upscale_labels(small: np.ndarray, shape) -> np.ndarray:
    """Resize a label image to ``shape`` with smooth outlines (each cell's mask interpolated, then thresholded)."""
    import cv2
    from scipy import ndimage as ndi

    h, w = shape
    sy, sx = h / small.shape[0], w / small.shape[1]
    out = np.zeros((h, w), np.int32)
    for k, sl in enumerate(ndi.find_objects(small), start=1):
        if sl is None:
            continue
        r0, r1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, small.shape[0])
        c0, c1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, small.shape[1])
        R0, R1, C0, C1 = round(r0 * sy), round(r1 * sy), round(c0 * sx), round(c1 * sx)
        if R1 <= R0 or C1 <= C0:
            continue
        mask = cv2.resize((small[r0:r1, c0:c1] == k).astype(np.float32), (C1 - C0, R1 - R0), interpolation=cv2.INTER_LINEAR)
        view = out[R0:R1, C0:C1]
        view[(mask >= 0.5) & (view == 0)] = k
    return out
