"""Safe reading of model files: safetensors only, tagged with the kind of model they hold."""

from __future__ import annotations

from pathlib import Path


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
