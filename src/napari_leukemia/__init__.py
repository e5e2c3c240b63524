"""napari-leukemia: find and classify leukaemic cells in Wright-Giemsa blood smears.

Research use only: not a diagnostic device.

The public API is imported lazily, so ``import napari_leukemia`` loads neither torch, cellpose nor Qt::

    from napari_leukemia import analyze_smear, read_image, save_result
    image = read_image("smear.jpg")
    result = analyze_smear(image)
    result.summary, result.cells
    save_result(result, "results/smear", image)  # the bundle the CLI and the Analyze widget write
"""

from importlib import import_module

from .core.device import package_version

__version__ = package_version()

_API = {
    "analyze_smear": "core.pipeline",
    "iter_analyze_smear": "core.pipeline",
    "SmearResult": "core.pipeline",
    "save_result": "core.results",
    "AnalysisConfig": "core.config",
    "SegmentConfig": "core.config",
    "CropConfig": "core.config",
    "TrainConfig": "core.config",
    "read_image": "core.io",
    "ImageError": "core.io",
    "open_slide": "core.slide",
    "is_slide": "core.slide",
    "Slide": "core.slide",
    "SlideError": "core.slide",
    "segment_leukocytes": "core.segment",
    "load_segmenter": "core.segment",
    "CheckpointError": "core.checkpoint",
    "crop_cells": "core.preprocess",
    "load_classifier": "core.model",
    "save_classifier": "core.model",
    "fit_classifier": "core.fit",
    "evaluate_dataset": "core.scoring",
    "stain_segment": "core.stain",
    "load_review": "core.review",
    "save_review": "core.review",
    "export_training_set": "core.training_set",
    "load_sample": "samples",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name):
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
