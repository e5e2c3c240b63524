"""Where torch runs and how fast (the device, mixed precision, denormal flushing), and what ran: the hardware and version."""

from __future__ import annotations

import contextlib
import functools
import os
import platform

import numpy as np

from .config import DEVICE_CHOICES


def resolve_device(device: str = DEVICE_CHOICES[0]):
    """``"auto"`` -> CUDA when available, else CPU; refuses ``"cuda"`` without a GPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU; use 'cpu' or 'auto'")
    if device not in DEVICE_CHOICES[1:]:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return torch.device(device)


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


def hardware(device) -> str:
    """The GPU's name, or the CPU's model and core count."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            name = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def package_version() -> str:
    """napari-leukemia's version, from the installed package's metadata (pyproject.toml is its one home)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-leukemia")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"
