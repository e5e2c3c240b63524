"""Safe reading of model files: safetensors only, tagged with the kind of model they hold, their metadata checked
by one schema per kind (:func:`classifier_metadata`, :func:`segmenter_metadata`) and their weights by
:func:`check_weights`."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from .config import CLASSIFIER_ARCHITECTURES

#: The network a segmenter file holds (:func:`~.segment.save_segmenter`).
SEGMENTER_ARCHITECTURE = "cellpose3-cpnet"


class CheckpointError(ValueError):
    """A model file that is not ours, is damaged, or does not fit."""


def read_safetensors(path: Path, expected_format: str):
    """Metadata and tensors of a safetensors file, checked to carry ``format: expected_format``.

    Raises
    ------
    CheckpointError
        Missing, unreadable (damaged, truncated, another format) or of another kind.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (damaged, truncated or another format: {err})"
        ) from err
    if meta.get("format") != expected_format:
        raise CheckpointError(
            f"{path}: not a {expected_format} file (format tag {meta.get('format')!r}); "
            "was it saved by napari-leukemia?"
        )
    return meta, state


# --- the schema of the metadata napari-leukemia writes (save_classifier, save_segmenter) -------------------------------
# Every value is a string; the project writes each one as JSON. A field that is missing, not JSON, of another type or
# out of range raises a CheckpointError naming the file, the field and the problem.

_REQUIRED = object()
#: The cellpose U-Net widths of segmenters saved before ``nbase`` was written.
CELLPOSE_DEFAULT_NBASE = (2, 32, 64, 128, 256)
#: Crop settings every classifier carries; ``window`` came later (0, fitted to the cell, when absent).
_CROP_REQUIRED = ("size", "margin", "mask_outside", "mean", "std")


