"""Leukocyte segmentation: the trained cellpose model (default) or the stain-based baseline.

This is the only module that imports cellpose.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from .checkpoint import SEGMENTER_ARCHITECTURE, CheckpointError, check_weights, read_safetensors, segmenter_metadata
from .config import SegmentConfig
from .device import resolve_device

SEGMENTER_FORMAT = "napari-leukemia-segmenter"
#: Smallest leukocyte diameter (pixels) either segmenter accepts, given or estimated. Cellpose sees each field
#: resized so its leukocytes match the model's training diameter (20 px for the shipped model): at 8 px that
#: enlarges a field (at most a ``tile_size`` tile with its margins) 2.5x, and memory stays bounded; tinier
#: cells would enlarge it without limit (20x at 1 px), and are too small to outline anyway.
MIN_DIAMETER = 8.0
#: Most pixels cellpose sees in one resized field: 2.4 times what the shipped model sees at ``MIN_DIAMETER``
#: in a 2048 px tile, so that a model trained at up to 30 px fits too; beyond it, :func:`_cellpose_at` refuses.
MAX_CELLPOSE_PIXELS = 64_000_000
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


@contextlib.contextmanager
def quiet_third_party():
    """Silence, within the block only, the known notices of cellpose and torch that are no fault of ours.

    Torch's ``torch.jit.script_method is deprecated`` FutureWarning, raised where cellpose first runs a
    network on the CPU (torch then defines its mkldnn layers), and torch's sparse-tensor notice.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit.script_method` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
        yield


def check_diameter(diameter: float, estimated: bool = False) -> None:
    """Refuse a leukocyte diameter under :data:`MIN_DIAMETER` with a message saying why.

    Raises
    ------
    ValueError
    """
    if diameter >= MIN_DIAMETER:
        return
    if estimated:
        raise ValueError(f"the stain suggests leukocytes {diameter:.1f} px across, under the minimum of "
                         f"{MIN_DIAMETER:g} px: the image's resolution is too low to segment them (give the "
                         "diameter if the estimate is wrong)")
    raise ValueError(f"leukocyte diameter {diameter:g} px is under the minimum of {MIN_DIAMETER:g} px (cellpose "
                     "would enlarge the image beyond what memory holds)")


