"""Reading smear images into RGB uint8 and writing results atomically."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

#: Largest image accepted (pixels): 4e8 (a 20,000 x 20,000 field) is 1.2 GB as RGB uint8 and the analysis needs
#: several times that; larger scans must be split into fields. Checked from the file's header, before decoding.
MAX_PIXELS = 4 * 10**8
#: Smallest side accepted (pixels).
MIN_SIDE = 32
#: Bit depths integer samples are taken to use: the smallest that holds the image's maximum (12-bit data in a 16-bit
#: file has a maximum of at most 4095 and is scaled by 4095, not 65535).
BIT_DEPTHS = (8, 10, 12, 14, 16)
#: Images whose brightest value (of 255, after scaling) is below this are refused: a bright-field smear has a
#: bright background, so such an image is underexposed or of another kind (fluorescence, a mask, a label image).
MIN_BRIGHTEST = 64
#: A pixel counts as coloured when its channels differ by more than this (of 255; JPEG's chroma noise stays below).
GRAY_TOLERANCE = 8
#: An RGB image with fewer coloured pixels than this fraction is grayscale (stained smears measured: 20 % or more).
MIN_COLOURED = 0.01

_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
_PIL_LOCK = threading.Lock()


class ImageError(ValueError):
    """An image that cannot be analysed; the message names the source and the problem."""


def as_rgb8(array, name: str = "image", *, white=None) -> np.ndarray:
    """Convert a stained-smear image array to RGB uint8, refusing what cannot be a smear.

    Parameters
    ----------
    array : (H, W, 3) or (H, W, 4) array, or (3, H, W) / (4, H, W)
        RGB or RGBA of any integer or float dtype ((H, W) and (H, W, 1) arrays are refused as grayscale). Values
        are scaled to 0-255 by these rules:

        - uint8 is kept as it is;
        - other integers, and floats above 1.5, are divided by ``white``, or when it is None by ``2**b - 1`` with
          ``b`` the smallest of :data:`BIT_DEPTHS` that holds the image's maximum (beyond 16 bits: by the maximum);
        - floats with a maximum of at most 1.5 are taken as [0, 1], multiplied by 255 and clipped (resampling
          overshoots 1 a little);
        - data with negative values is stretched from its minimum to its maximum;
        - boolean arrays are refused (a mask, not a smear), as are NaN and infinite values.

        RGBA is composited over white (transparent areas become bright background); the alpha channel is scaled
        by its own range, and ignored when it is zero everywhere (a writer's mistake, not an invisible smear).
    name : str
        Used in error messages (file name or layer name).
    white : float, optional
        The sample value of full intensity for integer data (e.g. 4095 for 12-bit data, from a file's tags);
        ignored when the data exceeds it.

    Returns
    -------
    (H, W, 3) ndarray of uint8

    Raises
    ------
    ImageError
        If the image is empty, of another shape, too small, too large, boolean, not finite, uniform, too dark
        (brightest value below :data:`MIN_BRIGHTEST`) or grayscale (a single channel, or fewer than
        :data:`MIN_COLOURED` of the pixels with channels more than :data:`GRAY_TOLERANCE` apart): the analysis
        finds leukocytes by their stain colour and needs a colour (Wright-Giemsa / MGG stained) image.
    """
    a = np.asarray(array)
    if a.size == 0:
        raise ImageError(f"{name}: the image is empty")
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # channels-first
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageError(f"{name}: expected a 2D RGB or RGBA image, got shape {a.shape}")
    h, w = a.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{name}: image is {w}x{h} px, too small to hold a leukocyte (min {MIN_SIDE} px)")
    check_pixels(name, w, h)
    if a.dtype == bool:
        raise ImageError(f"{name}: a boolean mask, not a stained smear")
    if a.dtype.kind not in "uif":
        raise ImageError(f"{name}: pixels of type {a.dtype} are not image intensities")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ImageError(f"{name}: image holds NaN or infinite values")
    alpha = None
    if a.ndim == 3 and a.shape[-1] == 4:
        a, alpha = a[..., :3], a[..., 3]
    a = _scaled(a, white)
    if alpha is not None and alpha.any():
        alpha = _scaled(alpha)[..., None].astype(np.float32) / 255
        a = np.round(a * alpha + 255 * (1 - alpha)).astype(np.uint8)
    top, bottom = int(a.max()), int(a.min())
    if top == bottom:
        raise ImageError(f"{name}: image is uniform (every pixel is {top}), nothing to analyse")
    if top < MIN_BRIGHTEST:
        raise ImageError(f"{name}: image is almost black (brightest value {top} of 255); a bright-field smear has a "
                         f"bright background: check the exposure, or the bit depth the file was written with")
    if a.ndim == 2 or _coloured_fraction(a) < MIN_COLOURED:
        raise ImageError(f"{name}: a grayscale image; leukocytes are found by their stain colour, so a colour "
                         f"(Wright-Giemsa / MGG stained) image is needed")
    return np.ascontiguousarray(a)


def check_pixels(name, width: int, height: int) -> None:
    """Raise :class:`ImageError` if a ``width`` x ``height`` image is over :data:`MAX_PIXELS`."""
    if width * height > MAX_PIXELS:
        raise ImageError(f"{name}: image is {width}x{height} px, larger than {MAX_PIXELS:.0e} pixels "
                         f"(it would not fit in memory for the analysis); split it into fields first")


def _scaled(a: np.ndarray, white=None) -> np.ndarray:
    """``a`` scaled to uint8 by the rules of :func:`as_rgb8`, a block of rows at a time (large scans)."""
    if a.dtype == np.uint8:
        return a
    lo, hi = float(a.min()), float(a.max())
    offset = 0.0
    if lo < 0:
        offset, top = lo, hi - lo
    elif white and a.dtype.kind in "ui" and white >= hi:
        top = float(white)
    elif a.dtype.kind == "f" and hi <= 1.5:
        top = 1.0
    else:
        top = next((2.0**b - 1 for b in BIT_DEPTHS if hi < 2**b), hi)
    scale = 255.0 / top if top > 0 else 0.0
    out = np.empty(a.shape, np.uint8)
    rows = max(1, 2**22 // max(1, a[0].size))
    for i in range(0, len(a), rows):
        block = (a[i:i + rows].astype(np.float64) - offset) * scale
        out[i:i + rows] = np.clip(np.round(block), 0, 255)
    return out


def _coloured_fraction(rgb: np.ndarray) -> float:
    """Fraction of pixels whose channels differ by more than :data:`GRAY_TOLERANCE` (on about 1e6 of them)."""
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 1e6)))
    a = rgb[::step, ::step].astype(np.int16)
    return float(((a.max(-1) - a.min(-1)) > GRAY_TOLERANCE).mean())


def read_image(path) -> np.ndarray:
    """Read a stained-smear image (JPEG, PNG, TIFF, BMP, ...) as RGB uint8.

    TIFF files are read with tifffile, keeping their bit depth: integer samples are scaled by the file's
    ``SMaxSampleValue`` tag, else by ``BitsPerSample`` when it is less than the array's (packed 12-bit), else by the
    rule of :func:`as_rgb8`. TIFFs tifffile cannot give as gray or RGB samples (palette, CMYK, YCbCr, ...) and all
    other formats are read with PIL, whose modes are converted to RGB (CMYK, YCbCr, palette, ...) or RGBA (modes
    with transparency); 16-bit, 32-bit and float single-channel modes keep their values. PIL's decompression-bomb
    warning is not used: the size is checked against :data:`MAX_PIXELS` from the header instead. The result must
    pass :func:`as_rgb8`'s checks.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    (H, W, 3) ndarray of uint8

    Raises
    ------
    ImageError
        If the path is missing or a directory, the file is empty, truncated, corrupt, too large, or not a usable
        colour smear image; the message names the file and the problem.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)")
    white = None
    try:
        with open(path, "rb") as f:
            tiff = f.read(4) in _TIFF_MAGIC
        data = None
        if tiff:
            data, white = _read_tiff(path)
        if data is None:
            data = _read_pil(path)
    except ImageError:
        raise
    except MemoryError as err:
        raise ImageError(f"{path}: too large to fit in memory") from err
    except PermissionError as err:
        raise ImageError(f"{path}: cannot be read ({err.strerror})") from err
    except Exception as err:  # decoders raise many types; the message says which file and why
        raise ImageError(f"{path}: cannot be decoded as an image ({err})") from err
    return as_rgb8(data, str(path), white=white)


def _read_tiff(path):
    """``(array, white)`` of a gray or RGB TIFF's first image, or ``(None, None)`` for PIL to read it."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        check_pixels(path, page.imagewidth, page.imagelength)
        if tif.series[0].size > 4 * MAX_PIXELS:  # a stack of many pages: refused before it is read
            raise ImageError(f"{path}: holds {tif.series[0].shape} samples, more than a field of {MAX_PIXELS:.0e} "
                             f"pixels; save one field per file")
        if page.photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
            return None, None
        data = tif.series[0].asarray()
        white = page.tags.valueof(341)  # SMaxSampleValue
        if white is not None:
            white = float(np.max(white))
        elif data.dtype.kind in "ui" and page.bitspersample < 8 * data.dtype.itemsize:
            white = 2.0**page.bitspersample - 1
        return data, white


def _read_pil(path) -> np.ndarray:
    """A PIL-readable file as an array: RGB, RGBA, or the single channel of a gray mode."""
    from PIL import Image

    with _PIL_LOCK:  # lift PIL's global decompression-bomb limit while this header is read; MAX_PIXELS applies
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    with im:
        check_pixels(path, *im.size)
        im.load()  # forces a full decode: truncated files fail here
        if im.mode in ("1", "L", "I", "F", "RGB", "RGBA") or im.mode.startswith("I;16"):
            return np.asarray(im)
        transparent = "A" in im.mode or "a" in im.mode or "transparency" in im.info
        return np.asarray(im.convert("RGBA" if transparent else "RGB"))


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
