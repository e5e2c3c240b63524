"""``napari-leukemia export``: a classifier checkpoint as a model that runs outside napari (ONNX, bioimage.io)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..core.config import DISCLAIMER
from .common import EXIT_OK, UsageError

#: What ``export --format`` can write.
EXPORT_FORMATS = ("onnx", "bioimageio")


def add_commands(sub) -> None:
    """The ``export`` sub-command (thin over :mod:`.core.onnx_backend` and :mod:`.core.bioimageio_export`)."""
    x = sub.add_parser(
        "export",
        help="write a classifier checkpoint as an ONNX model or a bioimage.io model package",
        description="Write the classifier CHECKPOINT as an ONNX model (fp32, any batch size): input 'crops' "
                    "(N, 3, S, S) float32, the normalised crops; output 'logits' (N, C). Its metadata hold the "
                    "classes, the leukaemic classes, the temperature, the crop settings and the architecture as "
                    "JSON strings, so that it runs with ONNX Runtime without napari. --format bioimageio: a bioimage.io model "
                    "package (.zip, bioimageio.spec 0.5) of the same ONNX model ending in softmax(logits / "
                    "temperature), output 'probabilities' (N, C), with a test input made of the cells of the bundled "
                    "DeepAPL sample (needs napari-leukemia[bioimageio]). " + DISCLAIMER,
    )
    x.add_argument("checkpoint", metavar="CHECKPOINT", help="classifier checkpoint (.safetensors), or a shipped one "
                   "by name (leukemic, cell_type)")
    x.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="default onnx")
    x.add_argument("--out", required=True, type=Path, metavar="FILE",
                   help="the file to write (FILE.onnx; FILE.zip for bioimageio)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    x.set_defaults(func=cmd_export, subparser=x)


def cmd_export(args) -> int:
    """``napari-leukemia export``: see :func:`add_commands`."""
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the file to write, e.g. {out / 'classifier.onnx'}")
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    from ..core.checkpoint import CheckpointError
    from ..core.model import load_classifier
    from ..core.onnx_backend import export_onnx, load_onnx_classifier

    try:
        classifier = load_classifier(args.checkpoint, "cpu")
    except CheckpointError as err:
        raise UsageError(f"cannot load the classifier: {err}") from err
    if classifier.feature_svm is not None:  # said before the file is written, so it is seen
        print(f"note: {args.checkpoint} pools its network with a feature SVM on hand-made features; the exported "
              "model is the network alone, and its probabilities differ from napari-leukemia's", file=sys.stderr)
    if args.format == "bioimageio":
        from ..core.bioimageio_export import export_bioimageio

        export_bioimageio(classifier, out, overwrite=args.overwrite)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): bioimage.io model package of "
              f"{classifier.info.architecture}, input crops (N, 3, {classifier.info.crop.size}, "
              f"{classifier.info.crop.size}) float32, output probabilities over {list(classifier.info.classes)}")
        return EXIT_OK
    export_onnx(classifier, out, overwrite=args.overwrite)
    info = load_onnx_classifier(out).info  # read back: the file opens and its metadata pass the schema
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {info.architecture}, classes {list(info.classes)}, "
          f"input crops (N, 3, {info.crop.size}, {info.crop.size}) float32, output logits (N, {len(info.classes)})")
    return EXIT_OK
