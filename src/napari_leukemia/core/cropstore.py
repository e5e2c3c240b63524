"""A compact file of preprocessed cell crops: JPEG-encoded crops plus a plain table (no pickling)."""

from __future__ import annotations

import io as _io
import json

import numpy as np


def save_crops(path, images: np.ndarray, table: dict[str, list], quality: int = 95) -> None:
    """Write uint8 crops ``(N, S, S, 3)`` as JPEG bytes with per-crop columns ``table`` to an ``.npz``.

    Colour is kept at full resolution (4:4:4): chroma subsampling alone about doubles the error on small crops.
    """
    from PIL import Image

    from .io import atomic_path

    blobs = []
    for im in images:
        buf = _io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality, subsampling=0)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, data=np.concatenate(blobs) if blobs else np.zeros(0, np.uint8), offsets=offsets,
                     table=np.frombuffer(json.dumps(table).encode(), np.uint8))


def load_crops(path) -> tuple[np.ndarray, dict[str, list]]:
    """Read what :func:`save_crops` wrote: ``(images, table)``."""
    from PIL import Image

    with np.load(path, allow_pickle=False) as z:
        data, offsets, table = z["data"], z["offsets"], json.loads(z["table"].tobytes())
    images = [np.asarray(Image.open(_io.BytesIO(data[a:b].tobytes())).convert("RGB")) for a, b in zip(offsets[:-1], offsets[1:])]
    return (np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)), table
