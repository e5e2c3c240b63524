"""The napari face of napari-leukemia: the only package that imports napari, qtpy or magicgui."""

import sys


def avoid_llvm_clash() -> bool:
    """Keep torch from importing triton once Mesa's software OpenGL (llvmpipe) has loaded its LLVM.

    Both carry an LLVM; importing triton after Mesa's crashes the whole process (seen under Xvfb).
    torch needs triton only to compile kernels, which napari-leukemia never does. Returns True when
    triton was blocked.
    """
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/maps") as fh:
            if "libLLVM" not in fh.read():
                return False
    except OSError:
        return False
    sys.modules["triton"] = None  # `import triton` now raises ImportError; torch then runs without it
    return True