def save_segmenter(net, path, *, provenance: dict | None = None) -> None:
    """Save a cellpose 3 network as half-precision safetensors with its diameters and provenance."""
    from safetensors.torch import save_file

    from .io import atomic_path

    state = {k: v.detach().to("cpu").half().contiguous() for k, v in net.state_dict().items()}
    meta = {
        "format": SEGMENTER_FORMAT,
        "architecture": SEGMENTER_ARCHITECTURE,
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
        If the file is missing, damaged, not a napari-leukemia segmenter, with metadata out of
        :func:`~.checkpoint.segmenter_metadata`'s schema or with weights that are not finite floats.
    """
    import torch

    path = Path(path) if path else DEFAULT_SEGMENTER
    meta, state = read_safetensors(path, SEGMENTER_FORMAT)
    settings = segmenter_metadata(meta, path)
    check_weights(state, path)
    dev = resolve_device(device)
    model = new_cellpose(settings["diam_mean"], settings["nbase"], dev)
    state = {k: v.float() for k, v in state.items()}
    try:
        model.net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit a cellpose 3 network ({err})") from err
    model.net.eval()
    model.diam_mean = settings["diam_mean"]
    model.diam_labels = model.diam_mean
    model.provenance = settings["provenance"]
    model.path = str(path)
    with torch.no_grad():
        model.net.diam_mean.fill_(model.diam_mean)
    return model


@contextlib.contextmanager
def numba_kernels_cached():
    """Import cellpose with its numba kernels cached on disk: ``cellpose.dynamics`` compiles them eagerly on every
    import (``@njit(signature)``, no ``cache=True``), 5-15 s of CPU in each new process (CLI, napari, every cluster
    worker); with the cache only the first import compiles. numba keeps the cache beside the module, or in the
    user's cache folder when that is read-only, and recompiles when cellpose's source or the CPU changes."""
    import sys

    if "cellpose.dynamics" in sys.modules:
        yield
        return
    import numba

    njit = numba.njit
    numba.njit = functools.partial(njit, cache=True)
    try:
        yield
    finally:
        numba.njit = njit


def new_cellpose(diam_mean: float, nbase, device):
    """An untrained cellpose 3 model whose U-Net has channel widths ``nbase`` (``[2, ...]``)."""
    import torch

    with quiet_third_party(), numba_kernels_cached():
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
    image: np.ndarray, cfg: SegmentConfig = SegmentConfig(), *, model=None, device: str = "auto", progress=None
) -> np.ndarray:
    """Find every leukocyte in an RGB smear.

    Images with a side longer than ``cfg.tile_size`` are segmented tile by tile (:func:`segment_tiled`).

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
    cfg : SegmentConfig
        Method, expected diameter (estimated from the stain when ``None``), thresholds and tiling.
    model : cellpose model, optional
        From :func:`load_segmenter`; the shipped model when omitted.
    progress : callable, optional
        ``progress(done, total)`` after each tile of a tiled image.

    Returns
    -------
    labels : (H, W) ndarray of int32
        0 is background, 1..N the leukocytes, numbered without gaps.

    Raises
    ------
    ValueError
        When the diameter, given or estimated, is under :data:`MIN_DIAMETER` (:func:`check_diameter`), or
        cellpose would see a field of over :data:`MAX_CELLPOSE_PIXELS`.
    """
    if max(image.shape[:2]) > cfg.tile_size:
        from .tiling import segment_tiled

        return segment_tiled(image, cfg, model=model, device=device, progress=progress)
    from skimage import color

    from .stain import estimate_diameter

    lab = color.rgb2lab(image)  # once: the stain estimate, the stain segmenter and cellpose's input share it
    diameter = cfg.diameter or estimate_diameter(image, lab)
    if diameter is None:
        # no blue-violet nuclear stain anywhere: a Wright-Giemsa field without leukocytes (give a
        # diameter to run the segmenter regardless, e.g. on another stain)
        return np.zeros(image.shape[:2], np.int32)
    check_diameter(diameter, estimated=cfg.diameter is None)
    if cfg.method == "cellpose":
        model = model or load_segmenter(None, device)
    labels = segment_at(image, lab, diameter, cfg, model)
    if cfg.diameter is None and cfg.method == "cellpose":
        labels = _find_missed(image, lab, labels, diameter, cfg, model)
    return labels


def _find_missed(image, lab, labels, diameter, cfg, model) -> np.ndarray:
    """Look again, at smaller scales, where a nucleus-sized patch of stain lies outside every cell.

    The stain estimate of the diameter runs large where nuclei fill their cells or touch (clusters of
    blasts); cellpose then misses those cells. Up to ``RETRIES`` times, cellpose runs at the diameter over
    ``RETRY_FACTOR`` (not below :data:`MIN_DIAMETER`) and the cells it finds on that uncovered stain,
    overlapping no kept cell by more than a fifth and no smaller than ``cfg.min_area_fraction`` of a cell of
    the field's own diameter, are added (a smaller scale must not let in the stained debris the field's scale
    drops: on BCCD, two platelet clumps of 0.11 and 0.14 of a leukocyte's area).
    """
    from skimage.segmentation import relabel_sequential

    from .stain import CELL_OVER_NUCLEUS, nucleus_mask

    nucleus = nucleus_mask(image, lab)
    min_area = cfg.min_area_fraction * np.pi / 4 * diameter**2
    for _ in range(RETRIES):
        missing = nucleus & (labels == 0)
        diameter /= RETRY_FACTOR
        if diameter < MIN_DIAMETER:
            break
        nucleus_area = np.pi / 4 * (diameter / CELL_OVER_NUCLEUS) ** 2
        if missing.sum() < nucleus_area:
            break
        finer = segment_at(image, lab, diameter, cfg, model)
        labels = _add_on_stain(labels, finer, missing, 0.5 * nucleus_area, min_area)
    return relabel_sequential(labels)[0].astype(np.int32)


def _add_on_stain(labels, finer, missing, min_stain: float, min_area: float) -> np.ndarray:
    """Add the cells of ``finer`` of ``min_area`` pixels or more that cover ``min_stain`` pixels of uncovered
    nuclear stain and overlap no cell by over a fifth."""
    from scipy import ndimage as ndi

    ids = np.arange(1, int(finer.max()) + 1)
    if len(ids) == 0:
        return labels
    area = ndi.sum_labels(np.ones_like(finer), finer, ids)
    overlap = ndi.sum_labels(labels > 0, finer, ids)
    on_stain = ndi.sum_labels(missing, finer, ids)
    n = int(labels.max())
    for k in ids[(overlap <= 0.2 * area) & (on_stain >= min_stain) & (area >= min_area)]:
        n += 1
        labels[(finer == k) & (labels == 0)] = n
    return labels


def segment_at(image: np.ndarray, lab: np.ndarray, diameter: float, cfg: SegmentConfig, model) -> np.ndarray:
    """One field (or tile) at a known leukocyte diameter, by ``cfg.method``."""
    from .stain import stain_segment

    if cfg.method == "stain":
        return stain_segment(image, diameter, cfg.min_area_fraction, lab)
    return _cellpose_at(cellpose_input(image, lab), diameter, cfg, model)


#: Where stain is left outside every cell at an estimated diameter, cellpose looks again at the diameter
#: over this, up to ``RETRIES`` times.
RETRY_FACTOR = 1.6
RETRIES = 2


def _cellpose_at(x: np.ndarray, diameter: float, cfg: SegmentConfig, model) -> np.ndarray:
    """Run cellpose on ``x`` (:func:`cellpose_input`) resized so leukocytes of ``diameter`` px match the model."""
    import cv2
    from skimage.segmentation import relabel_sequential

    scale = model.diam_mean / diameter
    h, w = x.shape[:2]
    small = (max(16, round(w * scale)), max(16, round(h * scale)))
    if small[0] * small[1] > MAX_CELLPOSE_PIXELS:
        raise ValueError(f"cellpose would see this {h}x{w} px field enlarged {scale:.1f}x (the model's leukocyte "
                         f"diameter, {model.diam_mean:g} px, / {diameter:g} px) to over {MAX_CELLPOSE_PIXELS / 1e6:g}"
                         " million pixels: give a larger leukocyte diameter, or a segmenter trained at a smaller one")
    x = cv2.resize(x, small, interpolation=cv2.INTER_AREA)
    # an empty field is a normal outcome here, not a warning
    logging.getLogger("cellpose.dynamics").setLevel(logging.ERROR)
    with quiet_third_party():
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
