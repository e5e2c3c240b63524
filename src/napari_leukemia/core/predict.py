"""Batched classification of cell crops, on CUDA when present, else a fast CPU path."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import numpy as np

from .model import Classifier
from .preprocess import to_tensor


def _device_of(net):
    return next(net.parameters()).device


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_for(device, fast: bool = True):
    """Mixed precision context: bf16 on CPUs that support it, fp16 on CUDA; a no-op when ``fast`` is off."""
    import torch

    if not fast:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if not cpu_has_bf16():
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


def flush_denormals(device) -> None:
    """Make this thread, and the threads it starts from now on, treat denormal floats as zero on a CPU.

    Training and Grad-CAM of a trained DenseNet201 make denormal activations and gradients, and x86 CPUs
    compute with them several times slower (a training step 14 s -> 3.4 s, ``scripts/benchmark.py``). They
    are below 1e-38: dropping them changes no result. The flag is per thread and torch's intra-op threads
    copy it when they start, so call this before the first torch computation of the thread (as
    :func:`~.fit.fit_classifier` does). A no-op on CUDA.
    """
    import torch

    if device.type == "cpu":
        np.finfo(np.float32), np.finfo(np.float64)  # cached by numpy now, so it never sees (and warns of) flushed subnormals
        torch.set_flush_denormal(True)


def predict_logits(classifier: Classifier, crops: np.ndarray, *, batch_size: int = 32, fast: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Logits ``(N, C)`` for uint8 crops ``(N, S, S, 3)`` made by :func:`~.preprocess.crop_cells`.

    Parameters
    ----------
    fast : bool
        channels_last memory and fp16 autocast on CUDA, bf16 on CPUs with native bf16; predictions match fp32 (see tests).
    progress : callable, optional
        Called as ``progress(done, total)`` after every batch.
    """
    import torch

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
