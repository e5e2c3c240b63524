"""Batched classification of cell crops, on CUDA when present, else a fast CPU path."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .device import autocast_for
from .model import Classifier
from .preprocess import to_tensor


def _device_of(net):
    return next(net.parameters()).device


def predict_logits(classifier: Classifier, crops: np.ndarray, *, batch_size: int = 32, fast: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Logits ``(N, C)`` for uint8 crops ``(N, S, S, 3)`` made by :func:`~.preprocess.crop_cells`.

    Parameters
    ----------
    batch_size : int
        Crops per forward pass, at least 1.
    fast : bool
        channels_last memory and fp16 autocast on CUDA, bf16 on CPUs with native bf16; predictions match fp32 (see tests).
    progress : callable, optional
        Called as ``progress(done, total)`` after every batch.

    Raises
    ------
    ValueError
        When ``batch_size`` is not a whole number of at least 1.
    """
    import torch

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")

    net = classifier.net
    device = _device_of(net)
    net.eval()
    if fast:
        net.to(memory_format=torch.channels_last)
    out = np.empty((len(crops), len(classifier.info.classes)), np.float32)
    with torch.inference_mode(), autocast_for(device, fast):
        for start in range(0, len(crops), batch_size):
            x = to_tensor(crops[start : start + batch_size], classifier.info.crop).to(device)
            if fast:
                x = x.contiguous(memory_format=torch.channels_last)
            out[start : start + len(x)] = net(x).float().cpu().numpy()
            if progress:
                progress(start + len(x), len(crops))
    return out


def probabilities(classifier: Classifier, logits: np.ndarray) -> np.ndarray:
    """Calibrated class probabilities: softmax of logits over the checkpoint's temperature."""
    z = logits / classifier.info.temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def p_leukemic(classifier: Classifier, proba: np.ndarray) -> np.ndarray:
    """Probability that each cell is leukaemic: the sum over the checkpoint's leukaemic classes."""
    return proba[:, classifier.leukemic_index()].sum(axis=1)