def _bad(path, name: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: metadata field {name!r} {problem}")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_field(meta: dict, path, name: str, default=_REQUIRED):
    """The decoded JSON value of metadata field ``name`` (``default`` when absent, or an error when required)."""
    if name not in meta:
        if default is _REQUIRED:
            raise _bad(path, name, "is missing")
        return default
    try:
        return json.loads(meta[name])
    except json.JSONDecodeError as err:
        raise _bad(path, name, f"is not valid JSON ({err.msg}): {_shown(meta[name])}") from err


def _number(value, path, name: str, *, low: float, high: float = math.inf, low_open: bool = False) -> float:
    """``value`` as a float, refused unless it is a finite number within ``[low, high)`` (``(low, high)`` if ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(path, name, f"must be a number, got {_shown(value)}")
    if not math.isfinite(value):
        raise _bad(path, name, f"must be a finite number, got {value}")
    if value < low or (low_open and value == low) or value >= high:
        if high < math.inf:
            wanted = f"within {'(' if low_open else '['}{low}, {high})"
        else:
            wanted = f"{'above' if low_open else 'at least'} {low}"
        raise _bad(path, name, f"must be {wanted}, got {value}")
    return float(value)


def _integer(value, path, name: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(path, name, f"must be an integer, got {_shown(value)}")
    if value < low:
        raise _bad(path, name, f"must be at least {low}, got {value}")
    return value


def _names(value, path, name: str) -> tuple[str, ...]:
    """A list of distinct, non-empty strings, as a tuple."""
    if not isinstance(value, list):
        raise _bad(path, name, f"must be a list of names, got {type(value).__name__} {_shown(value)}")
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise _bad(path, name, f"must hold non-empty names, got {_shown(item)} in {_shown(value)}")
    repeated = sorted({item for item in value if value.count(item) > 1})
    if repeated:
        raise _bad(path, name, f"names {repeated} more than once")
    return tuple(value)


def _json_object(meta: dict, path, name: str, default=_REQUIRED) -> dict:
    value = _json_field(meta, path, name, default)
    if not isinstance(value, dict):
        raise _bad(path, name, f"must be a JSON object, got {type(value).__name__} {_shown(value)}")
    return value


def _crop(meta: dict, path):
    """The :class:`~.config.CropConfig` of a classifier: each setting's type here, its range by CropConfig itself."""
    from .config import CropConfig

    crop = _json_object(meta, path, "crop")
    names = {f.name for f in dataclasses.fields(CropConfig)}
    unknown = sorted(set(crop) - names)
    if unknown:
        raise _bad(path, "crop", f"holds unknown settings {unknown}")
    missing = [k for k in _CROP_REQUIRED if k not in crop]
    if missing:
        raise _bad(path, "crop", f"lacks the settings {missing}")
    values = {"size": _integer(crop["size"], path, "crop.size", low=1),
              "margin": _number(crop["margin"], path, "crop.margin", low=0),
              "window": _number(crop.get("window", 0.0), path, "crop.window", low=0)}
    if not isinstance(crop["mask_outside"], bool):
        raise _bad(path, "crop.mask_outside", f"must be true or false, got {_shown(crop['mask_outside'])}")
    values["mask_outside"] = crop["mask_outside"]
    for key in ("mean", "std"):
        channels = crop[key]
        if not isinstance(channels, list) or len(channels) != 3:
            raise _bad(path, f"crop.{key}", f"must be a list of 3 numbers (R, G, B), got {_shown(channels)}")
        values[key] = tuple(_number(c, path, f"crop.{key}", low=0, low_open=key == "std") for c in channels)
    try:
        return CropConfig(**values)
    except ValueError as err:
        raise _bad(path, "crop", f"is out of range: {err}") from err


def classifier_metadata(meta: dict, path) -> dict:
    """The :class:`~.model.ClassifierInfo` fields of a classifier's metadata, each checked.

    Parameters
    ----------
    meta : dict of str to str
        The safetensors metadata, as :meth:`~.model.ClassifierInfo.to_metadata` writes it.
    path : path
        The file, named in errors.

    Returns
    -------
    dict
        ``architecture`` (one of :data:`~.config.CLASSIFIER_ARCHITECTURES`), ``classes`` and ``leukemic``
        (tuples of str), ``crop`` (CropConfig), ``temperature`` (positive float),
        ``hidden`` (int >= 1), ``dropout`` (float in [0, 1)), ``provenance`` (dict).

    Raises
    ------
    CheckpointError
        A field missing, not JSON, of another type or out of range, named with the file.
    """
    classes = _names(_json_field(meta, path, "classes"), path, "classes")
    if len(classes) < 2:
        raise _bad(path, "classes", f"must name at least two classes, got {list(classes)}")
    leukemic = _names(_json_field(meta, path, "leukemic"), path, "leukemic")
    strangers = [c for c in leukemic if c not in classes]
    if strangers:
        raise _bad(path, "leukemic", f"names {strangers}, which are not among the classes {list(classes)}")
    if not leukemic or set(leukemic) == set(classes):
        raise _bad(path, "leukemic", f"must name some but not all of the classes {list(classes)}, got {list(leukemic)}")
    architecture = meta.get("architecture")
    if architecture not in CLASSIFIER_ARCHITECTURES:
        raise _bad(path, "architecture", f"must be one of {list(CLASSIFIER_ARCHITECTURES)}, got {_shown(architecture)}")
    return {
        "architecture": architecture,
        "classes": classes,
        "leukemic": leukemic,
        "crop": _crop(meta, path),
        "temperature": _number(_json_field(meta, path, "temperature"), path, "temperature", low=0, low_open=True),
        "hidden": _integer(_json_field(meta, path, "hidden"), path, "hidden", low=1),
        "dropout": _number(_json_field(meta, path, "dropout"), path, "dropout", low=0, high=1),
        "provenance": _json_object(meta, path, "provenance"),
    }


def segmenter_metadata(meta: dict, path) -> dict:
    """The settings of a leukocyte cellpose model's metadata, as :func:`~.segment.save_segmenter` writes them, checked.

    Returns
    -------
    dict
        ``diam_mean`` (positive float), ``nbase`` (list of int, ``[2, ...]``; cellpose's widths when absent, as in
        early files), ``provenance`` (dict).

    Raises
    ------
    CheckpointError
        A field missing, not JSON, of another type or out of range, named with the file.
    """
    architecture = meta.get("architecture")
    if architecture != SEGMENTER_ARCHITECTURE:
        raise _bad(path, "architecture", f"must be {SEGMENTER_ARCHITECTURE!r}, got {_shown(architecture)}")
    nbase = _json_field(meta, path, "nbase", list(CELLPOSE_DEFAULT_NBASE))
    if not isinstance(nbase, list) or len(nbase) < 2:
        raise _bad(path, "nbase", f"must be a list of U-Net channel widths, got {_shown(nbase)}")
    nbase = [_integer(n, path, "nbase", low=1) for n in nbase]
    if nbase[0] != 2:
        raise _bad(path, "nbase", f"must start with the 2 input channels, got {nbase}")
    return {
        "diam_mean": _number(_json_field(meta, path, "diam_mean"), path, "diam_mean", low=0, low_open=True),
        "nbase": nbase,
        "provenance": _json_object(meta, path, "provenance"),
    }


def check_weights(state: dict, path) -> None:
    """Refuse weights that are not floating point or not finite (batch-norm counters excepted).

    Raises
    ------
    CheckpointError
        Naming the file and the first tensor at fault.
    """
    for key, tensor in state.items():
        if key.endswith("num_batches_tracked"):  # a counter: integer in classifiers, half precision in segmenters
            continue
        if not tensor.is_floating_point():
            raise CheckpointError(f"{path}: weight {key!r} holds {tensor.dtype} values, not floating point ones")
        if not bool(tensor.float().isfinite().all()):
            raise CheckpointError(f"{path}: weight {key!r} holds NaN or infinite values")
