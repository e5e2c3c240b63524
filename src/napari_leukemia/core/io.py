"""Reading smear images into RGB uint8 and writing results atomically."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

#: Largest image accepted (pixels). A 20,000 x 20,000 field is 4e8.
MAX_PIXELS = 4 * 10**8
#: Smallest side accepted (pixels).
MIN_SIDE = 32


class ImageError(ValueError):
    """An image that cannot be analysed; the message names the source and the problem."""


def as_rgb8(array, name: str = "image") -> np.ndarray:
    """Convert an image array to RGB uint8, refusing what cannot be a smear.

    Parameters
    ----------
    array : (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array
        Grayscale, RGB or RGBA, of any integer or float dtype. 16-bit and float images are
        scaled by their range; RGBA is composited over white.
    name : str
        Used in error messages (file name or layer name).

    Returns
    -------
    (H, W, 3) ndarray of uint8
    """
    a = np.asarray(array)
    if a.size == 0:
        raise ImageError(f"{name}: the image is empty")
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (3, 4):
        a = np.moveaxis(a, 0, -1)  # channels-first
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageError(
            f"{name}: expected a 2D grayscale, RGB or RGBA image, got shape {a.shape}"
        )
    h, w = a.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{name}: image is {w}x{h} px, too small to hold a leukocyte (min {MIN_SIDE} px)")
    if h * w > MAX_PIXELS:
        raise ImageError(
            f"{name}: image is {w}x{h} px, larger than {MAX_PIXELS:.0e} pixels; split it into fields first"
        )
    if a.dtype == bool:
        raise ImageError(f"{name}: a boolean mask, not a stained smear")
    if a.dtype != np.uint8:
        f = a.astype(np.float32)
        if not np.isfinite(f).all():
            raise ImageError(f"{name}: image holds NaN or infinite values")
        if np.issubdtype(a.dtype, np.integer):
            top = 65535.0 if a.dtype.itemsize >= 2 and f.max() > 255 else 255.0
            f = f / top
        elif f.max() > 1.0:
            f = f / f.max()
        a = np.clip(np.round(f * 255), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    elif a.shape[-1] == 4:
        alpha = a[..., 3:4].astype(np.float32) / 255
        a = np.round(a[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    if int(a.max()) == int(a.min()):
        raise ImageError(f"{name}: image is uniform (every pixel is {int(a.flat[0])}), nothing to analyse")
    return np.ascontiguousarray(a)


def read_image(path) -> np.ndarray:
    """Read a smear image (JPEG, PNG, TIFF, ...) as RGB uint8.

    Raises
    ------
    ImageError
        If the file is missing, truncated, corrupt or not a usable smear image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()  # forces a full decode: truncated files fail here
                data = np.asarray(im.convert("RGBA") if im.mode in ("P", "LA") else im)
    except Exception as err:  # decoders raise many types; the message says which file and why
        raise ImageError(f"{path}: cannot be decoded as an image ({err})") from err
    return as_rgb8(data, str(path))


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the mode a plain open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path, data) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def write_csv(path, rows, fieldnames) -> None:
    """Write dict ``rows`` as CSV with these columns (missing values empty, others ignored), atomically."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def finite(obj):
    """``obj`` with NaN and infinities replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
